"""Whole epochs on the GPU: twins of the CPU's ``train_epoch_dense`` and ``train_epoch_sparse``.

``train_epoch_dense`` and ``train_epoch_sparse`` are persistent cooperative kernels: each step is a
forward/backward phase, a grid-wide barrier (``cuda.cg.this_grid().sync()``), an update phase and
another barrier, so a 1,250-step epoch costs one launch instead of 2,500 and the host never waits on
the device inside an epoch. ``gather_rows`` and the step kernels give the same epoch as a host loop of
two launches per step (three in sparse mode), the fallback where a cooperative launch is unavailable.
"""

from __future__ import annotations

import math

from ._compile import THREADS, cuda, device, float64, kernel
from .core import block_sum, error_and_dx, scatter_gradient, split_flat, tree_sum
from .updates import lazy_index, lazy_slot, step_scalars, update_element

__all__ = ["gather_rows", "train_epoch_dense", "train_epoch_sparse"]


@device
def _step_forward_backward(params, grads, shape, data, steps, s, y_range, owners, losses, group, thread, n_threads):
    """Forward/backward of step ``s`` (rows ``order[s bs : (s+1) bs]``): loss into ``losses[s]``.

    ``group`` threads work on one rating (a power of two dividing ``THREADS``; 32 = a warp): lane ``l``
    takes columns ``l, l + group, ...``, so a warp reads a row of P and Q in one coalesced sweep. The
    partial dot products meet in a shared-memory tree; every lane then has ``x`` and scatter-adds its
    own columns. ``group = 1`` is plain one-thread-per-rating. Also records which batch position owns
    each user and item row (for the lazy update). Every thread of the launch must call it (barriers).
    """
    tables = split_flat(params, shape)
    dtables = split_flat(grads, shape)
    bs = steps.bs
    # A block none of whose threads gets a rating (with a grid sized for the update phase, most
    # blocks) skips the phase. The test is uniform within a block, so the barriers stay safe.
    if cuda.blockIdx.x * cuda.blockDim.x >= bs * group:
        return
    buf = cuda.shared.array(THREADS, float64)
    t = cuda.threadIdx.x
    lane = t % group
    per_round = n_threads // group
    scale = 2.0 / bs
    value = 0.0
    # Every thread of the grid makes the same number of rounds, so all of them reach every barrier.
    for rnd in range((bs + per_round - 1) // per_round):
        r = (rnd * n_threads + thread) // group
        active = r < bs
        u = 0
        i = 0
        row = 0
        partial = 0.0
        if active:
            row = steps.order[s * bs + r]
            u = data.users[row]
            i = data.items[row]
            for j in range(lane, shape.n_factors, group):
                partial += tables.u_weight[u, j] * tables.i_weight[i, j]
        buf[t] = partial
        cuda.syncthreads()
        tree_sum(buf, t, lane, group)
        if active:
            x = buf[t - lane] + tables.u_bias[u] + tables.i_bias[i]
            err, dx = error_and_dx(x, data.ratings[row], y_range, scale)
            scatter_gradient(tables, dtables, u, i, dx, lane, group)
            if lane == 0:
                cuda.atomic.add(dtables.u_bias, u, dx)
                cuda.atomic.add(dtables.i_bias, i, dx)
                owners.users[u] = r
                owners.items[i] = r
                value += err * err
        cuda.syncthreads()  # everyone has read buf before the next round overwrites it
    total = block_sum(value)
    if t == 0:
        cuda.atomic.add(losses, s, total / bs)


@kernel
def gather_rows(data, order, out):
    """``out.users[r] = data.users[order[r]]`` (and items, ratings) for the first ``len(out.users)`` positions.

    The host-loop path gathers a whole epoch's batches with one launch, then runs the step kernels on
    consecutive slices of ``out``.
    """
    r = cuda.grid(1)
    if r < out.users.shape[0]:
        row = order[r]
        out.users[r] = data.users[row]
        out.items[r] = data.items[row]
        out.ratings[r] = data.ratings[row]


@device
def _epoch(params, grads, moments, shape, data, steps, hyper, y_range, out, owners, group, sparse):
    """The body of both epoch kernels: per step, forward/backward, barrier, update (+ zero grads), barrier."""
    grid = cuda.cg.this_grid()
    thread = cuda.grid(1)
    n_threads = cuda.gridsize(1)
    bs = steps.bs
    n_steps = steps.order.shape[0] // bs
    losses = out.losses
    for s in range(thread, n_steps, n_threads):
        losses[s] = 0.0
    grid.sync()
    n = params.shape[0]
    n_sparse = 2 * bs * (shape.n_factors + 1)
    for s in range(n_steps):
        _step_forward_backward(params, grads, shape, data, steps, s, y_range, owners, losses, group, thread, n_threads)
        grid.sync()
        # Every thread reads the same finished loss, so all of them leave together (no barrier deadlock).
        diverged = not math.isfinite(losses[s])
        sc = step_scalars(steps.lrs[s], steps.moms[s], steps.step0 + s + 1, hyper)
        if sparse:
            for idx in range(thread, n_sparse, n_threads):
                side, r, c = lazy_slot(shape.n_factors, bs, idx)
                row = steps.order[s * bs + r]
                j = lazy_index(shape, data.users[row], data.items[row], owners, side, r, c)
                if j >= 0:
                    if diverged:
                        grads[j] = 0.0
                    else:
                        update_element(params, grads, moments, j, sc, hyper)
        else:
            for j in range(thread, n, n_threads):
                if diverged:
                    grads[j] = 0.0
                else:
                    update_element(params, grads, moments, j, sc, hyper)
        if diverged:
            # Stop before the update, as the CPU kernel does; the host cuts the losses after step s.
            return
        grid.sync()


@kernel
def train_epoch_dense(params, grads, moments, shape, data, steps, hyper, y_range, out, owners, group):
    """One epoch of exact-mode training in one cooperative launch (twin of ``cpu.train_epoch_dense``).

    The CPU kernel's records, plus ``owners`` (scratch for the row bookkeeping the forward phase
    shares with the sparse kernel) and ``group``, the threads per rating in the forward phase.
    ``out.losses[s]`` gets step ``s``'s batch loss; on a NaN/inf loss the epoch stops before that
    step's update and the later entries stay 0 (the host cuts the array after the first non-finite
    one). ``grads`` must be zero on entry and is zero on exit. Launch with at most
    ``cooperative_blocks(...)`` blocks of ``THREADS``.
    """
    _epoch(params, grads, moments, shape, data, steps, hyper, y_range, out, owners, group, False)


@kernel
def train_epoch_sparse(params, grads, moments, shape, data, steps, hyper, y_range, out, owners, group):
    """One epoch of sparse (lazy) training in one cooperative launch (twin of ``cpu.train_epoch_sparse``).

    Per step: accumulate the batch gradient, then update only the users and items of the batch, each
    once (decay, moments, step; Adam's bias correction from the global step), and zero their gradient
    rows. Records and stopping as in ``train_epoch_dense``.
    """
    _epoch(params, grads, moments, shape, data, steps, hyper, y_range, out, owners, group, True)
