"""The model's maths on the GPU: twins of ``kernels/cpu/core.py`` (same names, same records).

Where a CPU kernel *returns* a number (a batch loss, an MSE), its CUDA twin writes it into a small
float64 output array that the caller zeroes first. One thread per rating in ``forward_backward``:
thread ``r`` computes the logit, the error and ``dx_r``, then scatter-adds ``dx_r Q[i_r]`` into
``dP[u_r]`` (and so on) with ``cuda.atomic.add``, so a row that repeats in the batch gets the sum of its
contributions, as ``np.add.at`` does in ``reference.backward``. Sums go through a per-block float64
shared-memory tree and one atomic add per block.
"""

from __future__ import annotations

from .. import records
from ._compile import THREADS, cuda, device, float64, kernel

__all__ = ["split_flat", "forward_backward", "evaluate_mse"]


#: ``s = 1 / (1 + exp(-x))`` without overflow (``records.sigmoid``; the CPU twin drops its branch).
sigmoid = device(records.sigmoid)


@device
def logit(tables, u, i):
    """``x = P[u] . Q[i] + b[u] + c[i]``, accumulated in float64 like the CPU kernels."""
    x = 0.0
    for j in range(tables.u_weight.shape[1]):
        x += tables.u_weight[u, j] * tables.i_weight[i, j]
    return x + tables.u_bias[u] + tables.i_bias[i]


@device
def prediction(x, y_range):
    """``pred = lo + (hi - lo) s`` with a range, ``x`` without."""
    if y_range.has_range:
        return y_range.lo + (y_range.hi - y_range.lo) * sigmoid(x)
    return x


@device
def error_and_dx(x, y, y_range, scale):
    """``(pred - y, dL/dx)`` for logit ``x``: ``dx = scale (pred - y)(hi - lo) s (1 - s)``, ``scale = 2/B``."""
    lo, hi = y_range.lo, y_range.hi
    if y_range.has_range:
        s = sigmoid(x)
        err = lo + (hi - lo) * s - y
        return err, scale * err * (hi - lo) * s * (1.0 - s)
    err = x - y
    return err, scale * err


#: The tables of a flat buffer as a ``Tables`` record of views (``records.split_flat``, shared with the CPU).
split_flat = device(records.split_flat)


@device
def tree_sum(buf, t, lane, width):
    """Sum, in place in the shared ``buf``, each run of ``width`` consecutive threads' values (``width`` a
    power of two; ``lane`` is this thread's place in its run). The run's total lands at ``buf[t - lane]``.
    Every thread of the block must call it (it synchronises the block)."""
    half = width // 2
    while half > 0:
        if lane < half:
            buf[t] += buf[t + half]
        cuda.syncthreads()
        half //= 2


@device
def block_sum(value):
    """Sum of ``value`` over the threads of this block (float64 tree in shared memory).

    Every thread of the block must call it; thread 0's return value is the total.
    """
    buf = cuda.shared.array(THREADS, float64)
    t = cuda.threadIdx.x
    buf[t] = value
    cuda.syncthreads()
    tree_sum(buf, t, t, THREADS)
    total = buf[0]
    cuda.syncthreads()  # nobody overwrites buf (next call) before everyone has read the total
    return total


@device
def scatter_gradient(tables, grads, u, i, dx, first, stride):
    """Atomically add ``dx Q[i]`` to ``dP[u]`` and ``dx P[u]`` to ``dQ[i]``, columns ``first, first + stride, ...``."""
    for j in range(first, tables.u_weight.shape[1], stride):
        cuda.atomic.add(grads.u_weight, (u, j), dx * tables.i_weight[i, j])
        cuda.atomic.add(grads.i_weight, (i, j), dx * tables.u_weight[u, j])


@kernel
def forward_backward(tables, batch, y_range, grads, loss):
    """Batch MSE added to ``loss[0]``; its gradient *added* into ``grads`` (atomics: repeats add up).

    Launch with at least ``len(batch.users)`` threads (``[blocks_for(B), THREADS]``): one a rating.
    """
    r = cuda.grid(1)
    B = batch.users.shape[0]
    value = 0.0
    if r < B:
        u = batch.users[r]
        i = batch.items[r]
        err, dx = error_and_dx(logit(tables, u, i), batch.ratings[r], y_range, 2.0 / B)
        scatter_gradient(tables, grads, u, i, dx, 0, 1)
        cuda.atomic.add(grads.u_bias, u, dx)
        cuda.atomic.add(grads.i_bias, i, dx)
        value = err * err
    total = block_sum(value)
    if cuda.threadIdx.x == 0:
        cuda.atomic.add(loss, 0, total / B)


@kernel
def evaluate_mse(tables, data, y_range, out):
    """Exact MSE over all rows, added to ``out[0]``: per-block float64 partial sums, one atomic per block.

    Grid-stride, so any grid size works; ``blocks_for(n)`` blocks give one thread per row.
    """
    n = data.users.shape[0]
    total = 0.0
    for r in range(cuda.grid(1), n, cuda.gridsize(1)):
        err = prediction(logit(tables, data.users[r], data.items[r]), y_range) - data.ratings[r]
        total += err * err
    total = block_sum(total)
    if cuda.threadIdx.x == 0 and n > 0:
        cuda.atomic.add(out, 0, total / n)
