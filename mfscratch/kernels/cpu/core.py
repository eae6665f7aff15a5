"""The model's maths, compiled: what a student reads first (the NumPy twin is ``reference.py``).

Symbols as in docs/math.md: the tables P, Q, b, c are ``u_weight, i_weight, u_bias, i_bias`` (a
:class:`~mfscratch.kernels.records.Tables` record of views into the flat buffer ``params``), the logit
``x``, its sigmoid ``s``, the prediction ``pred``, the error ``err = pred - y`` and ``dx = dL/dx``.
Batches are :class:`~mfscratch.kernels.records.Ratings` records, the output range a ``YRange``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .. import records
from ._compile import twin
from ._llvm import PREFETCH_MIN_BYTES, prefetch
from .exp import exp_fast, exp_in_range

__all__ = [
    "sigmoid",
    "dot",
    "logit",
    "error_and_dx",
    "split_flat",
    "forward_backward",
    "predict",
    "evaluate_mse",
    "evaluate_mse_parallel",
]


@njit(cache=True, inline="always", error_model="numpy")
def sigmoid(x):
    """``s = 1 / (1 + exp(-x))`` as compiled code computes it, with no branch: below about -709 (float64)
    ``exp(-x)`` is inf and ``s`` exactly 0, the limit (compiled, ``exp`` does not raise on overflow).

    ``records.sigmoid`` (what the CUDA kernels compile, and what runs as Python under the CUDA
    simulator) branches on the sign of ``x`` instead, so that ``exp`` never overflows. On the CPU the
    branch costs more than it saves: in a validation pass, where the signs come in no order, the
    mispredicted branches took about a sixth of the time (docs/speed.md)."""
    return 1.0 / (1.0 + math.exp(-x))


@njit(cache=True, fastmath={"reassoc"})
def dot(u_weight, i_weight, u, i):
    """``P[u] . Q[i]``, summed in float64.

    ``reassoc`` lets LLVM split the sum into vector lanes (a strict left-to-right sum cannot
    vectorise); the products are float32 and the sum float64, so the order moves the result by about
    1e-16 relative, far below float32 rounding. The only fastmath flag in the kernels; LLVM inlines
    this function, keeping the flag on these instructions only.
    """
    x = 0.0
    for j in range(u_weight.shape[1]):
        x += u_weight[u, j] * i_weight[i, j]
    return x


@njit(cache=True, inline="always")
def logit(tables, u, i):
    """``x = P[u] . Q[i] + (b[u] + c[i])`` (the two biases added first, in the tables' dtype)."""
    x = dot(tables.u_weight, tables.i_weight, u, i)
    x += tables.u_bias[u] + tables.i_bias[i]
    return x


@njit(cache=True, inline="always")
def error_and_dx(x, y, y_range, scale):
    """From the logit ``x`` of one rating ``y``: ``err = pred - y`` and ``dx = scale err dpred/dx``.

    ``scale`` is ``2/B``; ``dpred/dx = (hi - lo) s (1 - s)`` with ``s = sigmoid(x)`` (1 without a range).
    """
    lo, hi = y_range.lo, y_range.hi
    if y_range.has_range:
        s = sigmoid(x)
        err = lo + (hi - lo) * s - y
        return err, scale * err * (hi - lo) * s * (1.0 - s)
    err = x - y
    return err, scale * err


#: The tables of a flat buffer as a ``Tables`` record of views (``records.split_flat``, shared with CUDA).
split_flat = njit(cache=True)(records.split_flat)


@njit(cache=True)
def forward_backward(tables, batch, y_range, grads):
    """Mean squared error of one batch; *adds* its gradient into the ``grads`` tables (repeats add up).

    ``dx = (2/B)(pred - y)(hi - lo) s (1 - s)``, then ``dP[u] += dx Q[i]``, ``dQ[i] += dx P[u]``,
    ``db[u] += dx``, ``dc[i] += dx``. The caller zeroes the gradient rows it wants fresh.
    """
    u_weight, i_weight, u_bias, i_bias = tables
    du_weight, di_weight, du_bias, di_bias = grads
    B = batch.users.shape[0]
    scale = 2.0 / B
    loss = 0.0
    for r in range(B):
        u = batch.users[r]
        i = batch.items[r]
        err, dx = error_and_dx(logit(tables, u, i), batch.ratings[r], y_range, scale)
        loss += err * err
        for j in range(u_weight.shape[1]):
            # Read both before writing either (safe even if a caller passes one table twice).
            pu = u_weight[u, j]
            qi = i_weight[i, j]
            du_weight[u, j] += dx * qi
            di_weight[i, j] += dx * pu
        du_bias[u] += dx
        di_bias[i] += dx
    return loss / B


@njit(cache=True)
def predict(tables, users, items, y_range, out):
    """``out[r] = lo + (hi - lo) sigmoid(P[u_r] . Q[i_r] + b[u_r] + c[i_r])`` (the logit without a range)."""
    lo, hi = y_range.lo, y_range.hi
    for r in range(users.shape[0]):
        u = users[r]
        i = items[r]
        x = logit(tables, u, i)
        out[r] = lo + (hi - lo) * sigmoid(x) if y_range.has_range else x
    return out


#: ``evaluate_mse`` sums the squared errors of each run of this many rows, then the runs' sums in order,
#: so that its parallel twin (the runs on the threads) gives the same float64 total on any thread count;
#: on fewer rows it is the plain running sum.
EVAL_RUN = 1 << 16


#: ``evaluate_mse`` on tables larger than ``PREFETCH_MIN_BYTES`` asks for the rows of the rating this many
#: rows ahead: the rows of ratings in no particular order come from memory or a far cache, and the
#: loads of several ratings then overlap (at ML-25M's shape about half the time of a validation pass).
EVAL_PREFETCH_AHEAD = 12


@njit(cache=True, inline="always")
def prefetch_rows(tables, u, i):
    """Hint the CPU to load every cache line of ``P[u]``, ``Q[i]``, ``b[u]`` and ``c[i]`` (no effect on results)."""
    row_u, row_i = tables.u_weight[u], tables.i_weight[i]
    per_line = 64 // row_u.itemsize
    for j in range(0, row_u.shape[0], per_line):
        prefetch(row_u, j)
        prefetch(row_i, j)
    prefetch(row_u, row_u.shape[0] - 1)
    prefetch(row_i, row_i.shape[0] - 1)
    prefetch(tables.u_bias, u)
    prefetch(tables.i_bias, i)


@njit(cache=True, inline="always")
def _tables_bytes(tables):
    return (tables.u_weight.size + tables.u_bias.size) * tables.u_weight.itemsize + (
        tables.i_weight.size + tables.i_bias.size
    ) * tables.i_weight.itemsize


#: Rows whose logits ``evaluate_mse`` computes before their errors: the errors of a window are then one
#: loop that LLVM vectorises (:func:`exp.exp_fast`), instead of a call to the C library's ``exp`` a row.
EVAL_WINDOW = 16


@njit(cache=True, inline="always", error_model="numpy")
def _squared_errors(xs, ratings, first, m, lo, hi, has_range, out):
    """``out[j] = (pred_j - ratings[first + j])^2`` for the window's logits ``xs[:m]``: a vectorised loop,
    then :func:`sigmoid` (the C library's ``exp``) for the rare rows whose ``|x|`` lies outside
    :func:`exp.exp_in_range`. The same floats as :func:`sigmoid` a row."""
    far = 0
    for j in range(m):
        x = xs[j]
        pred = lo + (hi - lo) * (1.0 / (1.0 + exp_fast(-x))) if has_range else x
        err = pred - ratings[first + j]
        out[j] = err * err
        far += not exp_in_range(x)
    if has_range and far > 0:
        for j in range(m):
            if not exp_in_range(xs[j]):
                err = lo + (hi - lo) * sigmoid(xs[j]) - ratings[first + j]
                out[j] = err * err


def _evaluate_mse_body(tables, data, y_range):
    """Exact mean squared error over all rows of ``data`` (accumulated in float64, run by run, row by
    row; the rows' errors made :data:`EVAL_WINDOW` at a time)."""
    lo, hi, has_range = y_range
    users, items, ratings = data
    n = users.shape[0]
    n_runs = (n + EVAL_RUN - 1) // EVAL_RUN
    run_sums = np.zeros(n_runs, dtype=np.float64)
    fetch = _tables_bytes(tables) > PREFETCH_MIN_BYTES
    for run in prange(n_runs):
        xs = np.empty(EVAL_WINDOW, dtype=np.float64)
        squares = np.empty(EVAL_WINDOW, dtype=np.float64)
        total = 0.0
        end = min(n, (run + 1) * EVAL_RUN)
        for first in range(run * EVAL_RUN, end, EVAL_WINDOW):
            m = min(EVAL_WINDOW, end - first)
            for j in range(m):
                r = first + j
                if fetch and r + EVAL_PREFETCH_AHEAD < end:
                    prefetch_rows(tables, users[r + EVAL_PREFETCH_AHEAD], items[r + EVAL_PREFETCH_AHEAD])
                xs[j] = logit(tables, users[r], items[r])
            _squared_errors(xs, ratings, first, m, lo, hi, has_range, squares)
            for j in range(m):
                total += squares[j]
        run_sums[run] = total
    total = 0.0
    for run in range(n_runs):
        total += run_sums[run]
    return total / max(n, 1)


evaluate_mse = njit(cache=True)(_evaluate_mse_body)
evaluate_mse_parallel = njit(cache=True, parallel=True)(twin(_evaluate_mse_body))
