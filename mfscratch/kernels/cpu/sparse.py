r"""Sparse (lazy) mode: each step updates only the rows its batch touches.

Per step: forward and backward over the batch into a compact gradient (one slot per distinct user and
item: a row that repeats in the batch gets the sum of its contributions, as the dense gradient), then
the dense update's arithmetic on those rows only; untouched rows, moments included, stay as they are
(like ``torch.optim.SparseAdam``; not the fastai recipe). Adam's bias correction uses the global step
count ``t = step0 + s + 1``. The NumPy twins are ``reference.sparse_adam_step`` / ``sparse_sgd_step``.
The batch gradient and the row updates here also serve exact mode's deferred-rows kernel.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..records import Tables
from ._compile import HOT, twin
from ._llvm import PREFETCH_AHEAD, PREFETCH_MIN_BYTES, prefetch, prefetch_row
from .core import dot, error_and_dx, split_flat
from .updates import adam_rows, rounded, sgd_rows, step_scalars

__all__ = ["train_epoch_sparse", "train_epoch_sparse_parallel", "Slots", "Prefetch"]


class Slots(NamedTuple):
    """A batch's compact gradient: ``slot_u[u]`` is user u's slot (-1: not in the batch), ``rows_u[slot]``
    maps back, ``gu[slot]`` / ``gub[slot]`` hold its weight and bias gradient; the same for items."""

    slot_u: np.ndarray
    slot_i: np.ndarray
    rows_u: np.ndarray
    rows_i: np.ndarray
    gu: np.ndarray
    gi: np.ndarray
    gub: np.ndarray
    gib: np.ndarray


class Prefetch(NamedTuple):
    """Whether and what the batch loop prefetches ahead of each rating (``on``: tables over 8 MB)."""

    on: bool
    n_rows: int
    i_start: int
    params: np.ndarray
    exp_avg: np.ndarray
    exp_avg_sq: np.ndarray
    with_v: bool


@njit(cache=True, inline="always")
def tables2d(flat, shape):
    """The four tables of a flat buffer with the biases as ``(n, 1)``, so that one row update serves all four."""
    u_weight, i_weight, u_bias, i_bias = split_flat(flat, shape)
    return Tables(u_weight, i_weight, u_bias.reshape((shape.n_users, 1)), i_bias.reshape((shape.n_items, 1)))


@njit(cache=True, inline="always")
def new_slots(shape, bs, dtype):
    """Empty slot maps for batches of ``bs`` ratings (allocated once an epoch, per thread)."""
    k = shape.n_factors
    return Slots(
        np.full(shape.n_users, -1, dtype=np.int64),
        np.full(shape.n_items, -1, dtype=np.int64),
        np.empty(bs, dtype=np.int64),
        np.empty(bs, dtype=np.int64),
        np.empty((bs, k), dtype=dtype),
        np.empty((bs, k), dtype=dtype),
        np.empty((bs, 1), dtype=dtype),
        np.empty((bs, 1), dtype=dtype),
    )


@njit(cache=True, inline="always")
def _prefetch_ahead(fetch, data, order, pos, k):
    """Two-stage prefetch: the codes of the rating ``2 PREFETCH_AHEAD`` ahead, and the table rows (weights,
    moments) of the one ``PREFETCH_AHEAD`` ahead, whose codes are by then in cache."""
    if pos + 2 * PREFETCH_AHEAD < fetch.n_rows:
        ahead = order[pos + 2 * PREFETCH_AHEAD]
        prefetch(data.users, ahead)
        prefetch(data.items, ahead)
        prefetch(data.ratings, ahead)
    if pos + PREFETCH_AHEAD < fetch.n_rows:
        ahead = order[pos + PREFETCH_AHEAD]
        u_off = data.users[ahead] * k
        i_off = fetch.i_start + data.items[ahead] * k
        prefetch_row(fetch.params, u_off, k)
        prefetch_row(fetch.params, i_off, k)
        prefetch_row(fetch.exp_avg, u_off, k)
        prefetch_row(fetch.exp_avg, i_off, k)
        if fetch.with_v:
            prefetch_row(fetch.exp_avg_sq, u_off, k)
            prefetch_row(fetch.exp_avg_sq, i_off, k)


@njit(cache=True, inline="always")
def batch_gradient(w2, data, order, first, bs, y_range, slots, G, fetch):
    """Forward and backward of rows ``order[first:first+bs]`` into the compact gradient ``slots``.

    Returns ``(sum of squared errors, users in the batch, items in the batch)``. ``dx`` is cast to ``G``
    before it multiplies the weights: the tables' dtype in sparse mode (float32 lanes in the row loops),
    float64 in the deferred kernel (so that its gradient rounds as the dense kernel's).
    """
    u_weight, i_weight, u_bias, i_bias = w2
    slot_u, slot_i, rows_u, rows_i, gu, gi, gub, gib = slots
    k = u_weight.shape[1]
    scale = 2.0 / bs
    nu = 0
    ni = 0
    loss = 0.0
    for r in range(bs):
        pos = first + r
        if fetch.on:
            _prefetch_ahead(fetch, data, order, pos, k)
        row = order[pos]
        u = data.users[row]
        i = data.items[row]
        # The same slot claim for the user and the item, written out twice: as a shared helper
        # returning (slot, count) it measured slower (docs/speed.md, "Sparse mode").
        su = slot_u[u]
        if su < 0:
            su = nu
            slot_u[u] = su
            rows_u[su] = u
            nu += 1
            gu[su, :] = 0.0
            gub[su, 0] = 0.0
        si = slot_i[i]
        if si < 0:
            si = ni
            slot_i[i] = si
            rows_i[si] = i
            ni += 1
            gi[si, :] = 0.0
            gib[si, 0] = 0.0
        x = dot(u_weight, i_weight, u, i)
        x += u_bias[u, 0] + i_bias[i, 0]
        err, dx = error_and_dx(x, data.ratings[row], y_range, scale)
        loss += err * err
        dx_ = G(dx)
        for j in range(k):
            pu = u_weight[u, j]
            qi = i_weight[i, j]
            gu[su, j] += dx_ * qi
            gi[si, j] += dx_ * pu
        gub[su, 0] += dx
        gib[si, 0] += dx
    return loss, nu, ni


@njit(cache=True, inline="always")
def clear_slots(slots, nu, ni):
    """Mark every row of the batch as out of the next batch (the slot maps back to -1)."""
    for slot in range(nu):
        slots.slot_u[slots.rows_u[slot]] = -1
    for slot in range(ni):
        slots.slot_i[slots.rows_i[slot]] = -1


@njit(cache=True, inline="always")
def update_rows(w2, m2, v2, slots, nu, ni, r, hyper):
    """The optimiser step on the batch's rows only (weights and biases), with their compact gradient."""
    rows_u, rows_i = slots.rows_u, slots.rows_i
    if hyper.is_adam:
        adam_rows(w2.u_weight, m2.u_weight, v2.u_weight, slots.gu, rows_u, nu, r)
        adam_rows(w2.u_bias, m2.u_bias, v2.u_bias, slots.gub, rows_u, nu, r)
        adam_rows(w2.i_weight, m2.i_weight, v2.i_weight, slots.gi, rows_i, ni, r)
        adam_rows(w2.i_bias, m2.i_bias, v2.i_bias, slots.gib, rows_i, ni, r)
    else:
        sgd_rows(w2.u_weight, m2.u_weight, slots.gu, rows_u, nu, r, hyper.use_mom)
        sgd_rows(w2.u_bias, m2.u_bias, slots.gub, rows_u, nu, r, hyper.use_mom)
        sgd_rows(w2.i_weight, m2.i_weight, slots.gi, rows_i, ni, r, hyper.use_mom)
        sgd_rows(w2.i_bias, m2.i_bias, slots.gib, rows_i, ni, r, hyper.use_mom)


@njit(**HOT)
def _train_range(params, moments, shape, data, steps, hyper, y_range, out, lane, n_ranges):
    """Steps ``lane * n / n_ranges`` to ``(lane + 1) * n / n_ranges - 1`` of the epoch (``n`` steps);
    returns the first step whose loss is not finite, or ``n`` (this range's steps all done)."""
    w2 = tables2d(params, shape)
    m2 = tables2d(moments.exp_avg, shape)
    v2 = tables2d(moments.exp_avg_sq, shape)
    T = params.dtype.type
    order, bs = steps.order, steps.bs
    n_steps = order.shape[0] // bs
    on = params.size * params.itemsize > PREFETCH_MIN_BYTES  # tables in cache gain nothing from prefetching
    fetch = Prefetch(
        on, n_steps * bs, shape.n_users * shape.n_factors, params, moments.exp_avg, moments.exp_avg_sq, hyper.is_adam
    )
    slots = new_slots(shape, bs, params.dtype)
    start = lane * n_steps // n_ranges
    for s in range(start, (lane + 1) * n_steps // n_ranges):
        loss, nu, ni = batch_gradient(w2, data, order, s * bs, bs, y_range, slots, T, fetch)
        out.losses[s] = loss / bs
        clear_slots(slots, nu, ni)
        if not math.isfinite(out.losses[s]):
            return s  # diverged: stop this range before its update
        sc = step_scalars(steps.lrs[s], steps.moms[s], steps.step0 + s + 1, hyper)
        update_rows(w2, m2, v2, slots, nu, ni, rounded(sc, T), hyper)
        out.progress[lane] = s + 1 - start
    return n_steps


def _train_epoch_sparse_body(params, moments, shape, data, steps, hyper, y_range, out, n_ranges):
    r"""One epoch of sparse training; returns the number of valid losses (all, or the first non-finite + 1).

    ``n_ranges`` cuts the epoch's steps into contiguous ranges run by ``prange``, ``out.progress[c]``
    counting range ``c``'s steps. Serially (``n_ranges = 1``) this is the deterministic algorithm of the
    module docstring. In the ``parallel=True`` twin the ranges run at once on shared tables without
    locks: **Hogwild!** (Niu, Recht, Re, Wright 2011): a row may be read while another thread writes it,
    so results vary from run to run. No gradient buffer of the tables' size exists. (Each range runs
    in its own compiled function: numba 0.68 loses writes made through a record's fields inside a
    ``prange`` body.)
    """
    n_steps = steps.order.shape[0] // steps.bs
    first_bad = np.full(n_ranges, n_steps, dtype=np.int64)
    for lane in prange(n_ranges):
        first_bad[lane] = _train_range(params, moments, shape, data, steps, hyper, y_range, out, lane, n_ranges)
    bad = first_bad.min()
    return n_steps if bad == n_steps else bad + 1


train_epoch_sparse = njit(**HOT)(_train_epoch_sparse_body)
train_epoch_sparse_parallel = njit(parallel=True, **HOT)(twin(_train_epoch_sparse_body))
