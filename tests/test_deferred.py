"""Exact mode with deferred rows (``cpu.train_epoch_deferred``) against the dense exact-mode kernel.

Deferring an untouched row's steps changes only the rounding: after every epoch the weights, the
moments and the losses must equal the dense kernel's (float64: to ~1e-10 relative; float32: to a
few ulps). And the rounding must not depend on how an epoch is cut into calls: chunked and whole
epochs agree bit for bit. Correctness only; the timings are in docs/speed.md.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mfscratch import SGD, Adam, collab_learner
from mfscratch.backends import CpuBackend
from mfscratch.kernels import cpu
from mfscratch.model import EmbeddingDotBias
from mfscratch.optim import OptState, resolve_opt
from mfscratch.synthetic import synthetic_dataloaders

N_USERS, N_ITEMS, K = 13, 17, 5
OPTS = {"adam": (True, True), "sgd-momentum": (False, True), "sgd": (False, False)}


def _deferred_epoch(params, m, v, *common, cuts=()):
    """One epoch through ``cpu.train_epoch_deferred``, as one call or cut into calls before the steps in ``cuts``.

    The caller-owned deferred state (per-row step counts, replay scalars) is made here, as the
    backend does; only the last call (or a divergence stop) flushes. Returns the steps done.
    """
    (n_users, n_items, k, users, items, ratings, order, bs, lrs, moms, step0, *hyper, losses) = common
    n_steps = order.shape[0] // bs
    done_u, done_i = np.zeros(n_users, dtype=np.int64), np.zeros(n_items, dtype=np.int64)
    replay = np.empty((4, n_steps))
    bounds = [0, *cuts, n_steps]
    n_done = 0
    for a, b in zip(bounds[:-1], bounds[1:]):
        got = cpu.train_epoch_deferred(
            params,
            m,
            v,
            n_users,
            n_items,
            k,
            users,
            items,
            ratings,
            order[a * bs : b * bs],
            bs,
            lrs[a:b],
            moms[a:b],
            step0 + a,
            *hyper,
            losses[a:b],
            done_u,
            done_i,
            replay,
            step0,
            b == n_steps,
        )
        n_done += got
        if got < b - a or (got and not np.isfinite(losses[a + got - 1])):
            break
    return n_done


def _two_epochs(deferred, dtype, opt, wd=0.1, has_range=True, lr=1e-2, bs=16, n=400, seed=0, cuts=()):
    """Two epochs (the second carrying step0) from the same state; returns params, moments, step counts, losses.

    ``cuts``: with ``deferred``, each epoch runs as calls cut before these steps (see ``_deferred_epoch``).
    """
    is_adam, use_mom = OPTS[opt]
    rng = np.random.default_rng(seed)
    users = rng.integers(0, N_USERS, n).astype(np.int32)
    items = rng.integers(0, N_ITEMS, n).astype(np.int32)
    ratings = rng.integers(1, 6, n).astype(np.float32)
    params = (rng.standard_normal((N_USERS + N_ITEMS) * (K + 1)) * 0.3).astype(dtype)
    m = (rng.standard_normal(params.size) * 0.01).astype(dtype)  # moments from earlier epochs
    v = (rng.random(params.size) * 0.01).astype(dtype)
    n_steps = n // bs
    done, losses = [], []
    for epoch in range(2):
        order = rng.permutation(n).astype(np.int64)
        lrs = np.linspace(lr, lr / 3, n_steps)
        moms = np.linspace(0.95, 0.85, n_steps)
        out = np.empty(n_steps)
        common = (
            N_USERS,
            N_ITEMS,
            K,
            users,
            items,
            ratings,
            order,
            bs,
            lrs,
            moms,
            3 + epoch * n_steps,
            is_adam,
            use_mom,
            0.99,
            1e-5,
            wd,
            True,
            0.0,
            5.5 if has_range else 1.0,
            has_range,
            out,
        )
        if deferred:
            n_done = _deferred_epoch(params, m, v, *common, cuts=cuts)
        else:
            n_done = cpu.train_epoch_dense(params, np.zeros_like(params), m, v, *common)
        done.append(n_done)
        losses.append(out[:n_done].copy())
    return params, m, v, done, losses


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 2e-6)])
@pytest.mark.parametrize("has_range", [True, False])
@pytest.mark.parametrize("wd", [0.1, 0.0])
@pytest.mark.parametrize("opt", list(OPTS))
def test_deferred_equals_dense(opt, wd, has_range, dtype, rtol):
    dense = _two_epochs(False, dtype, opt, wd, has_range)
    deferred = _two_epochs(True, dtype, opt, wd, has_range)
    for want, got in zip(dense[:3], deferred[:3]):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())
    assert deferred[3] == dense[3] == [25, 25]
    for want, got in zip(dense[4], deferred[4]):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=0)


@pytest.mark.parametrize("opt", list(OPTS))
def test_deferred_divergence_stops_where_dense_does(opt):
    """A learning rate that blows up: the same number of steps, the same weights at the stop."""
    with np.errstate(all="ignore"):
        dense = _two_epochs(False, np.float64, opt, lr=1e6 if opt == "adam" else 1e4, has_range=False)
        deferred = _two_epochs(True, np.float64, opt, lr=1e6 if opt == "adam" else 1e4, has_range=False)
    assert dense[3][0] < 25 and deferred[3] == dense[3]
    for want, got in zip(dense[:3], deferred[:3]):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=0, equal_nan=True)


# Cuts of a 25-step epoch: a progress bar's even chunks, and uneven ones (single steps, an empty call).
CUTS = [tuple(range(2, 25, 2)), (1, 2, 3, 10, 10, 24)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("has_range", [True, False])
@pytest.mark.parametrize("opt", list(OPTS))
def test_chunked_epoch_equals_whole_epoch_bit_for_bit(opt, has_range, dtype):
    """An epoch cut into calls (step0 advancing, the deferred state kept) gives the very same floats."""
    whole = _two_epochs(True, dtype, opt, has_range=has_range)
    for cuts in CUTS:
        chunked = _two_epochs(True, dtype, opt, has_range=has_range, cuts=cuts)
        for want, got in zip(whole[:3], chunked[:3]):
            np.testing.assert_array_equal(got, want)
        assert chunked[3] == whole[3] == [25, 25]
        for want, got in zip(whole[4], chunked[4]):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("opt", list(OPTS))
def test_chunked_divergence_stops_where_whole_epoch_does(opt):
    """A divergence stop inside a call that does not end the epoch still flushes every row."""
    kw = dict(lr=1e6 if opt == "adam" else 1e4, has_range=False)
    with np.errstate(all="ignore"):
        whole = _two_epochs(True, np.float64, opt, **kw)
        chunked = _two_epochs(True, np.float64, opt, cuts=tuple(range(1, 25)), **kw)
    assert whole[3][0] < 25 and chunked[3] == whole[3]
    for want, got in zip(whole[:3], chunked[:3]):
        np.testing.assert_array_equal(got, want)


def _fit(opt_func, dtype, progress, backend="cpu", wd=0.1):
    dls = synthetic_dataloaders(n_ratings=3000, n_users=60, n_items=80, bs=16, seed=0)
    learn = collab_learner(dls, n_factors=8, y_range=(0.5, 5.5), opt_func=opt_func, seed=0, log=None, backend=backend)
    if dtype != np.float32:
        m = learn.model
        learn.model = EmbeddingDotBias(m.n_factors, m.n_users, m.n_items, m.y_range, params=m.params.astype(dtype))
        learn.opt_state = OptState.zeros_like(learn.model.params)
    learn.progress = progress
    learn.fit_one_cycle(2, 5e-3 if resolve_opt(opt_func).name == "adam" else 0.1, wd=wd)
    rec = learn.recorder
    return learn.model.params, learn.opt_state.exp_avg, learn.opt_state.exp_avg_sq, rec.losses, rec.values


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("opt_func", [Adam, lambda: SGD(mom=0.9)], ids=["adam", "sgd-momentum"])
def test_progress_bar_chunks_leave_the_deferred_fit_unchanged(opt_func, dtype, monkeypatch, capsys):
    """Through the learner (default backend, deferred rows): the bar's ~100 calls an epoch change no bit."""
    calls = []
    kernel = cpu.train_epoch_deferred
    monkeypatch.setattr(cpu, "train_epoch_deferred", lambda *a: calls.append(a[-1]) or kernel(*a))
    whole = _fit(opt_func, dtype, progress=False)
    assert calls == [True, True]  # one flushing call an epoch
    calls.clear()
    chunked = _fit(opt_func, dtype, progress=True)
    assert len(calls) > 100 and calls.count(True) == 2
    assert "epoch 2/2" in capsys.readouterr().err
    for want, got in zip(whole[:3], chunked[:3]):
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, want)
    assert chunked[3] == whole[3] and chunked[4] == whole[4]


def test_open_epoch_is_flushed_before_anything_reads_the_weights():
    """``evaluate``/``sync``/``bind`` after a call with ``flush=False`` see every row up to date."""
    dls = synthetic_dataloaders(n_ratings=3000, n_users=60, n_items=80, bs=16, seed=0)
    valid = (dls.valid_users, dls.valid_items, dls.valid_ratings)
    order = np.random.default_rng(1).permutation(dls.n_train)[: 40 * dls.bs]
    lrs, moms = np.full(40, 5e-3), np.full(40, 0.9)
    results = []
    for reader in (None, "evaluate", "sync", "bind"):
        learn = collab_learner(dls, n_factors=8, y_range=(0.5, 5.5), seed=0, log=None)
        b = learn.backend
        b.bind(learn.model, learn.opt_state, dls)
        b.train_epoch(order, lrs, moms, dataclasses.replace(learn.opt, wd=0.1), False, 0, flush=reader is None)
        assert (b._pending is None) == (reader is None)
        if reader == "evaluate":
            b.evaluate(*valid)
        elif reader == "sync":
            b.sync()
        elif reader == "bind":
            b.bind(learn.model, learn.opt_state, dls)
        assert b._pending is None
        results.append((learn.model.params.copy(), learn.opt_state.exp_avg.copy(), b.evaluate(*valid)))
    for got in results[1:]:
        np.testing.assert_array_equal(got[0], results[0][0])
        np.testing.assert_array_equal(got[1], results[0][1])
        assert got[2] == results[0][2]


@pytest.mark.parametrize(
    "opt_func, deferrable",
    [(Adam, True), (SGD, True), (lambda: SGD(mom=0.9), True), (lambda: Adam(decouple_wd=False), False)],
)
def test_backend_defers_only_without_l2_decay(opt_func, deferrable, monkeypatch):
    """Through the learner: defer_rows on and off give the same fit (L2 decay always runs dense)."""
    calls = []
    kernel = cpu.train_epoch_deferred
    monkeypatch.setattr(cpu, "train_epoch_deferred", lambda *a: calls.append(1) or kernel(*a))
    fits = []
    for defer in (True, False):
        monkeypatch.setattr(CpuBackend, "defer_rows", defer)
        dls = synthetic_dataloaders(n_ratings=3000, n_users=60, n_items=80, bs=32, seed=0)
        learn = collab_learner(dls, n_factors=8, y_range=(0.5, 5.5), opt_func=opt_func, seed=0, log=None)
        learn.fit_one_cycle(2, 5e-3, wd=0.1)
        fits.append(learn.model.params.copy())
    assert len(calls) == (2 if deferrable else 0)
    np.testing.assert_allclose(fits[0], fits[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("case", ["adam-decoupled", "sgd-momentum", "sgd-constant"])
def test_trajectory_matches_pytorch_with_the_dense_kernel(case, monkeypatch):
    """The PyTorch trajectory test (200 steps, 1e-4) with ``defer_rows = False`` (the default defers)."""
    from test_trajectory import test_trajectory_matches_pytorch

    monkeypatch.setattr(CpuBackend, "defer_rows", False)
    test_trajectory_matches_pytorch(case)


@pytest.mark.parametrize("step0", [0, 5000])
def test_float32_segment_replay_is_as_close_to_float64_as_dense(step0):
    """Long gaps (skewed rows, 400 steps): the float32 series replay rounds no worse than the dense loop."""
    rng = np.random.default_rng(5)
    n_users, n_items, k, bs, n = 150, 200, 6, 8, 3200
    users = (rng.zipf(1.5, n) % n_users).astype(np.int32)
    items = (rng.zipf(1.3, n) % n_items).astype(np.int32)
    ratings = rng.integers(1, 6, n).astype(np.float32)
    params = rng.standard_normal((n_users + n_items) * (k + 1)) * 0.3
    m0, v0 = rng.standard_normal(params.size) * 1e-3, rng.random(params.size) * 1e-5
    order = rng.permutation(n).astype(np.int64)
    lrs, moms = np.linspace(5e-3, 1e-4, n // bs), np.linspace(0.85, 0.95, n // bs)
    runs = {}
    for name, dtype in (("dense64", np.float64), ("dense32", np.float32), ("deferred32", np.float32)):
        p, m, v = (a.astype(dtype) for a in (params, m0, v0))
        common = (
            n_users,
            n_items,
            k,
            users,
            items,
            ratings,
            order,
            bs,
            lrs,
            moms,
            step0,
            True,
            True,
            0.99,
            1e-5,
            0.1,
            True,
            0.0,
            5.5,
            True,
            np.empty(n // bs),
        )
        if name.startswith("dense"):
            cpu.train_epoch_dense(p, np.zeros_like(p), m, v, *common)
        else:
            _deferred_epoch(p, m, v, *common)
        runs[name] = p.astype(np.float64)
    dense_err = np.abs(runs["dense32"] - runs["dense64"]).max()
    deferred_err = np.abs(runs["deferred32"] - runs["dense64"]).max()
    assert 0 < dense_err < 1e-5 and deferred_err < 2 * dense_err
