"""Top-k items per user over *all* items: the compiled kernel behind recommendations and ranking metrics.

For user ``u`` every item ``i`` gets the score ``x[i] = u_weight[u] . i_weight[i] + u_bias[u] + i_bias[i]``.
The prediction is ``lo + (hi - lo) * sigmoid(x)``, a monotone function of ``x``, so ranking by ``x``
ranks by predicted rating; the caller turns the chosen scores into ratings. Items the user rated in
training (``seen_indices[seen_indptr[u]:seen_indptr[u + 1]]``, a sorted CSR row) and codes below
``first_item`` (``#na#``) are never chosen.

Scoring is a small matrix product done in blocks: a tile of :data:`USER_TILE` users against a block
of :data:`ITEM_BLOCK` items, the block's factors stored factor by factor (``cols[j]``: factor ``j`` of
the block's items), so that the innermost loop runs over items and vectorises without a horizontal
sum; four users and four factors a pass keep sixteen products per four loads. The blocks are scored
in float32, to screen: an item whose float32 score, plus a bound on its rounding error, could beat
the user's k-th best so far is scored again in float64 and offered to a min-heap of the ``k`` best
(:func:`topk_items` gives the bound), so the result is the float64 scores' top-k. A run of 16
screening scores is read twice only when one of them passes. Ties go to the lower item code, so
results do not depend on threads. Users with fewer than ``k`` candidates get ``-1`` items and
``-inf`` scores in the unused slots; an item whose score is NaN (a diverged model) is never chosen.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["topk_items"]


@njit(cache=True, inline="always")
def _worse(score_a, item_a, score_b, item_b):
    """Whether candidate a ranks below b: a lower score, or an equal score and a higher item code."""
    return score_a < score_b or (score_a == score_b and item_a > item_b)


@njit(cache=True, inline="always")
def _swap(heap_scores, heap_items, a, b):
    """Exchange the heap's entries ``a`` and ``b``."""
    heap_scores[a], heap_scores[b] = heap_scores[b], heap_scores[a]
    heap_items[a], heap_items[b] = heap_items[b], heap_items[a]


@njit(cache=True)
def _sift_down(heap_scores, heap_items, start, size):
    """Restore the min-heap (the worst candidate at the root) below ``start``."""
    pos = start
    while True:
        child = 2 * pos + 1
        if child >= size:
            return
        if child + 1 < size and _worse(
            heap_scores[child + 1], heap_items[child + 1], heap_scores[child], heap_items[child]
        ):
            child += 1
        if _worse(heap_scores[child], heap_items[child], heap_scores[pos], heap_items[pos]):
            _swap(heap_scores, heap_items, pos, child)
            pos = child
        else:
            return


@njit(cache=True, inline="always")
def _push(heap_scores, heap_items, size, k, score, item):
    """Offer candidate ``(score, item)`` to the min-heap of ``size`` entries (at most ``k``); returns the new size."""
    if size < k:
        # Grow the heap: place at the end and sift up.
        pos = size
        heap_scores[pos] = score
        heap_items[pos] = item
        size += 1
        while pos > 0:
            parent = (pos - 1) // 2
            if _worse(heap_scores[pos], heap_items[pos], heap_scores[parent], heap_items[parent]):
                _swap(heap_scores, heap_items, pos, parent)
                pos = parent
            else:
                break
    elif _worse(heap_scores[0], heap_items[0], score, item):
        heap_scores[0] = score
        heap_items[0] = item
        _sift_down(heap_scores, heap_items, 0, size)
    return size


@njit(cache=True)
def _pop_sorted(heap_scores, heap_items, size, out_items, out_scores):
    """Empty the heap into the outputs, best first; the slots past ``size`` get ``-1`` and ``-inf``."""
    for j in range(out_items.shape[0]):
        out_items[j] = -1
        out_scores[j] = -np.inf
    n = size
    while n > 0:
        # The worst goes to the last free slot.
        out_items[n - 1] = heap_items[0]
        out_scores[n - 1] = heap_scores[0]
        n -= 1
        heap_scores[0] = heap_scores[n]
        heap_items[0] = heap_items[n]
        _sift_down(heap_scores, heap_items, 0, n)


@njit(cache=True, inline="always", fastmath={"reassoc", "contract"})
def _add_four_by_four(x0, x1, x2, x3, c0, c1, c2, c3, user_rows, a, j):
    """``x_b[t] += sum_{f<4} user_rows[a + b, j + f] * c_f[t]`` for the four users ``a..a+3`` and the
    four factors ``j..j+3`` (``c_f``: factor ``j + f`` of a block's items)."""
    w00, w01, w02, w03 = user_rows[a, j], user_rows[a, j + 1], user_rows[a, j + 2], user_rows[a, j + 3]
    w10, w11, w12, w13 = user_rows[a + 1, j], user_rows[a + 1, j + 1], user_rows[a + 1, j + 2], user_rows[a + 1, j + 3]
    w20, w21, w22, w23 = user_rows[a + 2, j], user_rows[a + 2, j + 1], user_rows[a + 2, j + 2], user_rows[a + 2, j + 3]
    w30, w31, w32, w33 = user_rows[a + 3, j], user_rows[a + 3, j + 1], user_rows[a + 3, j + 2], user_rows[a + 3, j + 3]
    for t in range(x0.shape[0]):
        f0 = c0[t]
        f1 = c1[t]
        f2 = c2[t]
        f3 = c3[t]
        x0[t] += (w00 * f0 + w01 * f1) + (w02 * f2 + w03 * f3)
        x1[t] += (w10 * f0 + w11 * f1) + (w12 * f2 + w13 * f3)
        x2[t] += (w20 * f0 + w21 * f1) + (w22 * f2 + w23 * f3)
        x3[t] += (w30 * f0 + w31 * f1) + (w32 * f2 + w33 * f3)


#: Users scored together (a multiple of 4): each block of item factors is read once for the tile.
USER_TILE = 32
#: Items scored together: the block's factors (64 x 512 float32, 128 KB) and the tile's screening
#: scores (32 x 512 float32, 64 KB) stay in L2.
ITEM_BLOCK = 512
#: Scores tested together against the heap's threshold before any is looked at alone.
_RUN = 16
#: The float32 unit roundoff: the screening scores' rounding unit.
_U32 = 2.0**-24


@njit(cache=True, inline="always")
def _exact_score(u_weight, i_weight, u_bias, i_bias, u, i):
    """``x = (u_bias[u] + i_bias[i]) + u_weight[u] . i_weight[i]`` in float64 (each product exact)."""
    acc = 0.0
    for j in range(u_weight.shape[1]):
        acc += np.float64(u_weight[u, j]) * np.float64(i_weight[i, j])
    return (np.float64(u_bias[u]) + np.float64(i_bias[i])) + acc


@njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def topk_items(
    u_weight, i_weight, u_bias, i_bias, users, seen_indptr, seen_indices, first_item, k, out_items, out_scores
):
    """For each ``users[r]``: the ``k`` unseen items with the highest scores ``x`` (see the module docstring).

    ``out_items`` (int64) and ``out_scores`` (float64) are ``(len(users), k)``; row ``r`` is sorted
    best first. Parallel over tiles of :data:`USER_TILE` users.

    The blocks are scored in float32 (twice the lanes of float64) to *screen* the items; only an item
    whose screening score ``y`` could beat the heap's worst is scored again in float64
    (:func:`_exact_score`, products exact) and offered. The screen cannot drop an item the float64
    scores would keep: ``|y - x| <= eps``, with ``eps = g (|u_bias| + |i_bias| + |P[u]| |Q[i]|)``
    (the rounding error bound of a sum of ``n + 2`` terms, ``g = gamma_{n+6}`` of float32 plus that of
    float64, ``|.|`` Euclidean norms: ``sum |P[u, j] Q[i, j]| <= |P[u]| |Q[i]|``), taken at the block's
    largest item norm and bias; an item is looked at when ``y >= worst - eps``. The result is the
    top-k of the float64 scores, as scoring every item in float64 gives it; ``fastmath``
    reassociation may change a float64 score's last bits, never the order of distinct scores.
    """
    n_items = i_weight.shape[0]
    n_factors = i_weight.shape[1]
    n_users = users.shape[0]
    n_factors4 = (n_factors + 3) // 4 * 4  # zero factors pad to a multiple of 4
    n_blocks = (n_items + ITEM_BLOCK - 1) // ITEM_BLOCK
    n_terms = n_factors4 + 6
    if n_terms * _U32 < 0.5:
        g = 1.01 * (n_terms * _U32 / (1.0 - n_terms * _U32) + n_terms * 2.0**-53 / (1.0 - n_terms * 2.0**-53))
    else:
        g = np.inf  # every item is looked at
    # cols[b, j, t]: factor j of item b * ITEM_BLOCK + t, float32 (the last block's slots past the
    # last item are never read; the padding factors are zeros). Per block: the largest item norm
    # and the largest |i_bias|.
    cols = np.empty((n_blocks, n_factors4, ITEM_BLOCK), dtype=np.float32)
    block_norm = np.zeros(n_blocks, dtype=np.float64)
    block_bias = np.zeros(n_blocks, dtype=np.float64)
    for b in prange(n_blocks):
        i0 = b * ITEM_BLOCK
        block = i_weight[i0 : min(n_items, i0 + ITEM_BLOCK)]
        for j in range(n_factors):
            col = cols[b, j]
            for t in range(block.shape[0]):
                col[t] = block[t, j]
        for j in range(n_factors, n_factors4):
            cols[b, j, :] = 0.0
        for t in range(block.shape[0]):
            sq = 0.0
            for j in range(n_factors):
                sq += np.float64(block[t, j]) * np.float64(block[t, j])
            block_norm[b] = max(block_norm[b], np.sqrt(sq))
            block_bias[b] = max(block_bias[b], abs(np.float64(i_bias[i0 + t])))
    item_bias = np.empty(n_items, dtype=np.float32)
    for i in range(n_items):
        item_bias[i] = i_bias[i]
    for tile in prange((n_users + USER_TILE - 1) // USER_TILE):
        r0 = tile * USER_TILE
        m = min(n_users, r0 + USER_TILE) - r0
        m4 = (m + 3) // 4 * 4  # the tile's users in whole groups of four (a last tile may be short)
        user_rows = np.zeros((USER_TILE, n_factors4), dtype=np.float32)  # the rows past m stay zero
        user_bias = np.zeros(USER_TILE, dtype=np.float32)
        user_norm = np.zeros(USER_TILE, dtype=np.float64)
        next_seen = np.zeros(USER_TILE, dtype=np.int64)  # each user's first seen item not yet masked
        for a in range(m):
            u = users[r0 + a]
            user_bias[a] = u_bias[u]
            next_seen[a] = seen_indptr[u]
            sq = 0.0
            for j in range(n_factors):
                user_rows[a, j] = u_weight[u, j]
                sq += np.float64(u_weight[u, j]) * np.float64(u_weight[u, j])
            user_norm[a] = np.sqrt(sq)
        y = np.empty((USER_TILE, ITEM_BLOCK), dtype=np.float32)
        heap_scores = np.empty((USER_TILE, k), dtype=np.float64)
        heap_items = np.empty((USER_TILE, k), dtype=np.int64)
        sizes = np.zeros(USER_TILE, dtype=np.int64)
        for b in range(n_blocks):
            i0 = b * ITEM_BLOCK
            nb = min(n_items, i0 + ITEM_BLOCK) - i0
            # y = u_bias + i_bias + u . i over the block in float32, four users by four factors a pass.
            for a in range(m4):
                row = y[a, :nb]
                for t in range(nb):
                    row[t] = user_bias[a] + item_bias[i0 + t]
            c = cols[b]
            for j in range(0, n_factors4, 4):
                for a in range(0, m4, 4):
                    _add_four_by_four(
                        y[a, :nb], y[a + 1, :nb], y[a + 2, :nb], y[a + 3, :nb], c[j], c[j + 1], c[j + 2], c[j + 3],
                        user_rows, a, j,
                    )  # fmt: skip
            for a in range(m):
                u = users[r0 + a]
                row = y[a, :nb]
                # The excluded items of this block: NaN, never at or above a threshold.
                for t in range(min(max(first_item - i0, 0), nb)):
                    row[t] = np.nan
                p = next_seen[a]
                while p < seen_indptr[u + 1] and seen_indices[p] < i0 + nb:
                    row[seen_indices[p] - i0] = np.nan
                    p += 1
                next_seen[a] = p
                eps = g * (abs(np.float64(user_bias[a])) + block_bias[b] + user_norm[a] * block_norm[b])
                size = sizes[a]
                hs = heap_scores[a]
                hi = heap_items[a]
                # Items come in increasing code, so a later item must score strictly above the worst.
                worst = hs[0] if size == k else -np.inf
                threshold = worst - eps
                for t0 in range(0, nb, _RUN):
                    t1 = min(nb, t0 + _RUN)
                    near = False
                    for t in range(t0, t1):
                        near |= np.float64(row[t]) >= threshold
                    if near:
                        for t in range(t0, t1):
                            if np.float64(row[t]) >= threshold:
                                x = _exact_score(u_weight, i_weight, u_bias, i_bias, u, i0 + t)
                                if size < k or x > worst:
                                    size = _push(hs, hi, size, k, x, i0 + t)
                                    worst = hs[0] if size == k else -np.inf
                                    threshold = worst - eps
                sizes[a] = size
        for a in range(m):
            _pop_sorted(heap_scores[a], heap_items[a], sizes[a], out_items[r0 + a], out_scores[r0 + a])
