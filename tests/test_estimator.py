"""The one-call API for programs: mfscratch.fit and CollabRegressor, checked with scikit-learn's own tools."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import make_ratings

import mfscratch
from mfscratch import CollabRegressor
from mfscratch.errors import ConfigError

sklearn = pytest.importorskip("sklearn")
from sklearn.base import clone  # noqa: E402
from sklearn.metrics import mean_squared_error, r2_score  # noqa: E402
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score  # noqa: E402

FAST = {"epochs": 3, "bs": 32, "lr": 2e-2, "seed": 0}


@pytest.fixture(scope="module")
def data():
    df = make_ratings(n_users=60, n_items=80, n_ratings=4000, k=2, seed=4).drop_duplicates(["user", "item"])
    return df[["user", "item"]], df["rating"].to_numpy()


def test_scikit_learn_conventions():
    est = CollabRegressor(n_factors=8, seed=3)
    assert est.get_params()["n_factors"] == 8 and est.get_params(deep=False)["seed"] == 3
    twin = clone(est)
    assert twin is not est and twin.get_params() == est.get_params()
    assert est.set_params(lr=0.1, epochs=2) is est and est.lr == 0.1
    assert sklearn.base.is_regressor(est)
    assert repr(est) == "CollabRegressor(n_factors=8, epochs=2, lr=0.1, seed=3)"
    with pytest.raises(ConfigError, match="unknown parameter"):
        est.set_params(factors=3)
    with pytest.raises(ConfigError, match="not fitted"):
        CollabRegressor().predict([[1, 2]])


def test_fit_predict_score_agree_with_sklearn_metrics(data):
    X, y = data
    est = CollabRegressor(n_factors=8, **FAST).fit(X, y)
    pred = est.predict(X)
    assert isinstance(pred, np.ndarray) and pred.shape == y.shape
    assert est.score(X, y) == pytest.approx(r2_score(y, pred))
    assert est.rmse(X, y) == pytest.approx(np.sqrt(mean_squared_error(y, pred)))
    assert est.score(X, y) > 0.3 and est.y_range_ == (0.0, 5.5)
    np.testing.assert_array_equal(est.predict(X.to_numpy()), pred)  # a plain 2-D array works too
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unseen user is predicted from the item's bias, silently
        assert np.isfinite(est.predict([[99999, X["item"].iloc[0]]])).all()


def test_cross_val_score_and_grid_search(data):
    X, y = data
    folds = KFold(3, shuffle=True, random_state=0)
    scores = cross_val_score(CollabRegressor(n_factors=8, **FAST), X, y, cv=folds)
    assert scores.shape == (3,) and np.isfinite(scores).all() and scores.mean() > 0
    search = GridSearchCV(
        CollabRegressor(**FAST),
        {"n_factors": [2, 8], "wd": [0.05, 0.2]},
        cv=folds,
        scoring="neg_root_mean_squared_error",
    )
    search.fit(X, y)
    assert set(search.best_params_) == {"n_factors", "wd"}
    assert search.best_estimator_.learner_.model.n_factors == search.best_params_["n_factors"]
    assert np.isfinite(search.predict(X.head(5))).all()


def test_mfscratch_fit_returns_a_trained_learner(data):
    X, y = data
    df = X.rename(columns={"user": "uid", "item": "sku"}).assign(stars=y)
    learn = mfscratch.fit(df, user="uid", item="sku", rating="stars", epochs=2, n_factors=4, seed=1)
    assert len(learn.recorder.values) == 2 and learn.model.y_range == (0.0, 5.5)
    preds, targets = learn.get_preds()
    assert mean_squared_error(targets, preds) == pytest.approx(learn.recorder.values[-1][1], rel=1e-5)
    assert learn.predict(df.iloc[0]) == pytest.approx(float(learn.predict([df["uid"].iloc[0]], [df["sku"].iloc[0]])[0]))
