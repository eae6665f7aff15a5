r"""Per-rating SGD: sparse mode with plain SGD (no momentum) and batches of one rating, fused.

The same algorithm as :mod:`.sparse` with ``bs = 1``, SGD and no momentum (``reference.sparse_sgd_step``
on a batch of one), written as one pass per rating with no gradient buffer and no slot maps. With
``err = pred - y``, ``dx = 2 err (hi - lo) s (1 - s)`` (``dx = 2 err`` without a range) and ``lr`` the
step's learning rate, both rows move at once from their old values (``shrink = 1 - lr wd``):

``P[u] <- P[u] shrink - lr dx Q[i]``,   ``Q[i] <- Q[i] shrink - lr dx P[u]``,
``b[u] <- b[u] shrink - lr dx``,        ``c[i] <- c[i] shrink - lr dx``.

For plain SGD decoupled and L2 weight decay are the same update. This is cornac's / LIBMF's per-rating
SGD on fastai's sigmoid model; it differs from the sparse kernel by float rounding only (the dot
product is summed in the tables' dtype in 16-lane chunks, the decay folded into one multiply).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._compile import HOT, twin
from ._llvm import PREFETCH_AHEAD, PREFETCH_MIN_BYTES, dot_rows, prefetch, prefetch_row
from .core import split_flat

__all__ = ["train_epoch_per_rating", "train_epoch_per_rating_parallel"]


def _train_epoch_per_rating_body(params, shape, data, layout, lrs, wd, y_range, out):
    r"""One epoch of per-rating SGD over ``layout`` (a ``records.BlockLayout``); step ``s`` is rating ``order[s]``.

    ``n_groups = 1`` (``block_start = [0, n]``) is the plain serial epoch over ``order``; an empty
    ``order`` means the ratings in the order they are stored (after ``blocks.sort_by_block``). With
    ``n_groups = g > 1`` the epoch runs ``g`` strata one after another, and in each the ``g`` blocks,
    which share no row, run on the Numba threads (``prange``; the serial build runs them in turn): the
    result is deterministic for any thread timing and equal to the serial epoch over the same order.

    ``lrs`` holds one learning rate per step, or one for every step; ``out.losses`` one squared error per
    step, or none (empty: nothing is recorded; at 25M ratings the per-step arrays would be 200 MB each);
    ``out.progress[0]`` counts the ratings of the finished strata. Returns the number of steps done:
    all, or (the position of the first non-finite loss) + 1 (training stops there, before its update;
    with ``g > 1`` other blocks of that stratum may finish theirs).
    """
    # Every record is unpacked before the prange loop: numba 0.68 loses writes made through a
    # record's fields inside a prange body.
    u_weight, i_weight, u_bias, i_bias = split_flat(params, shape)
    users, items, ratings = data
    order, block_start, g = layout
    losses, progress = out
    lo_, hi_, has_range = y_range
    T = params.dtype.type
    k = shape.n_factors
    in_order = order.shape[0] == 0
    n_steps = users.shape[0] if in_order else order.shape[0]
    i_start = shape.n_users * k
    per_step_lr = lrs.shape[0] > 1
    record = losses.shape[0] > 0
    # In a shuffled order every rating also reads users/items/ratings at a random row: once those
    # arrays or the tables outgrow the caches, prefetch (codes 8 ratings ahead, rows 4 ahead).
    data_bytes = users.size * users.itemsize + items.size * items.itemsize + ratings.size * ratings.itemsize
    fetch = params.size * params.itemsize + data_bytes > PREFETCH_MIN_BYTES
    first_bad = np.full(g, n_steps, dtype=np.int64)
    lo, span, two = T(lo_), T(hi_ - lo_), T(2.0)
    for t in range(g):
        for c in prange(g):
            first = block_start[t * g + c]
            last = block_start[t * g + c + 1]
            for s in range(first, last):
                if fetch and s + 2 * PREFETCH_AHEAD < last:
                    if not in_order:
                        ahead = order[s + 2 * PREFETCH_AHEAD]
                        prefetch(users, ahead)
                        prefetch(items, ahead)
                        prefetch(ratings, ahead)
                    ahead = s + PREFETCH_AHEAD if in_order else order[s + PREFETCH_AHEAD]
                    prefetch_row(params, users[ahead] * k, k)
                    prefetch_row(params, i_start + items[ahead] * k, k)
                row = s if in_order else order[s]
                u = users[row]
                i = items[row]
                x = dot_rows(params, u * k, i_start + i * k, k) + u_bias[u] + i_bias[i]
                if has_range:
                    # Branch-free: for x below about -88, exp(-x) is inf in float32 and s is exactly 0.
                    sg = T(1.0) / (T(1.0) + math.exp(-x))
                    err = lo + span * sg - ratings[row]
                    dx = two * err * span * sg * (T(1.0) - sg)
                else:
                    err = x - ratings[row]
                    dx = two * err
                loss = err * err
                if record:
                    losses[s] = loss
                if not math.isfinite(loss):
                    first_bad[c] = s  # diverged: stop before this rating's update
                    break
                lr = lrs[s] if per_step_lr else lrs[0]
                shrink = T(1.0 - lr * wd)
                step = T(lr) * dx
                p = u_weight[u]
                q = i_weight[i]
                for j in range(k):
                    pu = p[j]
                    qi = q[j]
                    p[j] = pu * shrink - step * qi
                    q[j] = qi * shrink - step * pu
                u_bias[u] = u_bias[u] * shrink - step
                i_bias[i] = i_bias[i] * shrink - step
        if first_bad.min() < n_steps:
            break
        progress[0] = block_start[(t + 1) * g]
    bad = first_bad.min()
    return n_steps if bad == n_steps else bad + 1


train_epoch_per_rating = njit(**HOT)(_train_epoch_per_rating_body)
train_epoch_per_rating_parallel = njit(parallel=True, **HOT)(twin(_train_epoch_per_rating_body))
