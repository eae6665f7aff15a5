"""Codes and pairs of codes (user, item): integer ids to codes, the CSR matrix of each user's items,
membership in it, repeated pairs, the validation split's gather.

Compiled passes over the encoded ratings, ``O(n)`` each: a counting sort by user where sorting every
``user * n_items + item`` key would cost ``O(n log n)`` (on 25M ratings, seconds).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = [
    "dense_codes",
    "chunk_range",
    "chunk_places",
    "group_rows",
    "seen_rows",
    "pairs_in_rows",
    "pairs_in_pairs",
    "take_pairs",
    "count_repeated_pairs",
    "split_column",
]


@njit(cache=True, parallel=True)
def dense_codes(values, low, span, codes):
    """Integer ids ``values`` (all in ``[low, low + span)``) to ``codes``: 1 + the value's rank among the
    distinct values, as ``pd.factorize(values, sort=True)`` + 1. Returns the distinct values, sorted.

    A table of ``span`` entries marks the values present; its running count is the rank. ``O(n + span)``,
    where factorizing hashes every value and sorting costs ``O(n log n)``. The marking and the coding
    passes run on the threads (a value is marked by whichever thread meets it first, with the same 1).
    """
    rank = np.zeros(span, dtype=np.int32)  # ranks <= the rows (codes are int32 too)
    for r in prange(values.shape[0]):
        if rank[values[r] - low] == 0:  # written once: the table's lines stay shared between the threads
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
    for r in prange(values.shape[0]):
        codes[r] = rank[values[r] - low]
    return distinct


def sort_chunks(n_rows: int, n_keys: int) -> int:
    """How many chunks :func:`group_rows` splits ``n_rows`` rows into: one a Numba thread, while the
    chunks' counts (``chunks x n_keys`` of 8 bytes) stay within a byte a row."""
    import numba

    return max(1, min(numba.get_num_threads(), n_rows // (8 * max(n_keys, 1))))


@njit(cache=True, inline="always")
def chunk_range(c, n_chunks, n):
    """Rows ``[first, last)`` of chunk ``c`` of ``n_chunks`` (equal shares, in order)."""
    return c * n // n_chunks, (c + 1) * n // n_chunks


@njit(cache=True)
def chunk_places(counts, start):
    """Turn ``counts[c, k]`` (chunk ``c``'s rows of key ``k``) into where chunk ``c`` puts its first row of
    key ``k``: the rows of smaller keys, then those of key ``k`` in earlier chunks; ``start[k]``: where
    key ``k``'s rows begin (``start[n_keys]``: all rows)."""
    n_chunks, n_keys = counts.shape
    total = 0
    for k in range(n_keys):
        start[k] = total
        for c in range(n_chunks):
            x = counts[c, k]
            counts[c, k] = total
            total += x
    start[n_keys] = total


@njit(cache=True, parallel=True)
def group_rows(keys, n_keys, values, n_chunks, start, grouped):
    """A stable counting sort on the threads: ``grouped[start[k]:start[k + 1]]`` holds the ``values`` of
    the rows with ``keys[r] == k``, in row order. ``O(n + n_chunks n_keys)``.

    The rows go in ``n_chunks`` equal chunks, one a thread: each chunk counts its keys, the counts
    become each chunk's places (:func:`chunk_places`), and each chunk writes its rows there.
    """
    n = keys.shape[0]
    counts = np.zeros((n_chunks, n_keys), dtype=np.int64)
    for c in prange(n_chunks):
        first, last = chunk_range(c, n_chunks, n)
        for r in range(first, last):
            counts[c, keys[r]] += 1
    chunk_places(counts, start)
    for c in prange(n_chunks):
        first, last = chunk_range(c, n_chunks, n)
        for r in range(first, last):
            k = keys[r]
            grouped[counts[c, k]] = values[r]
            counts[c, k] += 1


@njit(cache=True, inline="always")
def _key_range(start, c, n_chunks):
    """Keys ``[first, last)`` of chunk ``c`` of ``n_chunks``: consecutive keys with about equal rows
    (``start``: each key's first row in the grouped order, as :func:`group_rows` makes it)."""
    n_keys = start.shape[0] - 1
    n = start[n_keys]
    first = 0 if c == 0 else np.searchsorted(start, c * n // n_chunks)
    last = n_keys if c == n_chunks - 1 else np.searchsorted(start, (c + 1) * n // n_chunks)
    return min(first, n_keys), min(last, n_keys)


@njit(cache=True, parallel=True)
def _count_repeats(start, grouped, n_items, n_chunks):
    """Rows that repeat an earlier item within their user's group (``grouped``: items grouped by user);
    each thread marks its users' items in a table of its own holding the last user that rated each."""
    repeated = np.zeros(n_chunks, dtype=np.int64)
    for c in prange(n_chunks):
        first, last = _key_range(start, c, n_chunks)
        last_user = np.full(n_items, -1, dtype=np.int64)
        count = 0
        for u in range(first, last):
            for p in range(start[u], start[u + 1]):
                i = grouped[p]
                if last_user[i] == u:
                    count += 1
                else:
                    last_user[i] = u
        repeated[c] = count
    return repeated.sum()


def count_repeated_pairs(users, items, n_users: int, n_items: int) -> int:
    """How many rows repeat an earlier row's ``(users[r], items[r])`` pair (codes below ``n_users``,
    ``n_items``): the rows less the distinct pairs.

    The rows are grouped by user (:func:`group_rows`, 4 bytes a row), then each user's items are marked
    in a table of ``n_items`` entries holding the last user that rated each; both on the threads.
    """
    n = len(users)
    n_chunks = sort_chunks(n, n_users)
    start = np.empty(n_users + 1, dtype=np.int64)
    grouped = np.empty(n, dtype=np.int32)
    group_rows(users, n_users, items, n_chunks, start, grouped)
    return int(_count_repeats(start, grouped, n_items, n_chunks))


@njit(cache=True, parallel=True)
def _group_items_by_user(item_start, by_item, n_users, n_chunks, user_start, indices):
    """The second counting sort of :func:`seen_rows`: ``by_item`` (the rows' users, grouped by item,
    ``item_start`` each item's first) regrouped by user, each user's items written in increasing order
    into ``indices`` (``user_start``: each user's first). Chunks of consecutive items, one a thread, so
    that each user's items come out in item order."""
    counts = np.zeros((n_chunks, n_users), dtype=np.int64)
    for c in prange(n_chunks):
        first, last = _key_range(item_start, c, n_chunks)
        for p in range(item_start[first], item_start[last]):
            counts[c, by_item[p]] += 1
    chunk_places(counts, user_start)
    for c in prange(n_chunks):
        first, last = _key_range(item_start, c, n_chunks)
        for i in range(first, last):
            for p in range(item_start[i], item_start[i + 1]):
                u = by_item[p]
                indices[counts[c, u]] = i
                counts[c, u] += 1


@njit(cache=True)
def _drop_repeats(user_start, indices, indptr):
    """Each user's row of ``indices`` (``user_start``) without its repeats (equal neighbours: the row is
    sorted), the rows moved up to close the gaps; ``indptr``: the new rows. Returns the entries kept."""
    out = 0
    indptr[0] = 0
    for u in range(user_start.shape[0] - 1):
        for p in range(user_start[u], user_start[u + 1]):
            if p == user_start[u] or indices[p] != indices[p - 1]:
                indices[out] = indices[p]
                out += 1
        indptr[u + 1] = out
    return out


def seen_rows(users, items, n_users: int, n_items: int, indptr, indices, item_counts=None) -> int:
    """The CSR matrix of (user, item) pairs: user ``u``'s items sorted and unique in
    ``indices[indptr[u]:indptr[u + 1]]``; returns the number of entries used (``indices`` has room
    for one per pair, ``indptr`` for ``n_users + 1`` offsets). ``item_counts`` (``n_items`` int64, if
    given): each item's rows, repeats included (the first counting sort's counts).

    Two counting sorts on the threads, ``O(n + n_users + n_items)``: the rows' users grouped by item
    (:func:`group_rows`, 4 bytes a row), then regrouped by user in item order, so that every row comes
    out sorted and a repeat sits next to its twin; a last pass closes the gaps the repeats leave.
    """
    n = len(users)
    item_start = np.empty(n_items + 1, dtype=np.int64)
    by_item = np.empty(n, dtype=np.int32)  # the rows' users, grouped by item
    group_rows(items, n_items, users, sort_chunks(n, n_items), item_start, by_item)
    if item_counts is not None:
        np.subtract(item_start[1:], item_start[:-1], out=item_counts)
    user_start = np.empty(n_users + 1, dtype=np.int64)
    _group_items_by_user(item_start, by_item, n_users, sort_chunks(n, n_users), user_start, indices)
    del by_item
    return int(_drop_repeats(user_start, indices, indptr))


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


#: Fibonacci hashing's multiplier (2^64 / the golden ratio, odd): a key's slot is the top bits of the product.
_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
#: A second odd multiplier for the join's filter (independent of the table's slots).
_FILTER_MULTIPLIER = np.uint64(0xC2B2AE3D27D4EB4F)


@njit(cache=True, inline="always")
def _slot_of(key, table, shift):
    """The slot of ``key`` in the open-addressing ``table`` (0: empty), or of the empty slot where it goes."""
    mask = np.uint64(table.shape[0] - 1)
    slot = (np.uint64(key) * _HASH_MULTIPLIER) >> shift
    while table[slot] != 0 and table[slot] != key:
        slot = (slot + np.uint64(1)) & mask
    return slot


@njit(cache=True, inline="always")
def _filter_word_and_mask(key, word_shift):
    """The join filter's word for ``key`` (the top bits of a second multiplicative hash) and the two
    bits it sets there (two 6-bit fields from the hash's middle, independent of the word's bits)."""
    h = np.uint64(key) * _FILTER_MULTIPLIER
    one = np.uint64(1)
    mask = (one << ((h >> np.uint64(20)) & np.uint64(63))) | (one << ((h >> np.uint64(26)) & np.uint64(63)))
    return h >> word_shift, mask


@njit(cache=True, parallel=True)
def pairs_in_pairs(users, items, pair_users, pair_items, n_items, out):
    """``out[r]``: whether ``(users[r], items[r])`` is one of the pairs ``(pair_users[t], pair_items[t])``,
    by a hash join: the queries' keys ``user * n_items + item + 1`` go into a table of at least twice
    as many slots, each pair looks its key up (on the threads), and a query is found when a pair met its
    slot. ``O(queries + pairs)``, without grouping the pairs by user first (:func:`seen_rows`).
    """
    n = users.shape[0]
    bits = 1
    while (1 << bits) < 2 * n:
        bits += 1
    shift = np.uint64(64 - bits)
    table = np.zeros(1 << bits, dtype=np.int64)
    met = np.zeros(1 << bits, dtype=np.bool_)
    slots = np.empty(n, dtype=np.uint64)
    # A filter of 16 bits a query (in cache where the table is not): most pairs stop there. Blocked:
    # each key sets two bits of one 64-bit word, so a test is one load and a pair that is no query
    # passes with a chance of about 1.4% (6% with one bit).
    word_bits = max(1, bits - 3)
    word_shift = np.uint64(64 - word_bits)
    words = np.zeros(1 << word_bits, dtype=np.uint64)
    for r in range(n):
        key = np.int64(users[r]) * n_items + items[r] + 1
        slot = _slot_of(key, table, shift)
        table[slot] = key
        slots[r] = slot
        word, mask = _filter_word_and_mask(key, word_shift)
        words[word] |= mask
    for t in prange(pair_users.shape[0]):
        key = np.int64(pair_users[t]) * n_items + pair_items[t] + 1
        word, mask = _filter_word_and_mask(key, word_shift)
        if words[word] & mask == mask:
            slot = _slot_of(key, table, shift)
            if table[slot] == key:
                met[slot] = True  # every thread that writes here writes True
    for r in prange(n):
        out[r] = met[slots[r]]


def take_pairs(users, items, keep, by_user: bool = False):
    """The pairs ``(users[r], items[r])`` of the kept rows, in row order: the rows with ``keep[r]``, or,
    with ``by_user``, the rows with ``keep[users[r]]`` (``keep``: a mask of users).

    As ``users[mask], items[mask]``, in two passes on the threads: each chunk of rows counts its kept
    rows, then writes them from its place. NumPy's boolean indexing runs on one thread, a column at a
    time (on 5M rows, half of them kept: 59-70 ms for the two columns, against 19-27 ms here). With
    ``by_user`` every user code must be below ``len(keep)`` (not checked: the callers' codes are).
    """
    import numba

    if len(items) != len(users) or (not by_user and len(keep) != len(users)):
        raise ValueError(f"take_pairs: {len(users)} users, {len(items)} items and {len(keep)} row marks")
    n_chunks = max(1, min(4 * numba.get_num_threads(), len(users) // 65536))
    return _take_pairs(users, items, keep, bool(by_user), n_chunks)


@njit(cache=True, parallel=True)
def _take_pairs(users, items, keep, by_user, n_chunks):
    n = users.shape[0]
    place = np.zeros(n_chunks + 1, dtype=np.int64)
    for c in prange(n_chunks):
        first, last = chunk_range(c, n_chunks, n)
        m = 0
        if by_user:
            for r in range(first, last):
                m += keep[users[r]]
        else:
            for r in range(first, last):
                m += keep[r]
        place[c + 1] = m
    for c in range(n_chunks):
        place[c + 1] += place[c]
    out_users = np.empty(place[n_chunks], dtype=users.dtype)
    out_items = np.empty(place[n_chunks], dtype=items.dtype)
    for c in prange(n_chunks):
        first, last = chunk_range(c, n_chunks, n)
        p = place[c]
        for r in range(first, last):
            if keep[users[r]] if by_user else keep[r]:
                out_users[p] = users[r]
                out_items[p] = items[r]
                p += 1
    return out_users, out_items


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
