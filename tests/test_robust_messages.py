"""Messages that blame the right thing: weight decay, memory, seeds, and limits that cap instead of crash."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import make_ratings

import mfscratch.learner as mlearner
import mfscratch.validate as checks
from mfscratch import SGD, Adam, CollabDataLoaders, collab_learner
from mfscratch.errors import ConfigError, DivergenceError
from mfscratch.synthetic import synthetic_ratings

pytestmark = pytest.mark.filterwarnings("ignore::mfscratch.DataWarning")


@pytest.fixture(scope="module")
def dls():
    return CollabDataLoaders.from_df(make_ratings(n_users=20, n_items=25, n_ratings=400), seed=0, bs=16)


# --- divergence ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "lr, wd, decoupled, blamed, absent",
    [
        (5e-3, 1e3, True, "weight decay wd=1000 is too large", "learning rate"),
        (5e-3, 300.0, True, "lower wd below 200", "meant as"),
        (1e6, 0.01, True, "learning rate (1e+06", "weight decay wd"),
        (1e-2, 1e3, False, "learning rate", "lr x wd"),  # Adam's L2 decay goes through the moments
        (10.0, 0.0, True, "learning rate", "lr x wd"),
    ],
)
def test_divergence_message(lr, wd, decoupled, blamed, absent):
    msg = checks.divergence_message(2, 7, float("nan"), lr, wd, decoupled)
    assert msg.startswith("training diverged at epoch 2, step 7 (loss nan); ") and "\n" not in msg
    assert blamed in msg and absent not in msg
    if lr * wd >= 1 and decoupled:
        assert f"{1 - lr * wd:.3g}" in msg  # the factor that flips the weights' sign


def test_typo_hint_only_for_powers_of_ten():
    assert "(was 1000 meant as 0.001?)" in checks.divergence_message(0, 1, math.inf, 5e-3, 1e3, True)
    assert "meant as" not in checks.divergence_message(0, 1, math.inf, 5e-3, 350.0, True)


@pytest.mark.parametrize("opt", [Adam(), SGD(mom=0.9)])
def test_fit_with_a_huge_weight_decay_blames_it(dls, opt):
    learn = collab_learner(dls, n_factors=4, y_range=(0, 5.5), seed=0, opt_func=opt, log=None)
    with pytest.raises(DivergenceError, match=r"weight decay wd=1000 is too large: lr x wd = .* >= 1") as e:
        learn.fit(3, 1e-2, wd=1e3)
    assert "\n" not in str(e.value) and len(learn.recorder.values) < 3  # the diverged epoch is not recorded


def test_fit_with_a_huge_learning_rate_still_blames_it(dls):
    learn = collab_learner(dls, n_factors=4, y_range=(0, 5.5), seed=0, log=None)
    with pytest.raises(DivergenceError, match=r"the learning rate \(1e\+06 at its highest so far\)") as e:
        learn.fit(2, 1e6)  # Adam's default wd 0.01: lr x wd >= 1 too, but the learning rate is the outlier
    assert "weight decay wd" not in str(e.value)


# --- memory ---------------------------------------------------------------------------------------
def test_model_memory_counts_tables_state_and_gradients():
    n_params = (944 + 1665) * (100_000 + 1)
    assert checks.model_memory(944, 1665, 100_000) == n_params * (4 * 4 + 8)


def test_a_model_too_big_for_the_memory_is_refused_before_allocating(dls, monkeypatch):
    monkeypatch.setattr(checks, "available_memory", lambda: 64 * 2**20)
    allocated = []
    monkeypatch.setattr(mlearner, "EmbeddingDotBias", lambda *a, **k: allocated.append(1))
    with pytest.raises(ConfigError) as e:
        collab_learner(dls, n_factors=100_000, log=None)
    msg = str(e.value)
    assert "needs about 108 MiB" in msg and "64 MiB is available" in msg and "--factors" in msg
    assert allocated == []


def test_memory_error_where_the_tables_are_made_is_one_line(dls, monkeypatch):
    monkeypatch.setattr(checks, "available_memory", lambda: None)  # the system cannot tell: try, and catch

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(mlearner, "EmbeddingDotBias", no_memory)
    with pytest.raises(ConfigError, match=r"n_factors=50 needs about .* lower n_factors"):
        collab_learner(dls, n_factors=50, log=None)


def test_available_memory_is_a_number_or_none():
    value = checks.available_memory()
    assert value is None or (isinstance(value, int) and value >= 0)


# --- seeds ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-1, -(2**70), 1.5, "42", True, np.float64(3.0)])
def test_bad_seeds_are_refused_everywhere(dls, bad):
    df = make_ratings(n_users=10, n_items=10, n_ratings=100)
    for call in (
        lambda: CollabDataLoaders.from_df(df, seed=bad),
        lambda: CollabDataLoaders.from_codes([1, 2], [1, 2], [3.0, 4.0], 3, 3, seed=bad),
        lambda: collab_learner(dls, seed=bad, log=None),
        lambda: synthetic_ratings(100, 10, 10, seed=bad),
    ):
        with pytest.raises(ConfigError, match="seed must be an integer >= 0"):
            call()


@pytest.mark.parametrize("good", [0, 2**70, np.int64(7), np.uint8(3), None])
def test_good_seeds(dls, good):
    assert checks.check_seed(good) == (None if good is None else int(good))
    collab_learner(dls, n_factors=2, seed=good, log=None)


def test_cli_seed_options(capsys):
    from robust_helpers import run_cli

    for argv in (["train", "--seed", "-1"], ["bench", "--seed", "-5"], ["cv", "--seed", "x"]):
        rc, _, err = run_cli(capsys, *argv)
        assert rc == 2 and "--seed: expected an integer >= 0" in err


# --- limits that cap -------------------------------------------------------------------------------
def test_huge_n_and_k_are_capped_at_the_items(dls):
    learn = collab_learner(dls, n_factors=3, y_range=(0, 5.5), seed=0, log=None)
    learn.fit(1, 1e-2)
    n_real = dls.n_items - 1
    assert len(learn.recommend(dls.classes["user"][1], 10**10)) <= n_real
    assert len(learn.similar(dls.classes["item"][1], 10**10)) == n_real - 1
    assert len(learn.biases(10**10)) == 2 * n_real
    ranking = learn.ranking(10**10)
    assert ranking["k"] == 10**10 and 0 <= ranking["recall"] <= 1


def test_recommend_for_an_unknown_user_with_a_huge_n(dls):
    learn = collab_learner(dls, n_factors=3, y_range=(0, 5.5), seed=0, log=None)
    with pytest.warns(UserWarning, match="not in the training data"):
        out = learn.recommend("nobody", 10**12)
    assert isinstance(out, pd.DataFrame) and len(out) == dls.n_items - 1


# --- found by the hostile pass -----------------------------------------------------------------------
def test_y_range_that_float32_cannot_hold(dls):
    for bad in ((0, 1e300), (-1e39, 5.0)):
        with pytest.raises(ConfigError, match="does not fit float32"):
            collab_learner(dls, y_range=bad, log=None)


def test_cli_numbers_in_exponent_notation_and_non_finite_thresholds(capsys):
    from robust_helpers import run_cli

    rc, _, err = run_cli(capsys, "train", "--y-range", "-1e300", "1e300")
    assert rc == 2 and "does not fit float32" in err  # -1e300 is a value, not an unknown option
    rc, _, err = run_cli(capsys, "train", "--ranking-threshold", "nan")
    assert rc == 2 and "expected a finite number" in err


def test_entry_points_given_nonsense(tmp_path):
    from mfscratch import load_model, read_ratings
    from mfscratch.errors import DataError, ModelFileError

    with pytest.raises(ConfigError, match="needs CollabDataLoaders"):
        collab_learner(None)
    with pytest.raises(DataError, match="must be given as a path"):
        read_ratings(None)
    with pytest.raises(DataError, match="is a folder"):
        read_ratings(tmp_path)
    (tmp_path / "r.csv").write_text("u,i,r\n1,2,3\n")
    with pytest.raises(ConfigError, match="header must be True, False or None"):
        read_ratings(tmp_path / "r.csv", header="yes")
    with pytest.raises(ModelFileError, match="must be a file path"):
        load_model(None)


def test_from_codes_out_of_range_are_refused_not_read_out_of_bounds():
    from mfscratch.errors import DataError

    for users in ([-1, 1], [1, 3]):
        with pytest.raises(DataError, match=r"user codes must be 2 integers in \[0, 3\)"):
            CollabDataLoaders.from_codes(users, [0, 1], [3.0, 4.0], 3, 3)
    with pytest.raises(DataError, match="item codes must be 2"):
        CollabDataLoaders.from_codes([0, 1], [0], [3.0, 4.0], 3, 3)
