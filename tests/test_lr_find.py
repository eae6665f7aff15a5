"""learn.lr_find(): fastai's exponential sweep and stopping rule, its suggestions, and a learner left untouched."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from conftest import make_ratings

from mfscratch import SGD, CollabDataLoaders, collab_learner
from mfscratch.lr_find import SMOOTH_BETA, _smoothed_until_divergence, minimum, steep, valley


@pytest.fixture(scope="module")
def dls():
    return CollabDataLoaders.from_df(make_ratings(n_users=40, n_items=50, n_ratings=1500), seed=0, bs=16)


def state(learn):
    s = learn.opt_state
    return (
        learn.model.params.copy(),
        s.exp_avg.copy(),
        s.exp_avg_sq.copy(),
        s.step,
        copy.deepcopy(learn.rng.bit_generator.state),
        [list(v) for v in learn.recorder.values],
        list(learn.recorder.losses),
        list(learn.after_epoch),
    )


def assert_same(a, b):
    for x, y in zip(a, b):
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y)
        else:
            assert x == y


def test_lr_find_leaves_the_learner_as_it_was(dls):
    learn = collab_learner(dls, n_factors=8, y_range=(0, 5.5), seed=0, log=None)
    learn.fit_one_cycle(1, 5e-3)
    before = state(learn)
    suggestion = learn.lr_find(show_plot=False)
    assert_same(before, state(learn))
    assert 1e-7 < suggestion.valley < 10 and suggestion._fields == ("valley",)
    # ... and the next fit is the one it would have been without lr_find.
    twin = collab_learner(dls, n_factors=8, y_range=(0, 5.5), seed=0, log=None)
    twin.fit_one_cycle(1, 5e-3)
    for learner in (learn, twin):
        learner.fit(1, 1e-3)
    np.testing.assert_array_equal(learn.model.params, twin.model.params)


def test_exponential_rates_and_the_4x_stop(dls):
    learn = collab_learner(dls, n_factors=8, y_range=(0, 5.5), seed=0, log=None)
    learn.lr_find(start_lr=1e-6, end_lr=1.0, num_it=50, stop_div=False, show_plot=False)
    found = learn.lr_finder
    np.testing.assert_allclose(found.lrs, 1e-6 * (1e6) ** (np.arange(50) / 50))
    assert len(found.losses) == 50
    sgd = collab_learner(dls, n_factors=8, opt_func=SGD, seed=0, log=None)  # no y_range: the loss explodes
    sgd.lr_find(end_lr=1e3, show_plot=False)
    losses = sgd.lr_finder.losses
    assert len(losses) < 100 and not losses[-1] <= 4 * min(losses)
    assert all(v <= 4 * min(losses[: i + 1]) for i, v in enumerate(losses[:-1]))


def test_smoothing_is_fastais_debiased_average():
    raw = np.array([3.0, 1.0, 2.0, 0.5, 50.0, 1.0])
    avg, want = 0.0, []
    for i, v in enumerate(raw):
        avg = SMOOTH_BETA * avg + (1 - SMOOTH_BETA) * v
        want.append(avg / (1 - SMOOTH_BETA ** (i + 1)))
    assert _smoothed_until_divergence(raw, stop_div=False) == pytest.approx(want)
    assert len(_smoothed_until_divergence(np.array([1.0, 1.0, 1e4, 1.0]), stop_div=True)) == 3


def test_suggestion_functions_match_fastai():
    lrs = np.logspace(-6, 0, 30)
    losses = np.r_[np.full(5, 2.0), np.linspace(2.0, 0.5, 15), np.linspace(0.5, 3.0, 10)]
    losses[12:20] -= 0.3  # the steepest step of the fall: from index 11 to 12
    # The longest falling stretch is indices 5..19 (fastai's lds counts it from 4); 4 + int(15/3) + int(5/2) = 11.
    lr, (point_lr, point_loss) = valley(lrs, losses, 30)
    assert lr == point_lr == lrs[11] and point_loss == losses[11]
    assert minimum(lrs, losses, 30)[0] == pytest.approx(lrs[19] / 10)
    assert steep(lrs, losses, 30)[0] == lrs[11]


@pytest.mark.parametrize(
    "settings", [{"backend": "parallel"}, {"sparse": True}, {"sparse": True, "opt_func": SGD, "bs": 1}]
)
def test_lr_find_runs_in_every_mode(dls, settings):
    settings = dict(settings)
    run = copy.copy(dls)
    run.bs = settings.pop("bs", dls.bs)
    learn = collab_learner(run, n_factors=4, y_range=(0, 5.5), seed=0, log=None, **settings)
    before = learn.model.params.copy()
    result = learn.lr_find(num_it=30, show_plot=False, suggest_funcs=(valley, minimum, steep))
    assert result._fields == ("valley", "minimum", "steep")
    np.testing.assert_array_equal(before, learn.model.params)
