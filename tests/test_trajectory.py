"""Whole training trajectories: mfscratch against a PyTorch loop written from the contract.

Both start from the same weights and see the same batches (the learner's own batch-order RNG is
copied before the fit); after 200 steps every table must agree within 1e-4 max-abs in float32.
"""

import copy

import numpy as np
import pytest
import torch

from mfscratch import SGD, Adam, CollabDataLoaders, collab_learner, schedule, torch_loop
from mfscratch.optim import resolve_opt


def synthetic_dls(n_users=120, n_items=150, n=8000, seed=0):
    rng = np.random.default_rng(seed)
    users = rng.zipf(1.6, n) % n_users
    items = rng.zipf(1.4, n) % n_items
    P, Q = rng.normal(size=(n_users, 4)), rng.normal(size=(n_items, 4))
    ratings = np.clip(np.round(3 + (P[users] * Q[items]).sum(1) * 0.7), 1, 5)
    return CollabDataLoaders.from_codes(users, items, ratings, n_users, n_items, valid_pct=0.2, seed=seed, bs=64)


CASES = {
    "adam-decoupled": (Adam, "one_cycle", dict(wd=0.1)),
    "adam-l2": (lambda: Adam(decouple_wd=False), "one_cycle", dict(wd=0.01)),
    "sgd-momentum": (lambda: SGD(mom=0.9), "one_cycle", dict(wd=0.05)),
    "sgd-constant": (SGD, "constant", dict(wd=0.0)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_trajectory_matches_pytorch(case):
    torch.set_num_threads(1)
    opt_func, sched, kw = CASES[case]
    dls = synthetic_dls()
    assert dls.n_train // dls.bs == 100  # two epochs = 200 steps
    learn = collab_learner(dls, n_factors=20, y_range=(0.5, 5.5), opt_func=opt_func, seed=3, log=None)
    start = {k: v.copy() for k, v in learn.model.tables().items()}
    rng = copy.deepcopy(learn.rng)
    opt = resolve_opt(opt_func)
    lr = 5e-3 if opt.name == "adam" else 0.5
    if sched == "one_cycle":
        learn.fit_one_cycle(2, lr, wd=kw["wd"])
        lrs, moms = schedule.one_cycle(200, lr)
    else:
        learn.fit(2, lr, wd=kw["wd"])
        lrs, moms = schedule.constant(200, lr, opt.mom)

    model = torch_loop.DotBias(start, (0.5, 5.5))
    optimizer = torch_loop.make_optimizer(model, opt.name, wd=kw["wd"], decouple_wd=opt.decouple_wd, mom=opt.mom)
    losses = []
    for epoch in range(2):
        order = rng.permutation(dls.n_train)
        sl = slice(epoch * 100, (epoch + 1) * 100)
        losses.extend(
            torch_loop.train_steps(
                model,
                optimizer,
                dls.train_users,
                dls.train_items,
                dls.train_ratings,
                order,
                64,
                lrs[sl],
                moms[sl],
                opt.name,
                kw["wd"],
                opt.decouple_wd,
                opt.uses_momentum,
            )
        )
    want = model.tables()
    for name, got in learn.model.tables().items():
        assert np.abs(got - want[name]).max() < 1e-4, (name, np.abs(got - want[name]).max())
        assert np.abs(got - start[name]).max() > 1e-3  # it did train
    np.testing.assert_allclose(learn.recorder.losses, losses, rtol=1e-4, atol=1e-5)


def test_smoothed_train_loss_and_exact_valid_loss():
    dls = synthetic_dls(seed=1)
    learn = collab_learner(dls, n_factors=8, y_range=(0.5, 5.5), seed=0, log=None)
    learn.fit_one_cycle(2, 5e-3)
    raw = np.array(learn.recorder.losses)
    avg = 0.0
    for loss in raw:
        avg = 0.98 * avg + 0.02 * loss
    assert learn.recorder.values[-1][0] == pytest.approx(avg / (1 - 0.98 ** len(raw)), rel=1e-9)
    pred = learn.model.forward(dls.valid_users, dls.valid_items).astype(np.float64)
    want = np.mean((pred - dls.valid_ratings) ** 2)
    assert learn.recorder.values[-1][1] == pytest.approx(want, rel=1e-5)
    assert learn.validate() == pytest.approx(want, rel=1e-5)
