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
from numba import njit, prange, types
from numba.extending import overload

from ... import schedule
from ..records import LossSummary, StepLrs
from ._compile import HOT, twin
from ._llvm import (
    CPU_MASK_WORDS,
    PREFETCH_AHEAD,
    PREFETCH_MIN_BYTES,
    atomic_add,
    atomic_cas,
    atomic_load,
    atomic_store,
    dot_rows,
    get_thread_cpus,
    prefetch,
    prefetch_row,
    set_thread_cpus,
    sleep_thread,
    spin_pause,
    update_rows,
    yield_thread,
)
from .blocks import shuffle_block
from .core import split_flat

__all__ = [
    "train_epoch_per_rating",
    "train_epoch_per_rating_parallel",
    "train_epoch_per_rating_dynamic",
    "train_epoch_per_rating_shuffled",
]

#: Block states of the dynamic scheduler.
_FREE, _CLAIMED, _DONE = 0, 1, 2
#: A waiting thread yields its core after this many empty scans (with a ``pause`` between scans).
_SPINS_BEFORE_YIELD = 16
#: After this many empty scans a waiting thread sleeps ``_SLEEP_US`` microseconds a scan: it leaves its
#: core, so that the thread it waits for (descheduled by other work on the machine) can run there.
_SCANS_BEFORE_SLEEP = 64
_SLEEP_US = 50


one_cycle_lr = njit(cache=True, inline="always", error_model="numpy")(schedule.one_cycle_lr)


def as_step_lrs(lrs):
    """``lrs`` as a :class:`~mfscratch.kernels.records.StepLrs`: an array (one rate a step, or one for
    every step) is wrapped, a record is passed on. Compiled per type (``overload``), so the kernels take
    either."""
    if isinstance(lrs, np.ndarray):
        return StepLrs(lrs, 0, 0, 0.0, 0.0, 0.0, 0.0)
    return lrs


@overload(as_step_lrs, inline="always")
def _as_step_lrs(lrs):
    if isinstance(lrs, types.Array):
        return lambda lrs: StepLrs(lrs, 0, 0, 0.0, 0.0, 0.0, 0.0)
    return lambda lrs: lrs


def as_loss_summary(losses, n_steps):
    """``losses`` as a :class:`~mfscratch.kernels.records.LossSummary`: an array of one loss a step is
    the tail of every step (empty: nothing kept), a summary is passed on. Compiled per type."""
    if isinstance(losses, np.ndarray):
        empty = np.empty(0, dtype=np.float64)
        return LossSummary(np.empty(0, np.int64), empty, losses, 0 if losses.shape[0] > 0 else n_steps, empty, empty)
    return losses


@overload(as_loss_summary, inline="always")
def _as_loss_summary(losses, n_steps):
    if isinstance(losses, types.Array):

        def wrap(losses, n_steps):
            empty = np.empty(0, dtype=np.float64)
            tail_start = 0 if losses.shape[0] > 0 else n_steps
            return LossSummary(np.empty(0, np.int64), empty, losses, tail_start, empty, empty)

        return wrap
    return lambda losses, n_steps: losses


#: Steps a block trains at a time: their learning rates are made before, their losses kept after
#: (two 8 KB buffers, in cache meanwhile).
STEP_CHUNK = 1024


#: The angle that one chunk's steps turn the one-cycle cosine through, at most, for :func:`fill_lrs`'s
#: rotation (above it, in fits of under about 1,000 x STEP_CHUNK steps, the chunk takes the exact rate
#: a step): the polynomials of :func:`rotation_rates` stay within a few 1e-16 of cos and sin there.
ROTATION_MAX_TURN = 0.05
_U = 2.0**-53  # the unit roundoff of float64


@njit(inline="always", error_model="numpy")
def rotation_rates(step, n, total_steps, pct_start, start, middle, end):
    """What :func:`fill_lrs` needs to bound :func:`one_cycle_lr`'s rates of steps ``step..step+n-1``
    without a ``cos`` call a step: ``(ok, s0, s1, cos_a, sin_a, beta, slack)``.

    On one side of ``pct_start`` the rate is ``s0 + (1 + cos x) (s1 - s0) / 2`` with an angle ``x`` that
    falls by the same ``-beta`` every step: ``x = x_a + beta j`` at step ``step + j``, ``x_a`` the first
    step's angle, computed as :func:`one_cycle_lr` does. So ``cos x = cos_a cos(beta j) - sin_a
    sin(beta j)`` (``cos_a``, ``sin_a``: the C library's, once a chunk), with ``cos(beta j)`` and
    ``sin(beta j)`` from their Taylor polynomials (``|beta j|`` is tiny). ``slack`` bounds, four times
    over, that cosine's distance from the C library's ``cos`` of the exact rate's own angle: the exact
    rate's float roundings (under ``pi u (6 P / m + 2)`` in the angle, ``m``: ``pct_start`` or ``1 -
    pct_start``, ``P``: 1 or the largest position past the end, at either end), the slope's, the
    polynomials' remainders and the C library's error.

    ``ok`` is False where the steps straddle ``pct_start``, or the turn exceeds
    :data:`ROTATION_MAX_TURN`, or the schedule is degenerate: those steps take the exact rate.
    """
    n_total = max(total_steps, 1)
    pos, pos_last = float(step) / n_total, float(step + n - 1) / n_total  # one_cycle_lr's positions
    warm = pos < pct_start
    if warm != (pos_last < pct_start):
        return False, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    m = pct_start if warm else 1.0 - pct_start
    s0, s1 = (start, middle) if warm else (middle, end)
    beta = -math.pi / (n_total * m)
    turn = abs(beta) * max(n - 1, 1) * (1.0 + 4 * _U)
    if not (m > 0.0 and turn <= ROTATION_MAX_TURN):
        return False, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    term = pos / pct_start if warm else (pos - pct_start) / (1.0 - pct_start)
    x_a = math.pi * (1.0 - term)
    # An angle's roundings: pi u (6 P / m + 2), P the larger of 1 and the positions (past the end of the
    # schedule they exceed 1); twice, for the step's angle and the first step's; then the slope's.
    scale = max(1.0, abs(pos), abs(pos_last)) / m
    angle = 2.0 * math.pi * _U * (6.0 * scale + 2.0) + 4.0 * _U * turn
    series = turn**9 / 362880.0 + turn**10 / 3628800.0  # the polynomials' remainders (alternating series)
    slack = 4.0 * (angle + series + 16.0 * _U)  # 16 u: the C library's cos and sin, the products and sums
    return True, s0, s1, math.cos(x_a), math.sin(x_a), beta, slack


@njit(inline="always", error_model="numpy")
def rotated_bounds(j, s0, s1, cos_a, sin_a, beta, slack):
    """``(a, b)``: the rate of the chunk's ``j``-th step lies between the two (:func:`rotation_rates`).
    The same operations as :func:`one_cycle_lr` from the cosine minus and plus ``slack``: each is
    monotone in the cosine, so the exact rate lies between the two results."""
    t = beta * j
    z = t * t
    cos_t = 1.0 - 0.5 * z + z * z * (1.0 / 24.0 - z * (1.0 / 720.0 - z * (1.0 / 40320.0)))
    sin_t = t - t * z * (1.0 / 6.0 - z * (1.0 / 120.0 - z * (1.0 / 5040.0)))
    c = cos_a * cos_t - sin_a * sin_t
    a = s0 + (1.0 + (c - slack)) * (s1 - s0) / 2.0
    b = s0 + (1.0 + (c + slack)) * (s1 - s0) / 2.0
    return a, b


@njit(inline="always", error_model="numpy")
def fill_lrs(lrs, wd, c0, c1, steps, shrinks):
    """``steps[s - c0] = T(lr)`` and ``shrinks[s - c0] = T(1 - lr wd)`` for the learning rate ``lr`` of step
    ``s`` of the epoch, ``s`` in ``c0..c1-1`` (``lrs``: a ``StepLrs``; ``T``: the outputs' dtype, the
    tables'): the two numbers a step takes from its rate. Made a chunk at a time rather than in the step
    loop: the chunk's rates do not wait on each other or on the step's memory loads.

    ``fit_one_cycle``'s rates (no per-step array) go in two passes. The first, vectorised, takes each
    rate's bounds (:func:`rotated_bounds`: a rotation of the chunk's first cosine, no ``cos`` call) and
    rounds both: where ``T`` is float32 both bounds almost always round to the same two numbers, and
    these are then those of the exact rate, since rounding is monotone. The second pass makes the few
    others from the exact rate (:func:`one_cycle_lr`, the C library's ``cos``), as do chunks that
    straddle ``pct_start``: the same numbers as the per-step array gives, bit for bit, at a small
    fraction of the cost of a ``cos`` call a step (docs/speed.md).
    """
    T = steps.dtype.type
    n = lrs.lrs.shape[0]
    if n > 0:
        for s in range(c0, c1):
            lr = lrs.lrs[np.uint64(s)] if n > 1 else lrs.lrs[0]
            steps[s - c0] = T(lr)
            shrinks[s - c0] = T(1.0 - lr * wd)
        return
    first, total, pct = lrs.first_step, lrs.total_steps, lrs.pct_start
    lr_start, lr_max, lr_end = lrs.lr_start, lrs.lr_max, lrs.lr_end
    ok, s0, s1, cos_a, sin_a, beta, slack = rotation_rates(first + c0, c1 - c0, total, pct, lr_start, lr_max, lr_end)
    unsure = 0
    if ok:
        for j in range(c1 - c0):
            a, b = rotated_bounds(j, s0, s1, cos_a, sin_a, beta, slack)
            step_a, shrink_a = T(a), T(1.0 - a * wd)
            steps[j] = step_a
            shrinks[j] = shrink_a
            unsure += (step_a != T(b)) | (shrink_a != T(1.0 - b * wd))
        if unsure == 0:
            return
    for j in range(c1 - c0):
        if ok:
            a, b = rotated_bounds(j, s0, s1, cos_a, sin_a, beta, slack)
            if T(a) == T(b) and T(1.0 - a * wd) == T(1.0 - b * wd):
                continue
        lr = one_cycle_lr(first + c0 + j, total, pct, lr_start, lr_max, lr_end)
        steps[j] = T(lr)
        shrinks[j] = T(1.0 - lr * wd)


@njit(inline="always")
def keep_losses(chunk_losses, c0, c1, sample_steps, sample, i_sample, tail, tail_start, total):
    """Keep the losses of steps ``c0..c1-1`` (``chunk_losses[s - c0]``): those of the sample (from its
    ``i_sample``-th step on) and of the tail, and add them to ``total`` in step order. Returns the new
    ``(i_sample, total)``. Done a chunk at a time after the chunk trains, so that the step loop stores
    each loss once and tests nothing more (it is bound by memory latency: fewer instructions a step
    keep more steps' loads in flight)."""
    n_sample = sample_steps.shape[0]
    while i_sample < n_sample and sample_steps[i_sample] < c1:
        sample[i_sample] = chunk_losses[sample_steps[i_sample] - c0]
        i_sample += 1
    for s in range(max(c0, tail_start), c1):
        tail[s - tail_start] = chunk_losses[s - c0]
    for s in range(c0, c1):
        total += chunk_losses[s - c0]
    return i_sample, total


@njit(inline="always", error_model="numpy")
def rating_error(x, y, lo, span, has_range, one, two):
    """``(err, dx)`` of one rating ``y`` from its logit ``x``, in the tables' dtype (``one``, ``two``: 1
    and 2 in it): ``err = lo + span s - y`` with ``s = sigmoid(x)`` and ``dx = 2 err span s (1 - s)``;
    without a range ``err = x - y`` and ``dx = 2 err``. Branch-free in ``x``: below about -88,
    ``exp(-x)`` is inf in float32 and ``s`` exactly 0."""
    if has_range:
        sg = one / (one + math.exp(-x))
        err = lo + span * sg - y
        return err, two * err * span * sg * (one - sg)
    err = x - y
    return err, two * err


@njit(inline="always", error_model="numpy")
def _logit(params, u_bias, i_bias, i_start, u, i, k):
    """``x = P[u] . Q[i] + b[u] + c[i]`` of the flat buffer (the dot product in 16-lane chunks)."""
    return dot_rows(params, u * k, i_start + i * k, k) + u_bias[np.uint64(u)] + i_bias[np.uint64(i)]


@njit(inline="always", error_model="numpy")
def _train_block(params, i_start, u_bias, i_bias, users, items, ratings, order, offset, first, last, lrs, wd, lo,
                 span, has_range, sample_steps, sample, tail, tail_start, sums, bad_losses, block, k,
                 fetch):  # fmt: skip
    """Steps ``first..last-1`` of the epoch (one block, or the whole serial epoch), in turn; step ``s``
    trains rating ``order[s - offset]`` (``order``: the epoch's order, ``offset`` 0, or one block's,
    ``offset = first``), or rating ``s`` when ``order`` is empty.

    The steps go :data:`STEP_CHUNK` at a time: ``lrs`` (a ``StepLrs``) is made for the chunk before it
    trains (:func:`fill_lrs`), and its losses kept after (:func:`keep_losses`) into
    ``sample_steps..bad_losses``, a ``LossSummary``'s fields, unpacked (numba 0.68 loses writes made
    through a record's fields inside a prange body): each step's at its place in ``sample`` and
    ``tail``, the block's sum at ``sums[block]``, a non-finite loss at ``bad_losses[block]``. Returns
    ``last``, or the position of the first non-finite loss (training stops there, before its update).
    The maths: the module docstring.

    Software-pipelined by one step: the next step's logit ``x`` (its two rows' dot product and biases)
    is computed before this step's update, so that its loads, multiplies and sums run while this step's
    sigmoid and error wait on each other (the two chains overlap; a CPU's reorder window alone does not
    reach that far ahead). When the next step shares this step's user or item, its logit is computed
    again after the update. Every logit is therefore the one the plain loop computes, from the same
    values: the same floats, bit for bit.
    """
    T = params.dtype.type
    in_order = order.shape[0] == 0
    one, two = T(1.0), T(2.0)
    i_sample = np.searchsorted(sample_steps, first)  # the block's first step of the sample
    total = 0.0
    chunk_steps = np.empty(STEP_CHUNK, dtype=params.dtype)  # T(lr) of the chunk's steps
    chunk_shrinks = np.empty(STEP_CHUNK, dtype=params.dtype)  # T(1 - lr wd)
    chunk_losses = np.empty(STEP_CHUNK, dtype=np.float64)
    for c0 in range(first, last, STEP_CHUNK):
        c1 = min(c0 + STEP_CHUNK, last)
        fill_lrs(lrs, wd, c0, c1, chunk_steps, chunk_shrinks)
        # Loads index with unsigned integers (steps, rows and codes are never negative): no code for
        # negative (wrap-around) indexing; the same values.
        row = np.uint64(c0) if in_order else np.uint64(order[np.uint64(c0 - offset)])
        u = users[row]
        i = items[row]
        x = _logit(params, u_bias, i_bias, i_start, u, i, k)
        row_next, u_next, i_next, x_next = row, u, i, x
        for s in range(c0, c1):
            if fetch and s + 4 * PREFETCH_AHEAD < last:
                if not in_order:
                    ahead = order[s + 4 * PREFETCH_AHEAD - offset]
                    prefetch(users, ahead)
                    prefetch(items, ahead)
                    prefetch(ratings, ahead)
                ahead = s + PREFETCH_AHEAD if in_order else order[s + PREFETCH_AHEAD - offset]
                prefetch_row(params, users[ahead] * k, k)
                prefetch_row(params, i_start + items[ahead] * k, k)
            at = np.uint64(s)
            more = s + 1 < c1
            if more:  # the next step's logit, before this step's update
                row_next = at + np.uint64(1) if in_order else np.uint64(order[np.uint64(s + 1 - offset)])
                u_next = users[row_next]
                i_next = items[row_next]
                x_next = _logit(params, u_bias, i_bias, i_start, u_next, i_next, k)
            uu, ii = np.uint64(u), np.uint64(i)
            err, dx = rating_error(x, ratings[row], lo, span, has_range, one, two)
            loss = err * err
            chunk_losses[np.uint64(s - c0)] = loss
            if not math.isfinite(loss):
                keep_losses(chunk_losses, c0, s + 1, sample_steps, sample, i_sample, tail, tail_start, total)
                if bad_losses.shape[0] > 0:
                    bad_losses[block] = loss
                return s  # diverged: stop before this rating's update
            shrink = chunk_shrinks[np.uint64(s - c0)]
            step = chunk_steps[np.uint64(s - c0)] * dx
            update_rows(params, u * k, i_start + i * k, k, shrink, step)  # P[u], Q[i]
            u_bias[uu] = u_bias[uu] * shrink - step
            i_bias[ii] = i_bias[ii] * shrink - step
            if more:
                if u_next == u or i_next == i:  # it reads a row this step just changed
                    x_next = _logit(params, u_bias, i_bias, i_start, u_next, i_next, k)
                row, u, i, x = row_next, u_next, i_next, x_next
        i_sample, total = keep_losses(chunk_losses, c0, c1, sample_steps, sample, i_sample, tail, tail_start, total)
    if sums.shape[0] > 0:
        sums[block] = total
    return last


@njit(cache=True, inline="always")
def _fetch_rows(params, data):
    """Whether to prefetch: in a shuffled order every rating also reads users/items/ratings at a random
    row; once those arrays or the tables outgrow the caches, prefetch (codes 16 ratings ahead, rows 4 ahead)."""
    users, items, ratings = data
    data_bytes = users.size * users.itemsize + items.size * items.itemsize + ratings.size * ratings.itemsize
    return params.size * params.itemsize + data_bytes > PREFETCH_MIN_BYTES


def _train_epoch_per_rating_body(params, shape, data, layout, lrs, wd, y_range, out):
    r"""One epoch of per-rating SGD over ``layout`` (a ``records.BlockLayout``); step ``s`` is rating ``order[s]``.

    ``n_groups = 1`` (``block_start = [0, n]``) is the plain serial epoch over ``order``; an empty
    ``order`` means the ratings in the order they are stored (after ``blocks.sort_by_block``). With
    ``n_groups = g > 1`` the epoch runs ``g`` strata one after another, and in each the ``g`` blocks,
    which share no row, run on the Numba threads (``prange``; the serial build runs them in turn): the
    result is deterministic for any thread timing and equal to the serial epoch over the same order.
    Every stratum ends at a barrier (all its blocks finish before the next stratum starts):
    :func:`train_epoch_per_rating_dynamic` does without.

    ``lrs`` holds one learning rate per step, or one for every step, or is a ``records.StepLrs`` (the
    one-cycle rate made here, no per-step array); ``out.losses`` one squared error per step, or none
    (empty: nothing is recorded), or is a ``records.LossSummary`` (a long epoch's sample, tail and
    block sums: at 25M ratings the per-step arrays would be 200 MB each);
    ``out.progress[0]`` counts the ratings of the finished strata. Returns the number of steps done:
    all, or (the position of the first non-finite loss) + 1 (training stops there, before its update;
    with ``g > 1`` other blocks of that stratum may finish theirs).
    """
    # Every record is unpacked before the prange loop: numba 0.68 loses writes made through a
    # record's fields inside a prange body.
    _, _, u_bias, i_bias = split_flat(params, shape)
    users, items, ratings = data
    order, block_start, g = layout
    losses, progress = out
    lo_, hi_, has_range = y_range
    T = params.dtype.type
    k = shape.n_factors
    i_start = shape.n_users * k  # where Q starts in the flat buffer
    n_steps = users.shape[0] if order.shape[0] == 0 else order.shape[0]
    step_lrs = as_step_lrs(lrs)
    sample_steps, sample, tail, tail_start, sums, bad_losses = as_loss_summary(losses, n_steps)
    fetch = _fetch_rows(params, data)
    first_bad = np.full(g, n_steps, dtype=np.int64)
    lo, span = T(lo_), T(hi_ - lo_)
    for t in range(g):
        for c in prange(g):
            first = block_start[t * g + c]
            last = block_start[t * g + c + 1]
            end = _train_block(params, i_start, u_bias, i_bias, users, items, ratings, order, 0, first,
                               last, step_lrs, wd, lo, span, has_range, sample_steps, sample, tail, tail_start, sums,
                               bad_losses, t * g + c, k, fetch)  # fmt: skip
            if end < last:
                first_bad[c] = end
        if first_bad.min() < n_steps:
            break
        progress[0] = block_start[(t + 1) * g]
    bad = first_bad.min()
    return n_steps if bad == n_steps else bad + 1


@njit(cache=True, inline="always")
def _block_buffer(order, canonical, block_start):
    """The buffer :func:`_block_order` shuffles a block's ratings in: as long as the layout's largest
    block when neither ``canonical`` nor ``order`` is given (ratings stored by block), else empty."""
    most = 0
    if order.shape[0] == 0 and canonical.shape[0] == 0:
        for p in range(block_start.shape[0] - 1):
            most = max(most, block_start[p + 1] - block_start[p])
    return np.empty(most, dtype=order.dtype)


@njit(inline="always")
def _block_order(order, canonical, local, first, last, p, seed):
    """Block ``p``'s order for the epoch, as ``(array, offset)`` for :func:`_train_block`.

    * ``canonical`` given: its rows ``first..last-1`` copied into ``order`` and shuffled there
      (``blocks.shuffle_block``, as ``blocks.shuffle_blocks(order, block_start, seed)`` shuffles block ``p``);
    * neither ``canonical`` nor ``order``: the ratings are stored block by block, so the block is the
      ratings ``first..last-1``; they are shuffled the same way in ``local``, the thread's own buffer
      (no order array for the whole epoch, and the block's ratings are contiguous: their codes and
      values stay in cache while it trains);
    * ``order`` alone: trained as it is.
    """
    if canonical.shape[0] > 0:
        for s in range(first, last):
            order[s] = canonical[s]
        shuffle_block(order, first, last, p, seed)
        return order, 0
    if order.shape[0] == 0:
        for t in range(last - first):
            local[t] = first + t
        shuffle_block(local, 0, last - first, p, seed)
        return local, first
    return order, 0


@njit(**HOT)
def train_epoch_per_rating_shuffled(params, shape, data, layout, lrs, wd, y_range, out, canonical, seed):
    """The serial blocked epoch of :func:`train_epoch_per_rating` (``g > 1``), each block's order made just
    before it trains (:func:`_block_order`): copied from ``canonical`` into ``layout.order`` and shuffled
    (``blocks.shuffle_block``, as ``blocks.shuffle_blocks(order, block_start, seed)`` shuffles it), or,
    with neither ``canonical`` nor ``layout.order`` (ratings stored block by block), the block's own
    ratings shuffled the same way in a buffer of the block's size.

    The same order, weights and losses as copying and shuffling the whole layout first, without the
    separate pass over the epoch's order (at 25M ratings a 200 MB copy), and with each block's order
    still in cache when it trains. ``out.progress[0]`` counts the ratings of the finished blocks.
    Returns the number of steps done, and stops after a divergence, as :func:`train_epoch_per_rating`
    (the stratum's other blocks finish, so the weights equal the unfused epoch's then too).
    """
    _, _, u_bias, i_bias = split_flat(params, shape)
    users, items, ratings = data
    order, block_start, g = layout
    losses, progress = out
    lo_, hi_, has_range = y_range
    T = params.dtype.type
    k = shape.n_factors
    i_start = shape.n_users * k  # where Q starts in the flat buffer
    n_steps = users.shape[0] if order.shape[0] == 0 else order.shape[0]
    step_lrs = as_step_lrs(lrs)
    sample_steps, sample, tail, tail_start, sums, bad_losses = as_loss_summary(losses, n_steps)
    fetch = _fetch_rows(params, data)
    lo, span = T(lo_), T(hi_ - lo_)
    local = _block_buffer(order, canonical, block_start)
    bad = n_steps
    for t in range(g):
        for c in range(g):  # a stratum's blocks in turn; after a divergence the others still finish, as there
            b = t * g + c
            first = block_start[b]
            last = block_start[b + 1]
            steps, offset = _block_order(order, canonical, local, first, last, b, seed)
            end = _train_block(params, i_start, u_bias, i_bias, users, items, ratings, steps, offset,
                               first, last, step_lrs, wd, lo, span, has_range, sample_steps, sample, tail, tail_start,
                               sums, bad_losses, b, k, fetch)  # fmt: skip
            if end < last:
                bad = min(bad, end)
            elif bad == n_steps:
                progress[0] = last
        if bad < n_steps:
            break
    return n_steps if bad == n_steps else bad + 1


@njit(cache=True, inline="always")
def _claim_ordered(state, g, scan):
    """The first free block from ``scan`` on (layout order) whose two predecessors on its rows are done,
    claimed by a compare-and-swap; -1 if none is ready."""
    for b in range(scan, state.shape[0]):
        if atomic_load(state, b) != _FREE:
            continue
        t, c = b // g, b % g
        if t > 0 and (
            atomic_load(state, (t - 1) * g + c) != _DONE or atomic_load(state, (t - 1) * g + (c + 1) % g) != _DONE
        ):
            continue
        if atomic_cas(state, b, _FREE, _CLAIMED) == _FREE:
            return b
    return -1


@njit(cache=True, inline="always")
def _claim_free(state, busy, lock, g, scan):
    """LIBMF's rule: the first free block from ``scan`` on (layout order) whose user group and item group
    no running block uses, claimed with both groups marked busy; -1 if none is. One thread looks at a
    time (a spin lock: a few hundred claims an epoch, so it is never contended for long)."""
    if atomic_cas(lock, 0, 0, 1) != 0:
        return -1
    claimed = -1
    for b in range(scan, state.shape[0]):
        if atomic_load(state, b) != _FREE:
            continue
        t, c = b // g, b % g
        d = (c + t) % g
        if atomic_load(busy, c) == 0 and atomic_load(busy, g + d) == 0:
            atomic_store(busy, c, 1)
            atomic_store(busy, g + d, 1)
            atomic_store(state, b, _CLAIMED)
            claimed = b
            break
    atomic_store(lock, 0, 0)
    return claimed


@njit(cache=True, inline="always")
def _bind_worker(cpus, worker, saved):
    """Pin the calling thread to CPU ``cpus[worker % len(cpus)]``, its previous CPU mask saved into
    ``saved`` (Linux); whether it did."""
    if cpus.shape[0] == 0 or get_thread_cpus(saved) != 0:
        return False
    cpu = cpus[worker % cpus.shape[0]]
    if cpu < 0 or cpu >= 64 * CPU_MASK_WORDS:
        return False
    mask = np.zeros(CPU_MASK_WORDS, dtype=np.uint64)
    mask[cpu // 64] = np.uint64(1) << np.uint64(cpu % 64)
    return set_thread_cpus(mask) == 0


def _train_epoch_per_rating_dynamic_body(
    params, shape, data, layout, lrs, wd, y_range, out, n_workers, canonical, seed, free=False, cpus=None
):
    r"""The epoch of :func:`train_epoch_per_rating` (``g > 1`` blocks) with no barrier between strata.

    Block ``(c, t)`` (user group ``c``, stratum ``t``, item group ``d = (c + t) % g``) may start once
    the two blocks before it on its rows have finished: ``(c, t - 1)``, the last user of group ``c``,
    and ``((c + 1) % g, t - 1)``, the last user of item group ``d``. Every Numba thread loops: it takes
    the first free block (in layout order) whose two predecessors are done (a compare-and-swap claims
    it), trains it, marks it done; with no block ready it spins (a ``pause``, and after a few empty
    scans a ``sched_yield``, so that a thread it waits for gets the core; after longer waits it sleeps
    50 microseconds a scan: its core goes idle, and the operating system moves a thread descheduled by
    other work there, where a spinning thread would keep that core busy). A thread that finishes a
    block early goes on with any ready block, of this stratum or a later one, instead of waiting for the
    whole stratum, so one slow or descheduled thread holds up only the blocks on its rows.
    ``n_workers``: the threads taking blocks (the Numba thread count; passed in, because a kernel that
    asks Numba for it cannot be cached).

    ``canonical`` (``n`` rows, or empty): the epoch's order is made here, block by block: the thread
    that claims block ``p`` copies its rows of ``canonical`` into ``layout.order`` and shuffles them as
    ``blocks.shuffle_blocks(order, block_start, seed)`` shuffles block ``p``, then trains it. The same
    order as copying and shuffling the whole layout first, with one parallel region an epoch instead
    of two, and each block's order written by the thread that reads it next. Empty, with an empty
    ``layout.order``: the ratings are stored block by block (``blocks.block_ordered``), and the thread
    shuffles its block's ratings the same way in a buffer of its own (the same steps as shuffling the
    canonical rows, with no order array for the epoch). Empty otherwise: ``layout.order`` is trained
    as it is (:func:`_block_order`).

    Each user group's and each item group's blocks still run one after another in stratum order, and
    blocks that run at once share no row, so every row sees the same updates in the same order as in the
    serial epoch over the layout: the weights and losses equal the barrier kernel's and the serial
    kernel's bit for bit, whatever the thread timing. No thread waits for a block not yet claimed, so
    the loop cannot deadlock, even if the threads run one after another. ``out.progress[0]`` counts the
    ratings of the finished blocks. On a non-finite loss no new block starts; blocks already running
    finish theirs (the weights after a divergence are not reproducible; the returned step count is).

    ``free=True``: LIBMF's rule instead. A thread takes the first free block whose user group and item
    group no running block uses, whatever stratum it is in (:func:`_claim_free`), so a thread never waits
    while such a block is left, however far behind a slowed thread is. Blocks that run at once still
    share no row, and every block trains once an epoch, but two blocks on the same rows may now run in
    either order, so the weights depend on the thread timing: not reproducible run to run (docs/speed.md
    measures the spread of the validation error).

    ``cpus`` (an int64 array of CPU numbers, or None): worker ``w`` runs the epoch on CPU
    ``cpus[w % len(cpus)]`` alone (Linux), its previous CPU mask restored when it is done. Left to
    itself, the operating system sometimes puts both threads of a two-core machine on the core that
    another program leaves free, where they share it, instead of one there and one beside the other
    program: one thread a core gives the threads the cores' whole share (docs/speed.md). The weights
    do not depend on it.
    """
    _, _, u_bias, i_bias = split_flat(params, shape)
    users, items, ratings = data
    order, block_start, g = layout
    losses, progress = out
    lo_, hi_, has_range = y_range
    T = params.dtype.type
    k = shape.n_factors
    i_start = shape.n_users * k  # where Q starts in the flat buffer
    n_steps = users.shape[0] if order.shape[0] == 0 else order.shape[0]
    step_lrs = as_step_lrs(lrs)
    sample_steps, sample, tail, tail_start, sums, bad_losses = as_loss_summary(losses, n_steps)
    fetch = _fetch_rows(params, data)
    lo, span = T(lo_), T(hi_ - lo_)
    n_blocks = g * g
    state = np.zeros(n_blocks, dtype=np.int64)
    flags = np.zeros(1, dtype=np.int64)  # [0]: 1 once a block diverged
    busy = np.zeros(2 * g, dtype=np.int64)  # free: user groups [0, g) and item groups [g, 2g) in use
    lock = np.zeros(1, dtype=np.int64)  # free: 1 while a thread looks for a block
    first_bad = np.full(n_blocks, n_steps, dtype=np.int64)
    for _worker in prange(n_workers):
        local = _block_buffer(order, canonical, block_start)  # the thread's block order (ratings stored by block)
        saved = np.zeros(CPU_MASK_WORDS, dtype=np.uint64)
        bound = False
        if cpus is not None:
            bound = _bind_worker(cpus, _worker, saved)
        scan = 0  # every block before ``scan`` is claimed
        idle = 0
        while scan < n_blocks and atomic_load(flags, 0) == 0:
            while scan < n_blocks and atomic_load(state, scan) != _FREE:
                scan += 1
            claimed = _claim_free(state, busy, lock, g, scan) if free else _claim_ordered(state, g, scan)
            if claimed < 0:
                if scan < n_blocks:  # blocks are left but none is ready: wait for a running one
                    idle += 1
                    if idle > _SCANS_BEFORE_SLEEP:
                        sleep_thread(_SLEEP_US)
                    elif idle % _SPINS_BEFORE_YIELD == 0:
                        yield_thread()
                    else:
                        spin_pause()
                continue
            if atomic_load(flags, 0) != 0:
                # A block diverged while this one was being claimed (its predecessor, marked done after the
                # flag was raised, may be the block that diverged): no new block starts.
                break
            idle = 0
            first = block_start[claimed]
            last = block_start[claimed + 1]
            steps, offset = _block_order(order, canonical, local, first, last, claimed, seed)
            end = _train_block(params, i_start, u_bias, i_bias, users, items, ratings, steps, offset,
                               first, last, step_lrs, wd, lo, span, has_range, sample_steps, sample, tail, tail_start,
                               sums, bad_losses, claimed, k, fetch)  # fmt: skip
            if end < last:
                first_bad[claimed] = end
                atomic_store(flags, 0, 1)
            atomic_add(progress, 0, last - first)
            atomic_store(state, claimed, _DONE)
            if free:
                t, c = claimed // g, claimed % g
                atomic_store(busy, c, 0)
                atomic_store(busy, g + (c + t) % g, 0)
        if bound:
            set_thread_cpus(saved)
    bad = first_bad.min()
    return n_steps if bad == n_steps else bad + 1


train_epoch_per_rating = njit(**HOT)(_train_epoch_per_rating_body)
train_epoch_per_rating_parallel = njit(parallel=True, **HOT)(twin(_train_epoch_per_rating_body))
train_epoch_per_rating_dynamic = njit(parallel=True, **HOT)(_train_epoch_per_rating_dynamic_body)
