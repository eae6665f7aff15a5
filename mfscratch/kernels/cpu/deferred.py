r"""Exact mode with the untouched rows deferred: the dense result (to rounding), much cheaper.

A row absent from a batch has a zero gradient, so with decoupled weight decay (or none) its step
depends only on the step's scalars and its own state: the row keeps the count of steps it has had
(``done_u[u]``, ``done_i[i]``; its bias rides along) and its missed steps are replayed, from
registers and with no gradient read, when a batch next touches it and for every row at the end of
the epoch (or at a divergence stop). The replay's closed form and its float32 segment series with
their error bound are derived in docs/math.md ("Deferred rows"). With L2 decay an absent row's
gradient is ``wd p``, not zero: the caller runs :mod:`.dense` then.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from ._compile import HOT
from .sparse import Prefetch, batch_gradient, clear_slots, new_slots, tables2d, update_rows
from .updates import rounded, step_scalars

__all__ = ["train_epoch_deferred", "SEGMENT_SPREAD"]

#: The replay's scratch rows are padded to a multiple of this many elements: LLVM's float32 vector
#: loop on AVX-512 takes 4 registers of 16 lanes at a time (docs/speed.md, "Deferred rows").
REPLAY_PAD = 64
#: The float32 replay runs the missed steps in segments over which ``r`` stays within
#: ``1 +- SEGMENT_SPREAD`` of the segment's ``r0``; the series of 6 terms in ``r / r0 - 1`` is then exact
#: to ``SEGMENT_SPREAD^6 = 1.6e-8`` of the segment's move, under float32 rounding (docs/math.md).
SEGMENT_SPREAD = 0.05
#: A segment covers at most this many steps, so that the segments still open at a step fit a fixed
#: window of rows (with ``sqr_mom = 0.99`` a segment ends by the spread after about 20 steps).
SEGMENT_MAX_STEPS = 64


class Replay(NamedTuple):
    """The per-step scalars of the replay (float64 arrays indexed by the epoch's step) and its constants."""

    decay: np.ndarray  # d_t = 1 - lr_t wd
    step_size: np.ndarray  # a_t = lr_t / (1 - mom_t^t) for Adam, lr_t for SGD
    moms: np.ndarray  # mom_t
    inv_root_debias2: np.ndarray  # 1 / sqrt(c2_t), c2_t = 1 - sqr_mom^t
    root_sqr_mom: float
    sqr_mom: float
    eps: float


class Side(NamedTuple):
    """One side's tables (users or items): weights ``w`` and bias ``wb`` (2-D), with their moments."""

    w: np.ndarray
    m: np.ndarray
    v: np.ndarray
    wb: np.ndarray
    mb: np.ndarray
    vb: np.ndarray


class Scratch(NamedTuple):
    """The replay's scratch rows (weights and bias): ``p``, the moment ``m0`` and ``root_v0 = sqrt(v0)``."""

    p: np.ndarray
    m0: np.ndarray
    root_v0: np.ndarray


class Segments(NamedTuple):
    """The float32 replay's segments, one epoch's worth, the same for every row (docs/math.md, section 5).

    The segment that starts at step ``f`` ends before ``ends[f]``; its row of eight float64 scalars holds
    ``S_0 .. S_5`` (with ``a'_t = a_t`` times the momentum factors from ``f`` on), ``prod_decay`` and
    ``prod_mom`` over its steps. ``closed[f]`` is that row once step ``ends[f] - 1`` is taken; a segment
    still open at step ``s`` keeps its sums over ``f .. s - 1`` in ``open_[f % SEGMENT_MAX_STEPS]``.
    """

    ends: np.ndarray
    closed: np.ndarray
    open_: np.ndarray
    root_pow: np.ndarray  # sqrt(sqr_mom)^n for n = 0 .. SEGMENT_MAX_STEPS
    v_decay: np.ndarray  # sqr_mom^n for n = 0 .. n_steps: what n missed steps multiply v by


@njit(cache=True, inline="always")
def _new_segments(replay, n_steps):
    """Where each step's segment ends: the first step ``t`` with ``r_t < r_f (1 - spread) / (1 + spread)``
    (``r_t / r_f = sqrt(sqr_mom)^(t - f) sqrt(c2_f / c2_t)``), at most ``SEGMENT_MAX_STEPS`` after ``f``."""
    root_pow = np.empty(SEGMENT_MAX_STEPS + 1)
    root_pow[0] = 1.0
    for n in range(1, SEGMENT_MAX_STEPS + 1):
        root_pow[n] = root_pow[n - 1] * replay.root_sqr_mom
    low = (1.0 - SEGMENT_SPREAD) / (1.0 + SEGMENT_SPREAD)
    inv_root_debias2 = replay.inv_root_debias2
    ends = np.empty(n_steps, dtype=np.int64)
    for f in range(n_steps):
        limit = min(n_steps, f + SEGMENT_MAX_STEPS)
        r_min = low * inv_root_debias2[f]
        end = f + 1
        while end < limit and root_pow[end - f] * inv_root_debias2[end] >= r_min:
            end += 1
        ends[f] = end
    v_decay = np.empty(n_steps + 1)
    for n in range(n_steps + 1):
        v_decay[n] = replay.sqr_mom**n
    return Segments(ends, np.empty((n_steps, 8)), np.empty((SEGMENT_MAX_STEPS, 8)), root_pow, v_decay)


@njit(cache=True, inline="always")
def _advance_segments(segments, replay, s):
    """Add step ``s`` to the sums of every segment open at it (those starting in ``s - 63 .. s``)."""
    ends, closed, open_, root_pow, _ = segments
    window = open_.shape[0]
    d = replay.decay[s]
    mom = replay.moms[s]
    step_size = replay.step_size[s]
    root_c = replay.inv_root_debias2[s]
    for f in range(max(0, s - window + 1), s + 1):
        if ends[f] <= s:
            continue
        sums = open_[f % window]
        if f == s:
            sums[:6] = 0.0
            sums[6] = 1.0
            sums[7] = 1.0
        prod_mom = sums[7] * mom
        a = step_size * prod_mom
        delta = root_pow[s - f] * root_c * ((1.0 + SEGMENT_SPREAD) / replay.inv_root_debias2[f]) - 1.0
        for n in range(6):
            sums[n] = sums[n] * d + a
            a *= delta
        sums[6] *= d
        sums[7] = prod_mom
        if ends[f] == s + 1:
            closed[f, :] = sums


@njit(cache=True, inline="always")
def _adam_catch_up(side, rows, firsts, n_rows, stop, replay, scratch, segments):
    r"""Apply the missed Adam steps ``firsts[x]..stop-1`` to ``side``'s rows ``rows[x]`` (``x < n_rows``;
    weights and bias), g = 0.

    The recurrence is ``p_t = p_{t-1} d_t - m0 a'_t / (root_v0 r_t + eps)`` with ``a'_t = a_t prod_mom``
    and the row scalar ``r_t = sqrt(sqr_mom)^n / sqrt(c2_t)`` (docs/math.md, section 5). float64 tables
    run it as it stands (exact); float32 tables run it in the epoch's segments over which ``r`` stays
    within ``r0 (1 +- SEGMENT_SPREAD)``, each segment one division and a 6-term series per element
    (docs/math.md derives both and the bound). A row is copied into scratch rows padded to whole vector
    blocks (padding 0, 0, 1: it stays 0). One call catches up a list of rows because an inlined call
    binds its records' arrays with a reference count each (an atomic add): once a call, not once a row.
    """
    w, m, v, wb, mb, vb = side
    pw, m0, root_v0 = scratch
    decay, step_size, moms, inv_root_debias2, root_sqr_mom, sqr_mom, eps64 = replay
    ends, closed, open_, root_pow, v_decay = segments
    window = open_.shape[0]
    T = w.dtype.type
    k = w.shape[1]
    padded = pw.shape[0]
    eps = T(eps64)
    for x in range(n_rows):
        row = rows[x]
        first = firsts[x]
        if first >= stop:
            continue
        for j in range(k):
            pw[j] = w[row, j]
            m0[j] = m[row, j]
            root_v0[j] = math.sqrt(v[row, j])
        pw[k] = wb[row, 0]
        m0[k] = mb[row, 0]
        root_v0[k] = math.sqrt(vb[row, 0])
        prod_mom = 1.0
        root_decay_v = 1.0
        if T(0.1) == 0.1:  # float64: the exact recurrence
            for step in range(first, stop):
                prod_mom *= moms[step]
                root_decay_v *= root_sqr_mom
                d = T(decay[step])
                a = T(step_size[step] * prod_mom)
                r = T(root_decay_v * inv_root_debias2[step])
                for j in range(padded):
                    pw[j] = pw[j] * d - a * m0[j] / (root_v0[j] * r + eps)
        else:
            # The epoch's segments: one row of sums each, no work per missed step (docs/math.md).
            f = first  # root_decay_v is sqrt(sqr_mom)^(f - first) at the segment's first step f
            while f < stop:
                end = ends[f]
                table, at = (closed, f) if end <= stop else (open_, f % window)  # the last may end at stop
                end = min(end, stop)
                r0 = root_decay_v * root_sqr_mom * inv_root_debias2[f] / (1.0 + SEGMENT_SPREAD)
                r0_t, prod_decay_t = T(r0), T(table[at, 6])  # the segment's scalars, rounded to T
                e0 = T(prod_mom * table[at, 0])
                e1 = T(prod_mom * table[at, 1])
                e2 = T(prod_mom * table[at, 2])
                e3 = T(prod_mom * table[at, 3])
                e4 = T(prod_mom * table[at, 4])
                e5 = T(prod_mom * table[at, 5])
                for j in range(padded):
                    h = root_v0[j] * r0_t
                    q = T(1.0) / (h + eps)
                    neg_z = -(h * q)
                    series = ((((e5 * neg_z + e4) * neg_z + e3) * neg_z + e2) * neg_z + e1) * neg_z + e0
                    pw[j] = pw[j] * prod_decay_t - m0[j] * q * series
                prod_mom *= table[at, 7]
                root_decay_v *= root_pow[end - f]
                f = end
        m_scale = T(prod_mom)
        v_scale = T(v_decay[stop - first])
        for j in range(k):
            w[row, j] = pw[j]
            m[row, j] *= m_scale
            v[row, j] *= v_scale
        wb[row, 0] = pw[k]
        mb[row, 0] *= m_scale
        vb[row, 0] *= v_scale


@njit(cache=True, inline="always")
def _sgd_catch_up(side, rows, firsts, n_rows, stop, replay, use_mom):
    r"""Apply the missed SGD steps ``firsts[x]..stop-1`` to ``side``'s rows ``rows[x]`` (``x < n_rows``;
    weights and bias), g = 0: ``p_t = p_{t-1} d_t - lr_t m_t`` with ``m_t = mom_t m_{t-1} = m0 prod mom``
    (momentum), or ``p_t = p_{t-1} d_t`` (none: one multiply by ``prod d``).
    """
    w, m, v, wb, mb, vb = side
    decay, step_size, moms = replay.decay, replay.step_size, replay.moms
    T = w.dtype.type
    k = w.shape[1]
    for x in range(n_rows):
        row = rows[x]
        first = firsts[x]
        if first >= stop:
            continue
        if not use_mom:
            prod_decay = 1.0
            for step in range(first, stop):
                prod_decay *= decay[step]
            d = T(prod_decay)
            for j in range(k):
                w[row, j] *= d
            wb[row, 0] *= d
            continue
        prod_mom = 1.0
        for step in range(first, stop):
            prod_mom *= moms[step]
            d = T(decay[step])
            a = T(step_size[step] * prod_mom)
            for j in range(k):
                w[row, j] = w[row, j] * d - a * m[row, j]
            wb[row, 0] = wb[row, 0] * d - a * mb[row, 0]
        m_scale = T(prod_mom)
        for j in range(k):
            m[row, j] *= m_scale
        mb[row, 0] *= m_scale


@njit(cache=True, inline="always")
def _catch_up(side, rows, firsts, n_rows, stop, replay, scratch, segments, hyper):
    """Bring ``side``'s rows ``rows[:n_rows]`` from their steps ``firsts[:n_rows]`` to step ``stop`` of the epoch."""
    if hyper.is_adam:
        _adam_catch_up(side, rows, firsts, n_rows, stop, replay, scratch, segments)
    else:
        _sgd_catch_up(side, rows, firsts, n_rows, stop, replay, hyper.use_mom)


def _train_epoch_deferred_body(params, moments, shape, data, steps, hyper, y_range, out):
    r"""One epoch of exact-mode steps with untouched rows deferred: the same losses as
    :func:`train_epoch_dense` and, at the end of the epoch, its weights and moments to rounding. Step ``s``:

    1. every row the batch touches is caught up to ``s`` (its missed steps replayed);
    2. forward and backward into a compact per-batch gradient (as the sparse kernel);
    3. the dense update's arithmetic on the touched rows; their count becomes ``s + 1``.

    At the end (or at a divergence stop, before that step's update) every row is brought up to the
    last step taken. Returns the number of losses written, as :func:`train_epoch_dense`.
    """
    w2 = tables2d(params, shape)
    m2 = tables2d(moments.exp_avg, shape)
    v2 = tables2d(moments.exp_avg_sq, shape)
    users_side = Side(w2.u_weight, m2.u_weight, v2.u_weight, w2.u_bias, m2.u_bias, v2.u_bias)
    items_side = Side(w2.i_weight, m2.i_weight, v2.i_weight, w2.i_bias, m2.i_bias, v2.i_bias)
    done_u = np.zeros(shape.n_users, dtype=np.int64)  # steps each row has had
    done_i = np.zeros(shape.n_items, dtype=np.int64)
    T = params.dtype.type
    k = shape.n_factors
    order, bs = steps.order, steps.bs
    n_steps = order.shape[0] // bs
    # Per-step scalars of the replay, in float64 (rounded to T where used).
    cols = np.empty((4, n_steps))
    for s in range(n_steps):
        sc = step_scalars(steps.lrs[s], steps.moms[s], steps.step0 + s + 1, hyper)
        cols[0, s] = sc.decay
        cols[1, s] = sc.step_size if hyper.is_adam else sc.lr
        cols[2, s] = sc.beta1
        cols[3, s] = 1.0 / math.sqrt(sc.debias2) if hyper.is_adam else 1.0
    replay = Replay(cols[0], cols[1], cols[2], cols[3], math.sqrt(hyper.sqr_mom), hyper.sqr_mom, hyper.eps)
    padded = (k + 1 + REPLAY_PAD - 1) // REPLAY_PAD * REPLAY_PAD
    # padding 0, 0, 1, so that the float32 replay's 1 / (y r0 + eps) stays finite
    scratch = Scratch(np.zeros(padded, params.dtype), np.zeros(padded, params.dtype), np.ones(padded, params.dtype))
    segments = _new_segments(replay, n_steps)
    segmented = hyper.is_adam and T(0.1) != 0.1  # float32 Adam replays by segments
    slots = new_slots(shape, bs, params.dtype)
    no_prefetch = Prefetch(False, 0, 0, params, moments.exp_avg, moments.exp_avg_sq, False)
    n_done = n_steps
    diverged = False
    late_u = np.empty(bs, dtype=np.int64)  # the step's rows to catch up, and the steps they have had
    late_i = np.empty(bs, dtype=np.int64)
    late_u_done = np.empty(bs, dtype=np.int64)
    late_i_done = np.empty(bs, dtype=np.int64)
    for s in range(n_steps):
        n_late_u = n_late_i = 0
        for r in range(bs):
            row = order[s * bs + r]
            u = data.users[row]
            i = data.items[row]
            if done_u[u] < s:
                late_u[n_late_u] = u
                late_u_done[n_late_u] = done_u[u]
                n_late_u += 1
                done_u[u] = s
            if done_i[i] < s:
                late_i[n_late_i] = i
                late_i_done[n_late_i] = done_i[i]
                n_late_i += 1
                done_i[i] = s
        _catch_up(users_side, late_u, late_u_done, n_late_u, s, replay, scratch, segments, hyper)
        _catch_up(items_side, late_i, late_i_done, n_late_i, s, replay, scratch, segments, hyper)
        loss, nu, ni = batch_gradient(w2, data, order, s * bs, bs, y_range, slots, np.float64, no_prefetch)
        out.losses[s] = loss / bs
        clear_slots(slots, nu, ni)
        if not math.isfinite(out.losses[s]):
            n_done = s + 1  # diverged: stop before the update, every row caught up to step s below
            diverged = True
            break
        sc = step_scalars(steps.lrs[s], steps.moms[s], steps.step0 + s + 1, hyper)
        update_rows(w2, m2, v2, slots, nu, ni, rounded(sc, T), hyper)
        for slot in range(nu):
            done_u[slots.rows_u[slot]] = s + 1
        for slot in range(ni):
            done_i[slots.rows_i[slot]] = s + 1
        if segmented:
            _advance_segments(segments, replay, s)
        out.progress[0] = s + 1
    # End of the epoch (or divergence stop): every row to the last step taken.
    last = n_done - 1 if diverged else n_done
    _catch_up(users_side, np.arange(shape.n_users), done_u, shape.n_users, last, replay, scratch, segments, hyper)
    _catch_up(items_side, np.arange(shape.n_items), done_i, shape.n_items, last, replay, scratch, segments, hyper)
    return n_done


train_epoch_deferred = njit(**HOT)(_train_epoch_deferred_body)
