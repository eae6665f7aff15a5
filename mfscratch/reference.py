r"""The maths of the biased dot-product model, in plain NumPy.

This module is the readable reference: every fast kernel (``kernels/cpu/``, ``kernels/cuda/``)
is tested against these functions, and these functions are tested against PyTorch autograd.
Nothing here is used on the training hot path.

Symbols (they match the variable names below and ``docs/math.md``)
-----------------------------------------------------------------
For a batch of ``B`` ratings ``(u_r, i_r, y_r)``, ``r = 0..B-1``:

* ``u_weight`` (P, shape ``n_users x k``), ``i_weight`` (Q, ``n_items x k``),
  ``u_bias`` (b, ``n_users x 1``), ``i_bias`` (c, ``n_items x 1``).
* logit      ``x_r = sum_j P[u_r, j] Q[i_r, j] + b[u_r] + c[i_r]``
* squash     ``s_r = sigmoid(x_r) = 1 / (1 + exp(-x_r))``
* prediction ``pred_r = lo + (hi - lo) s_r``  (with ``y_range = (lo, hi)``; without it ``pred_r = x_r``)
* loss       ``L = (1/B) sum_r (pred_r - y_r)^2``

Backward (chain rule, one factor at a time):

* ``dL/dpred_r = (2/B)(pred_r - y_r)``
* ``dpred_r/dx_r = (hi - lo) s_r (1 - s_r)``   (because ``sigmoid' = s (1 - s)``; 1 without y_range)
* ``dx_r = dL/dx_r = (2/B)(pred_r - y_r)(hi - lo) s_r (1 - s_r)``
* ``dx_r/dP[u_r] = Q[i_r]``, ``dx_r/dQ[i_r] = P[u_r]``, ``dx_r/db[u_r] = dx_r/dc[i_r] = 1``

so, summed over the batch (a user or item that appears twice gets both contributions)::

    dP[u] = sum_{r: u_r = u} dx_r Q[i_r]        dQ[i] = sum_{r: i_r = i} dx_r P[u_r]
    db[u] = sum_{r: u_r = u} dx_r               dc[i] = sum_{r: i_r = i} dx_r

Rows that no rating of the batch touches get a zero gradient.

The optimiser steps (fastai's Adam and SGD, decoupled or L2 weight decay) are written out in
:func:`adam_step` and :func:`sgd_step`.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "sigmoid",
    "forward",
    "backward",
    "loss_and_grads",
    "adam_step",
    "sgd_step",
    "sparse_adam_step",
    "sparse_sgd_step",
    "TABLES",
]

#: The four parameter tables, in the order they are stored and initialised.
TABLES = ("u_weight", "i_weight", "u_bias", "i_bias")


def sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-x))``, computed without overflow for large negative ``x``."""
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def forward(u_weight, i_weight, u_bias, i_bias, users, items, y_range=None):
    """Predictions for the pairs ``(users[r], items[r])``.

    Returns ``(pred, x, s)``: the prediction, the logit ``x`` and ``s = sigmoid(x)``
    (``s`` is ``None`` without ``y_range``); ``x`` and ``s`` are what :func:`backward` needs.
    """
    x = (u_weight[users] * i_weight[items]).sum(axis=1) + u_bias[users, 0] + i_bias[items, 0]
    if y_range is None:
        return x, x, None
    lo, hi = y_range
    s = sigmoid(x)
    return lo + (hi - lo) * s, x, s


def backward(u_weight, i_weight, users, items, ratings, pred, s, y_range=None, n_users=None, n_items=None):
    """Gradients of the mean squared error with respect to the four tables.

    Returns a dict ``{'u_weight': dP, 'i_weight': dQ, 'u_bias': db, 'i_bias': dc}`` of dense arrays
    shaped like the tables. ``np.add.at`` does the scatter-add, so repeated rows accumulate.
    """
    B = len(ratings)
    n_users = u_weight.shape[0] if n_users is None else n_users
    n_items = i_weight.shape[0] if n_items is None else n_items
    dpred = (2.0 / B) * (pred - ratings)
    if y_range is None:
        dx = dpred
    else:
        lo, hi = y_range
        dx = dpred * (hi - lo) * s * (1.0 - s)
    du_weight = np.zeros_like(u_weight)
    di_weight = np.zeros_like(i_weight)
    du_bias = np.zeros((n_users, 1), dtype=u_weight.dtype)
    di_bias = np.zeros((n_items, 1), dtype=i_weight.dtype)
    np.add.at(du_weight, users, dx[:, None] * i_weight[items])
    np.add.at(di_weight, items, dx[:, None] * u_weight[users])
    np.add.at(du_bias[:, 0], users, dx)
    np.add.at(di_bias[:, 0], items, dx)
    return {"u_weight": du_weight, "i_weight": di_weight, "u_bias": du_bias, "i_bias": di_bias}


def loss_and_grads(u_weight, i_weight, u_bias, i_bias, users, items, ratings, y_range=None):
    """Mean squared error of the batch and its gradient with respect to each table."""
    pred, _, s = forward(u_weight, i_weight, u_bias, i_bias, users, items, y_range)
    loss = float(np.mean((pred - ratings) ** 2))
    return loss, backward(u_weight, i_weight, users, items, ratings, pred, s, y_range)


def adam_step(p, g, exp_avg, exp_avg_sq, step, lr, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.0, decouple_wd=True):
    r"""One step of fastai's Adam on one parameter array, in place. ``step`` is the new count ``t``.

    In order, for every element (``g`` is the gradient, ``m``/``v`` the running moments)::

        p  <- p (1 - lr wd)                       (decoupled decay; with L2 instead: g <- g + wd p)
        m  <- mom m + (1 - mom) g
        v  <- sqr_mom v + (1 - sqr_mom) g^2
        p  <- p - lr / (1 - mom^t) * m / (sqrt(v / (1 - sqr_mom^t)) + eps)

    ``mom`` is the momentum in force at this step (the one-cycle schedule moves it), so the
    debiasing term ``1 - mom^t`` uses the current value, as fastai does.
    """
    if decouple_wd:
        p *= 1.0 - lr * wd
    else:
        g = g + wd * p
    exp_avg *= mom
    exp_avg += (1.0 - mom) * g
    exp_avg_sq *= sqr_mom
    exp_avg_sq += (1.0 - sqr_mom) * g * g
    debias1 = 1.0 - mom**step
    debias2 = 1.0 - sqr_mom**step
    p -= (lr / debias1) * exp_avg / (np.sqrt(exp_avg_sq / debias2) + eps)
    return p


def sgd_step(p, g, exp_avg, lr, mom=0.0, wd=0.0, decouple_wd=True):
    r"""One step of fastai's SGD on one parameter array, in place::

        p <- p (1 - lr wd)                        (decoupled decay; with L2 instead: g <- g + wd p)
        m <- mom m + g                            (no dampening; skipped when the optimiser has mom = 0)
        p <- p - lr m

    With ``mom == 0`` this is plain SGD, ``p <- p - lr g``, and ``exp_avg`` is left alone.
    """
    if decouple_wd:
        p *= 1.0 - lr * wd
    else:
        g = g + wd * p
    if mom != 0.0:
        exp_avg *= mom
        exp_avg += g
        p -= lr * exp_avg
    else:
        p -= lr * g
    return p


def sparse_adam_step(
    p, g, exp_avg, exp_avg_sq, rows, step, lr, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.0, decouple_wd=True
):
    r"""Lazy ("sparse") Adam on one table, in place: :func:`adam_step` applied to ``p[rows]`` only.

    ``rows`` are the distinct rows the batch touched (a row that appears twice in a batch is
    updated once, with the sum of its gradients). Every other row, and its moments, is left as it
    is: no decay, no moment decay. ``step`` is the global step count ``t`` used for the bias
    correction, as in exact mode. This is sparse mode's rule (like ``torch.optim.SparseAdam``),
    not the fastai recipe.
    """
    rows = np.unique(rows)
    sub_p, sub_m, sub_v = p[rows], exp_avg[rows], exp_avg_sq[rows]
    adam_step(sub_p, g[rows], sub_m, sub_v, step, lr, mom, sqr_mom, eps, wd, decouple_wd)
    p[rows], exp_avg[rows], exp_avg_sq[rows] = sub_p, sub_m, sub_v
    return p


def sparse_sgd_step(p, g, exp_avg, rows, lr, mom=0.0, wd=0.0, decouple_wd=True):
    r"""Lazy SGD on one table, in place: :func:`sgd_step` applied to ``p[rows]`` only (see
    :func:`sparse_adam_step`); the momentum buffer of an untouched row does not decay."""
    rows = np.unique(rows)
    sub_p, sub_m = p[rows], exp_avg[rows]
    sgd_step(sub_p, g[rows], sub_m, lr, mom, wd, decouple_wd)
    p[rows], exp_avg[rows] = sub_p, sub_m
    return p
