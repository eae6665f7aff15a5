"""Exact mode, every parameter updated at every step: the fastai recipe, step for step.

The NumPy twins are ``reference.loss_and_grads`` then ``reference.adam_step`` / ``sgd_step`` on every
table. The CPU backends run :mod:`.deferred` instead where it gives the same result (decoupled or no
weight decay); this kernel is the one for L2 decay and the bit-for-bit twin of the reference.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ..records import Ratings
from ._compile import HOT, twin
from .core import forward_backward, split_flat
from .updates import (
    adam_update_dense,
    adam_update_dense_inline,
    sgd_update_dense,
    sgd_update_dense_inline,
    step_scalars,
)

__all__ = ["train_epoch_dense", "train_epoch_dense_parallel"]


def _train_epoch_dense_body(params, grads, moments, shape, data, steps, hyper, y_range, out):
    """One epoch of exact-mode training (``records.Steps``: the rows, lrs and momenta of each step).

    Step ``s`` takes rows ``order[s*bs:(s+1)*bs]`` (the last partial batch is dropped) and writes its
    batch loss (before the update) to ``out.losses[s]``. ``grads`` must be zero on entry and is zero on
    exit. Returns the number of losses written: all the steps, or fewer when a loss was NaN/inf (that
    last step's update is not applied, so the weights stay those that produced it).
    """
    tables = split_flat(params, shape)
    dtables = split_flat(grads, shape)
    du_weight, di_weight, du_bias, di_bias = dtables
    order, bs = steps.order, steps.bs
    # Three arrays, wrapped in a record only at the call: a record of fresh arrays written through
    # its fields crashes Numba's parallel=True build (numba 0.68).
    bu = np.empty(bs, data.users.dtype)
    bi = np.empty(bs, data.items.dtype)
    br = np.empty(bs, data.ratings.dtype)
    n_steps = order.shape[0] // bs
    for s in range(n_steps):
        for r in range(bs):
            row = order[s * bs + r]
            bu[r] = data.users[row]
            bi[r] = data.items[row]
            br[r] = data.ratings[row]
        out.losses[s] = forward_backward(tables, Ratings(bu, bi, br), y_range, dtables)
        if not math.isfinite(out.losses[s]):
            grads[:] = 0.0
            return s + 1
        sc = step_scalars(steps.lrs[s], steps.moms[s], steps.step0 + s + 1, hyper)
        if hyper.is_adam:
            adam_update_dense(params, grads, moments.exp_avg, moments.exp_avg_sq, sc)
        else:
            sgd_update_dense(params, grads, moments.exp_avg, sc, hyper.use_mom)
        # Only the rows this batch touched hold non-zero gradients: clear just those.
        for r in range(bs):
            u = bu[r]
            i = bi[r]
            for j in range(shape.n_factors):  # a loop, not a slice: parallel=True would make a slice a parfor
                du_weight[u, j] = 0.0
                di_weight[i, j] = 0.0
            du_bias[u] = 0.0
            di_bias[i] = 0.0
        out.progress[0] = s + 1
    return n_steps


train_epoch_dense = njit(**HOT)(_train_epoch_dense_body)
# The parallel twin inlines the prange updates (see updates.py); its own loops stay serial, so its
# result equals the serial kernel's bit for bit.
train_epoch_dense_parallel = njit(parallel=True, **HOT)(
    twin(_train_epoch_dense_body, adam_update_dense=adam_update_dense_inline, sgd_update_dense=sgd_update_dense_inline)
)
