"""The optimiser updates, compiled: fastai's Adam and SGD on the whole flat buffer or on one table row.

The NumPy twins are ``reference.adam_step`` and ``reference.sgd_step``. Every update takes a step's
:class:`~mfscratch.kernels.records.StepScalars` from :func:`step_scalars`, the one helper every
kernel uses, and rounds them to the tables' dtype first (``T = params.dtype.type``): a float32
buffer is then updated entirely in float32 and rounds exactly as NumPy does with Python-float
scalars. The two weight-decay variants share one branch-free loop: decoupled decay multiplies
``p`` by ``decay = 1 - lr wd`` and adds ``l2 = 0`` times ``p`` to ``g``; L2 decay uses ``decay = 1``
and ``l2 = wd`` (both exact no-ops where unused).
"""

from __future__ import annotations

import math

from numba import njit, prange

from .. import records
from ._compile import HOT, twin

__all__ = ["step_scalars", "rounded", "adam_update_dense", "sgd_update_dense", "adam_rows", "sgd_rows"]

#: One step's optimiser scalars (see ``records.step_scalars``, shared with the CUDA kernels).
step_scalars = njit(cache=True, inline="always", error_model="numpy")(records.step_scalars)


@njit(cache=True, inline="always")
def rounded(sc, T):
    """``sc``'s scalars rounded to the dtype ``T`` of the tables they update, as a plain tuple in the
    order of ``StepScalars`` (a named tuple cannot enter a ``parallel=True`` loop body: Numba's gufunc
    builder does not see its class)."""
    return (
        T(sc.decay),
        T(sc.l2),
        T(sc.beta1),
        T(sc.one_minus_beta1),
        T(sc.beta2),
        T(sc.one_minus_beta2),
        T(sc.step_size),
        T(sc.debias2),
        T(sc.eps),
        T(sc.lr),
    )


@njit(cache=True, inline="always")
def adam_element(p, g, m, v, r):
    """fastai's Adam on one element (``r``: :func:`rounded` scalars); returns the new ``(p, m, v)``."""
    decay, l2, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, debias2, eps, _ = r
    g = g + l2 * p
    p = p * decay
    m = beta1 * m + one_minus_beta1 * g
    v = beta2 * v + one_minus_beta2 * g * g
    return p - step_size * m / (math.sqrt(v / debias2) + eps), m, v


@njit(cache=True, inline="always")
def sgd_element(p, g, m, r, use_mom):
    """fastai's SGD on one element; returns the new ``(p, m)`` (``m`` untouched without momentum)."""
    decay, l2, beta1, _, _, _, _, _, _, lr = r
    g = g + l2 * p
    if use_mom:
        m = beta1 * m + g
        return p * decay - lr * m, m
    return p * decay - lr * g, m


def _adam_update_dense_body(params, grads, exp_avg, exp_avg_sq, sc):
    """fastai's Adam on every element of the flat buffer (``prange``: the elements are independent)."""
    r = rounded(sc, params.dtype.type)
    for j in prange(params.shape[0]):
        params[j], exp_avg[j], exp_avg_sq[j] = adam_element(params[j], grads[j], exp_avg[j], exp_avg_sq[j], r)


def _sgd_update_dense_body(params, grads, exp_avg, sc, use_mom):
    """fastai's SGD on every element; ``use_mom`` is the optimiser's ``mom != 0`` (else no buffer)."""
    r = rounded(sc, params.dtype.type)
    for j in prange(params.shape[0]):
        params[j], exp_avg[j] = sgd_element(params[j], grads[j], exp_avg[j], r, use_mom)


adam_update_dense = njit(**HOT)(_adam_update_dense_body)
sgd_update_dense = njit(**HOT)(_sgd_update_dense_body)
# A parallel dispatcher called from compiled code runs serially; the parallel dense epoch therefore
# inlines these twins (Numba IR inlining), so that their prange loops join its parallel=True build.
adam_update_dense_inline = njit(inline="always", **HOT)(twin(_adam_update_dense_body, "_inline"))
sgd_update_dense_inline = njit(inline="always", **HOT)(twin(_sgd_update_dense_body, "_inline"))


@njit(cache=True, inline="always")
def adam_rows(w, m, v, g, rows, n_rows, r):
    """Adam on the rows ``w[rows[slot]]`` with their gradients ``g[slot]``, ``slot < n_rows`` (``r``: scalars
    rounded to ``w``'s dtype). One call a table and step, not one a row: an inlined call binds each of its
    arrays with a reference count (an atomic add)."""
    for slot in range(n_rows):
        row = rows[slot]
        for j in range(w.shape[1]):
            w[row, j], m[row, j], v[row, j] = adam_element(w[row, j], g[slot, j], m[row, j], v[row, j], r)


@njit(cache=True, inline="always")
def sgd_rows(w, m, g, rows, n_rows, r, use_mom):
    """SGD (with or without momentum) on the rows ``w[rows[slot]]`` with their gradients ``g[slot]``."""
    for slot in range(n_rows):
        row = rows[slot]
        for j in range(w.shape[1]):
            w[row, j], m[row, j] = sgd_element(w[row, j], g[slot, j], m[row, j], r, use_mom)
