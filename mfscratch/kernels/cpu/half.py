r"""Half-precision storage on the CPU: per-rating SGD whose rows are stored through fp16 or bf16 rounding.

A GPU epoch of per-rating SGD is bound by moving rows, so the CUDA kernel can store the tables as
fp16 or bf16 (half the bytes) and do the arithmetic in wider registers. This module is the CPU
emulation of that storage, for measuring its accuracy cost on real data without a GPU: the tables
stay float32 arrays, but every value written into them is first rounded to the nearest value of the
storage format (round to nearest, ties to even, as the GPU's conversions do), so the float32 buffer
only ever holds fp16 (or bf16) values. Reading such a value back is exact, so the arithmetic is the
float32 arithmetic of ``per_rating.py``; only the stores round.

``storage`` is one of :data:`FP32` (no rounding: plain per-rating SGD), :data:`FP16` (IEEE binary16:
11 significant bits, largest finite 65504, subnormals down to 2^-24) or :data:`BF16` (bfloat16: 8
significant bits, float32's exponent range). Values beyond the largest finite become inf, as a
conversion does.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._compile import HOT
from .core import split_flat
from .per_rating import rating_error

__all__ = ["FP32", "FP16", "BF16", "STORAGE_CODES", "round_to_storage", "round_params", "train_epoch_per_rating_half"]

#: Storage codes (the kernels take an int): float32 (no rounding), IEEE fp16, bfloat16.
FP32, FP16, BF16 = 0, 1, 2
#: The storage names users give, and their codes.
STORAGE_CODES = {"fp32": FP32, "fp16": FP16, "bf16": BF16}

_FP16_MAX = 65504.0
_BF16_MAX = 3.3895313892515355e38  # (2 - 2^-7) 2^127


@njit(cache=True, inline="always")
def round_to_storage(x, storage):
    """``x`` rounded to the nearest value of ``storage`` (ties to even), as a float64.

    With ``x = m 2^e`` (``0.5 <= |m| < 1``, ``math.frexp``) a format of ``p`` significant bits has the
    spacing ``2^(e - p)`` there, never below its smallest subnormal: ``x`` scaled by the spacing,
    rounded to an integer (``np.rint``: ties to even) and scaled back. Every step is exact in float64.
    """
    if storage == FP16:
        bits, min_exp, largest = 11, -24, _FP16_MAX
    elif storage == BF16:
        bits, min_exp, largest = 8, -133, _BF16_MAX
    else:
        return float(x)
    v = float(x)
    if v == 0.0 or not math.isfinite(v):
        return v
    _, e = math.frexp(v)
    q = max(e - bits, min_exp)
    r = math.ldexp(np.rint(math.ldexp(v, -q)), q)
    if abs(r) > largest:
        return math.copysign(math.inf, v)
    return r


@njit(cache=True)
def round_params(params, storage):
    """Round every element of ``params`` in place to ``storage`` (idempotent: stored values stay)."""
    if storage == FP32:
        return
    for j in range(params.shape[0]):
        params[j] = round_to_storage(params[j], storage)


@njit(**HOT)
def train_epoch_per_rating_half(params, shape, data, layout, lrs, wd, y_range, out, storage):
    r"""One epoch of per-rating SGD (``per_rating.train_epoch_per_rating``) storing rows as ``storage``.

    The same records, order, stopping rule and return value as the per-rating kernel (the strata of a
    ``layout`` with ``n_groups > 1`` run in turn, one thread). First rounds the whole buffer to
    ``storage`` (a fresh model's float32 weights are not fp16 values yet); then each rating computes
    in the tables' dtype, from the old rows, and rounds what it stores:

    ``P[u] <- round(P[u] shrink - lr dx Q[i])``,   ``Q[i] <- round(Q[i] shrink - lr dx P[u])``, and the
    biases alike. The dot product is a plain left-to-right sum in the tables' dtype.
    """
    round_params(params, storage)
    u_weight, i_weight, u_bias, i_bias = split_flat(params, shape)
    users, items, ratings = data
    order, block_start, g = layout
    losses, progress = out
    lo_, hi_, has_range = y_range
    T = params.dtype.type
    k = shape.n_factors
    in_order = order.shape[0] == 0
    n_steps = users.shape[0] if in_order else order.shape[0]
    per_step_lr = lrs.shape[0] > 1
    record = losses.shape[0] > 0
    lo, span, one, two = T(lo_), T(hi_ - lo_), T(1.0), T(2.0)
    first_bad = n_steps
    for t in range(g):
        for c in range(g):
            for s in range(block_start[t * g + c], block_start[t * g + c + 1]):
                row = s if in_order else order[s]
                u = users[row]
                i = items[row]
                x = T(0.0)
                for j in range(k):
                    x += u_weight[u, j] * i_weight[i, j]
                x = x + u_bias[u] + i_bias[i]
                err, dx = rating_error(x, ratings[row], lo, span, has_range, one, two)
                loss = err * err
                if record:
                    losses[s] = loss
                if not math.isfinite(loss):
                    first_bad = min(first_bad, s)  # diverged: stop before this rating's update
                    break
                lr = lrs[s] if per_step_lr else lrs[0]
                shrink = T(1.0 - lr * wd)
                step = T(lr) * dx
                for j in range(k):
                    pu = u_weight[u, j]
                    qi = i_weight[i, j]
                    u_weight[u, j] = round_to_storage(pu * shrink - step * qi, storage)
                    i_weight[i, j] = round_to_storage(qi * shrink - step * pu, storage)
                u_bias[u] = round_to_storage(u_bias[u] * shrink - step, storage)
                i_bias[i] = round_to_storage(i_bias[i] * shrink - step, storage)
        if first_bad < n_steps:
            break
        progress[0] = block_start[(t + 1) * g]
    return n_steps if first_bad == n_steps else first_bad + 1
