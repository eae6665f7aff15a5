"""Exact mode with deferred rows (``cpu.train_epoch_deferred``) against the dense exact-mode kernel.

Deferring an untouched row's steps changes only the rounding: after every epoch the weights, the
moments and the losses must equal the dense kernel's (float64: to ~1e-10 relative; float32: to a
few ulps). Correctness only; the timings are in docs/speed.md.
"""
from __future__ import annotations

import numpy as np
import pytest

from mfscratch import SGD, Adam, collab_learner
from mfscratch.backends import CpuBackend
from mfscratch.kernels import cpu
from mfscratch.synthetic import synthetic_dataloaders

N_USERS, N_ITEMS, K = 13, 17, 5
OPTS = {"adam": (True, True), "sgd-momentum": (False, True), "sgd": (False, False)}


def _two_epochs(deferred, dtype, opt, wd=0.1, has_range=True, lr=1e-2, bs=16, n=400, seed=0):
    """Two epochs (the second carrying step0) from the same state; returns params, moments, step counts, losses."""
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
        common = (N_USERS, N_ITEMS, K, users, items, ratings, order, bs, lrs, moms, 3 + epoch * n_steps,
                  is_adam, use_mom, 0.99, 1e-5, wd, True, 0.0, 5.5 if has_range else 1.0, has_range, out)
        if deferred:
            n_done = cpu.train_epoch_deferred(params, m, v, *common)
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


@pytest.mark.parametrize("opt_func, deferrable", [(Adam, True), (SGD, True), (lambda: SGD(mom=0.9), True),
                                                   (lambda: Adam(decouple_wd=False), False)])
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
def test_trajectory_matches_pytorch_with_deferred_rows(case, monkeypatch):
    """The PyTorch trajectory test (200 steps, 1e-4) with exact mode running the deferred kernel."""
    from test_trajectory import test_trajectory_matches_pytorch

    monkeypatch.setattr(CpuBackend, "defer_rows", True)
    test_trajectory_matches_pytorch(case)
