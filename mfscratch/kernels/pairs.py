"""Codes and pairs of codes (user, item): integer ids to codes, the CSR matrix of each user's items,
membership in it, repeated pairs, the validation split's gather.

Compiled passes over the encoded ratings, ``O(n)`` each: a counting sort by user where sorting every
``user * n_items + item`` key would cost ``O(n log n)`` (on 25M ratings, seconds).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["dense_codes", "seen_rows", "pairs_in_rows", "count_repeated_pairs", "split_column"]


@njit(cache=True)
def dense_codes(values, low, span, codes):
    """Integer ids ``values`` (all in ``[low, low + span)``) to ``codes``: 1 + the value's rank among the
    distinct values, as ``pd.factorize(values, sort=True)`` + 1. Returns the distinct values, sorted.

    A table of ``span`` entries marks the values present; its running count is the rank. ``O(n + span)``,
    where factorizing hashes every value and sorting costs ``O(n log n)``.
    """
    rank = np.zeros(span, dtype=np.int32)  # ranks <= the rows (codes are int32 too)
    for r in range(values.shape[0]):
        rank[values[r] - low] = 1
    n_distinct = 0
    for v in range(span):
        if rank[v]:
            n_distinct += 1
            rank[v] = n_distinct
    distinct = np.empty(n_distinct, dtype=values.dtype)
    for v in range(span):
        if rank[v]:
            distinct[rank[v] - 1] = v + low
    for r in range(values.shape[0]):
        codes[r] = rank[values[r] - low]
    return distinct


@njit(cache=True)
def count_repeated_pairs(users, items, n_users, n_items):
    """How many rows repeat an earlier row's ``(users[r], items[r])`` pair (codes below ``n_users``,
    ``n_items``): the rows less the distinct pairs.

    The rows are grouped by user (a counting sort of their items, 4 bytes a row), then each user's
    items are marked in one table of ``n_items`` entries holding the last user that rated each.
    """
    n = users.shape[0]
    start = np.zeros(n_users + 1, dtype=np.int64)
    for r in range(n):
        start[users[r] + 1] += 1
    for u in range(n_users):
        start[u + 1] += start[u]
    fill = start[:-1].copy()
    grouped = np.empty(n, dtype=np.int32)
    for r in range(n):
        u = users[r]
        grouped[fill[u]] = items[r]
        fill[u] += 1
    last_user = np.full(n_items, -1, dtype=np.int64)
    repeated = 0
    for u in range(n_users):
        for p in range(start[u], start[u + 1]):
            i = grouped[p]
            if last_user[i] == u:
                repeated += 1
            else:
                last_user[i] = u
    return repeated


@njit(cache=True)
def seen_rows(users, items, n_users, n_items, indptr, indices):
    """The CSR matrix of (user, item) pairs: user ``u``'s items sorted and unique in
    ``indices[indptr[u]:indptr[u + 1]]``; returns the number of entries used (``indices`` has room
    for one per pair, ``indptr`` for ``n_users + 1`` offsets).

    Two counting sorts, ``O(n + n_users + n_items)``: the rows' users grouped by item (4 bytes a row),
    then each item, in increasing order, appended to its users' rows, so that every row comes out
    sorted and a repeat is the row's last entry; a last pass closes the gaps the repeats leave.
    """
    n = users.shape[0]
    item_end = np.zeros(n_items + 1, dtype=np.int64)
    counts = np.zeros(n_users + 1, dtype=np.int64)
    for r in range(n):
        item_end[items[r] + 1] += 1
        counts[users[r] + 1] += 1
    for i in range(n_items):
        item_end[i + 1] += item_end[i]
    for u in range(n_users):
        counts[u + 1] += counts[u]
    grouped = np.empty(n, dtype=np.int32)  # the rows' users, grouped by item
    for r in range(n):
        i = items[r]
        grouped[item_end[i]] = users[r]
        item_end[i] += 1  # ends as the end of item i's group
    fill = counts[:-1].copy()
    start = 0
    for i in range(n_items):
        for p in range(start, item_end[i]):
            u = grouped[p]
            if fill[u] == counts[u] or indices[fill[u] - 1] != i:
                indices[fill[u]] = i
                fill[u] += 1
        start = item_end[i]
    out = 0
    indptr[0] = 0
    for u in range(n_users):
        for p in range(counts[u], fill[u]):
            indices[out] = indices[p]
            out += 1
        indptr[u + 1] = out
    return out


@njit(cache=True, parallel=True)
def pairs_in_rows(indptr, indices, users, items, out):
    """``out[r]``: whether ``items[r]`` is in user ``users[r]``'s sorted CSR row (binary search)."""
    for r in prange(users.shape[0]):
        lo, hi = indptr[users[r]], indptr[users[r] + 1]
        target = items[r]
        while lo < hi:
            mid = (lo + hi) // 2
            if indices[mid] < target:
                lo = mid + 1
            else:
                hi = mid
        out[r] = lo < indptr[users[r] + 1] and indices[lo] == target


@njit(cache=True, parallel=True)
def split_column(values, perm, n_valid, out):
    """The split's gather of one column in one parallel pass, training rows first:
    ``out[:n - n_valid] = values[perm[n_valid:]]`` and ``out[n - n_valid:] = values[perm[:n_valid]]``, without the
    index copies and with the random reads spread over the threads. The training and validation columns
    are then the two views of ``out``: each row is held once.
    """
    n_train = perm.shape[0] - n_valid
    for j in prange(n_train):
        out[j] = values[perm[n_valid + j]]
    for j in prange(n_valid):
        out[n_train + j] = values[perm[j]]
