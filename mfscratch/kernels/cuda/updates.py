"""The optimiser updates on the GPU: twins of ``kernels/cpu/updates.py``, plus the lazy (sparse) update.

One thread per parameter element in the dense updates (grid-stride loops), which also zero the
gradient they consumed: update and zeroing are one pass over the flat buffer. The lazy update touches
only the rows of the batch: a row that appears twice in the batch must move once, so the forward
pass records, for each user and item, one batch position that "owns" it (``owners.users[u] = r``;
concurrent plain stores leave exactly one of the ``r``), and the update runs one thread per
(batch position, column) and skips positions that do not own their row. The step's scalars come
from ``records.step_scalars``, compiled here as a device function (float64, as all the GPU's update
maths).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .. import records
from ._compile import cuda, device, kernel

__all__ = ["Owners", "step_scalars", "adam_update_dense", "sgd_update_dense", "mark_rows", "update_sparse"]


class Owners(NamedTuple):
    """Per user and per item (int32), the batch position that owns the row in the lazy update."""

    users: np.ndarray
    items: np.ndarray


step_scalars = device(records.step_scalars)


@device
def decayed(params, grads, j, sc, hyper):
    """Element ``j``'s ``(p, g)`` after weight decay: ``p (1 - lr wd)`` decoupled, else ``g + wd p``."""
    g = grads[j]
    p = params[j]
    if hyper.decouple_wd:
        p *= sc.decay
    else:
        g += hyper.wd * p
    return p, g


@device
def adam_element(params, grads, moments, j, sc, hyper):
    """fastai's Adam on element ``j`` (see ``reference.adam_step``); also zeroes ``grads[j]``."""
    exp_avg, exp_avg_sq = moments
    p, g = decayed(params, grads, j, sc, hyper)
    m = sc.beta1 * exp_avg[j] + sc.one_minus_beta1 * g
    v = sc.beta2 * exp_avg_sq[j] + sc.one_minus_beta2 * g * g
    exp_avg[j] = m
    exp_avg_sq[j] = v
    params[j] = p - sc.step_size * m / (math.sqrt(v / sc.debias2) + sc.eps)
    grads[j] = 0.0


@device
def sgd_element(params, grads, exp_avg, j, sc, hyper):
    """fastai's SGD on element ``j`` (see ``reference.sgd_step``); also zeroes ``grads[j]``."""
    p, g = decayed(params, grads, j, sc, hyper)
    if hyper.use_mom:
        m = sc.beta1 * exp_avg[j] + g
        exp_avg[j] = m
        params[j] = p - sc.lr * m
    else:
        params[j] = p - sc.lr * g
    grads[j] = 0.0


@device
def update_element(params, grads, moments, j, sc, hyper):
    """One optimiser step on element ``j``: Adam or SGD, chosen at run time by ``hyper.is_adam``."""
    if hyper.is_adam:
        adam_element(params, grads, moments, j, sc, hyper)
    else:
        sgd_element(params, grads, moments.exp_avg, j, sc, hyper)


@kernel
def adam_update_dense(params, grads, moments, sc, hyper):
    """fastai's Adam on every element of the flat buffer. Zeroes ``grads`` as it goes."""
    for j in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        adam_element(params, grads, moments, j, sc, hyper)


@kernel
def sgd_update_dense(params, grads, exp_avg, sc, hyper):
    """fastai's SGD on every element (momentum when ``hyper.use_mom``). Zeroes ``grads`` as it goes."""
    for j in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        sgd_element(params, grads, exp_avg, j, sc, hyper)


@kernel
def mark_rows(users, items, owners):
    """Record one owning batch position per user and item of the batch: ``owners.users[users[r]] = r``.

    The epoch kernels do this inside their forward phase; the host-loop path launches it before a
    lazy update.
    """
    r = cuda.grid(1)
    if r < users.shape[0]:
        owners.users[users[r]] = r
        owners.items[items[r]] = r


@device
def lazy_slot(n_factors, bs, idx):
    """Which (side, batch position, column) lazy-update thread ``idx`` takes: ``(side, r, c)``.

    Threads ``0 .. bs (k+1) - 1`` cover the users of the batch (side 0), the next ``bs (k+1)`` its
    items (side 1); within a side, thread ``r (k+1) + c`` takes batch position ``r``, column ``c``
    (``c == k``: the bias).
    """
    width = n_factors + 1
    side = idx // (bs * width)
    rest = idx - side * bs * width
    r = rest // width
    return side, r, rest - r * width


@device
def lazy_index(shape, u, i, owners, side, r, c):
    """Flat index of the element at ``(side, r, c)`` whose batch position ``r`` holds user ``u`` and
    item ``i``, or -1 when ``r`` does not own that row (another position with the same row does)."""
    n_users, n_items, k = shape.n_users, shape.n_items, shape.n_factors
    if side == 0:
        if owners.users[u] != r:
            return -1
        if c < k:
            return u * k + c
        return (n_users + n_items) * k + u
    if owners.items[i] != r:
        return -1
    if c < k:
        return n_users * k + i * k + c
    return (n_users + n_items) * k + n_users + i


@kernel
def update_sparse(params, grads, moments, shape, users, items, owners, sc, hyper):
    """Lazy Adam or SGD: only the rows of the batch (``users``, ``items``), each once; zeroes their gradient.

    Launch with ``2 B (k+1)`` threads; ``owners`` as written by ``mark_rows`` for this batch.
    """
    idx = cuda.grid(1)
    if idx < 2 * users.shape[0] * (shape.n_factors + 1):
        side, r, c = lazy_slot(shape.n_factors, users.shape[0], idx)
        j = lazy_index(shape, users[r], items[r], owners, side, r, c)
        if j >= 0:
            update_element(params, grads, moments, j, sc, hyper)
