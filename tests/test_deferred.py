"""Exact mode with deferred rows (``kernels.cpu.deferred``) against the dense exact-mode kernel.

Deferring an untouched row's steps changes only the rounding: after every epoch the weights, the
moments and the losses must equal the dense kernel's (float64: to ~1e-10 relative; float32: to a
few ulps). Correctness only; the timings are in docs/speed.md.
"""

from __future__ import annotations

import numpy as np
import pytest
from kernel_problem import N_ITEMS, N_USERS, NO_RANGE, RANGE, SHAPE, run_epoch

from mfscratch import SGD, Adam, collab_learner
from mfscratch.backends import CpuBackend
from mfscratch.kernels import cpu
from mfscratch.kernels.records import EpochOut, Hyper, Moments, Ratings, Shape, Steps, YRange
from mfscratch.model import EmbeddingDotBias
from mfscratch.optim import OptState, resolve_opt
from mfscratch.synthetic import synthetic_dataloaders

OPTS = {"adam": (True, True), "sgd-momentum": (False, True), "sgd": (False, False)}


def _two_epochs(kind, dtype, opt, wd=0.1, has_range=True, lr=1e-2, bs=16, n=400, seed=0):
    """Two epochs (the second carrying step0) from the same state; returns params, moments, step counts, losses."""
    is_adam, use_mom = OPTS[opt]
    rng = np.random.default_rng(seed)
    data = Ratings(
        rng.integers(0, N_USERS, n).astype(np.int32),
        rng.integers(0, N_ITEMS, n).astype(np.int32),
        rng.integers(1, 6, n).astype(np.float32),
    )
    params = (rng.standard_normal(EmbeddingDotBias.n_params_for(*SHAPE)) * 0.3).astype(dtype)
    m = (rng.standard_normal(params.size) * 0.01).astype(dtype)  # moments from earlier epochs
    v = (rng.random(params.size) * 0.01).astype(dtype)
    n_steps = n // bs
    done, losses = [], []
    hyper = Hyper(is_adam, use_mom, 0.99, 1e-5, wd, True)
    for epoch in range(2):
        order = rng.permutation(n).astype(np.int64)
        params, m, v, out = run_epoch(
            kind, params, data, order, bs, hyper, RANGE if has_range else NO_RANGE, lr, 3 + epoch * n_steps, (m, v)
        )
        done.append(len(out))
        losses.append(out)
    return params, m, v, done, losses


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 2e-6)])
@pytest.mark.parametrize("has_range", [True, False])
@pytest.mark.parametrize("wd", [0.1, 0.0])
@pytest.mark.parametrize("opt", list(OPTS))
def test_deferred_equals_dense(opt, wd, has_range, dtype, rtol):
    dense = _two_epochs("dense", dtype, opt, wd, has_range)
    deferred = _two_epochs("deferred", dtype, opt, wd, has_range)
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
        dense = _two_epochs("dense", np.float64, opt, lr=1e6 if opt == "adam" else 1e4, has_range=False)
        deferred = _two_epochs("deferred", np.float64, opt, lr=1e6 if opt == "adam" else 1e4, has_range=False)
    assert dense[3][0] < 25 and deferred[3] == dense[3]
    for want, got in zip(dense[:3], deferred[:3]):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=0, equal_nan=True)


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
def test_progress_bar_leaves_the_deferred_fit_unchanged(opt_func, dtype, monkeypatch, capsys):
    """Through the learner (default backend, deferred rows): one kernel call an epoch, with or without
    the bar (a thread polls the kernel's step counter), the same floats."""
    calls = []
    kernel = cpu.train_epoch_deferred
    monkeypatch.setattr(cpu, "train_epoch_deferred", lambda *a: calls.append(a[4].step0) or kernel(*a))
    whole = _fit(opt_func, dtype, progress=False)
    assert len(calls) == 2  # one call an epoch
    barred = _fit(opt_func, dtype, progress=True)
    assert len(calls) == 4
    assert "epoch 2/2" in capsys.readouterr().err
    for want, got in zip(whole[:3], barred[:3]):
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, want)
    assert barred[3] == whole[3] and barred[4] == whole[4]


def test_the_step_counter_reaches_every_step():
    """``out.progress`` (what the bar polls) ends at the number of steps done."""
    rng = np.random.default_rng(0)
    data = Ratings(
        rng.integers(0, N_USERS, 160).astype(np.int32),
        rng.integers(0, N_ITEMS, 160).astype(np.int32),
        rng.integers(1, 6, 160).astype(np.float32),
    )
    params = np.zeros(EmbeddingDotBias.n_params_for(*SHAPE), dtype=np.float32)
    out = EpochOut(np.empty(10), np.zeros(1, dtype=np.int64))
    steps = Steps(np.arange(160, dtype=np.int64), 16, np.full(10, 1e-3), np.full(10, 0.9), 0)
    moments = Moments(np.zeros_like(params), np.zeros_like(params))
    hyper = Hyper(True, True, 0.99, 1e-5, 0.1, True)
    assert cpu.train_epoch_deferred(params, moments, SHAPE, data, steps, hyper, YRange(0.0, 5.5, True), out) == 10
    assert out.progress[0] == 10


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


@pytest.mark.parametrize("sqr_mom", [0.99, 0.9999])
@pytest.mark.parametrize("step0", [0, 5000])
def test_float32_segment_replay_is_as_close_to_float64_as_dense(step0, sqr_mom):
    """Long gaps (skewed rows, 400 steps): the float32 series replay rounds no worse than the dense loop.

    With ``sqr_mom = 0.9999`` ``r`` falls so slowly that every segment ends at ``SEGMENT_MAX_STEPS`` (64):
    the open segments' window of the epoch's table wraps around many times."""
    rng = np.random.default_rng(5)
    n_users, n_items, k, bs, n = 150, 200, 6, 8, 3200
    shape = Shape(n_users, n_items, k)
    data = Ratings(
        (rng.zipf(1.5, n) % n_users).astype(np.int32),
        (rng.zipf(1.3, n) % n_items).astype(np.int32),
        rng.integers(1, 6, n).astype(np.float32),
    )
    params = rng.standard_normal((n_users + n_items) * (k + 1)) * 0.3
    m0, v0 = rng.standard_normal(params.size) * 1e-3, rng.random(params.size) * 1e-5
    order = rng.permutation(n).astype(np.int64)
    steps = Steps(order, bs, np.linspace(5e-3, 1e-4, n // bs), np.linspace(0.85, 0.95, n // bs), step0)
    hyper = Hyper(True, True, sqr_mom, 1e-5, 0.1, True)
    runs = {}
    for name, dtype in (("dense64", np.float64), ("dense32", np.float32), ("deferred32", np.float32)):
        p, m, v = (a.astype(dtype) for a in (params, m0, v0))
        out = EpochOut(np.empty(n // bs), np.zeros(1, dtype=np.int64))
        if name.startswith("dense"):
            cpu.train_epoch_dense(p, np.zeros_like(p), Moments(m, v), shape, data, steps, hyper, RANGE, out)
        else:
            cpu.train_epoch_deferred(p, Moments(m, v), shape, data, steps, hyper, RANGE, out)
        runs[name] = p.astype(np.float64)
    dense_err = np.abs(runs["dense32"] - runs["dense64"]).max()
    deferred_err = np.abs(runs["deferred32"] - runs["dense64"]).max()
    assert 0 < dense_err < 1e-5 and deferred_err < 2 * dense_err
