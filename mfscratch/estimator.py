"""A scikit-learn-style estimator: ``CollabRegressor``, for ``GridSearchCV``, ``cross_val_score`` and pipelines.

It follows scikit-learn's conventions without importing scikit-learn (a test dependency only):
``__init__`` stores the hyper-parameters as given; ``get_params``/``set_params`` read and change
them; ``fit(X, y)`` takes ``X`` with the user and item ids in its first two columns (a DataFrame,
a 2-D array or a list of pairs) and ``y`` the ratings, and trains on all of them (the
cross-validation tools hold rows out, not the estimator); ``predict(X)`` returns a NumPy array;
``score(X, y)`` is the coefficient of determination R², as for every scikit-learn regressor (so
that higher is better); ``rmse(X, y)`` is the error recommenders report.

Ids that ``fit`` never saw (a user only in the held-out fold) are predicted from what is known,
silently, as Surprise does: the item's bias for an unknown user, the user's for an unknown item,
the rating midpoint for neither (see ``analysis.py``).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from .errors import ConfigError

__all__ = ["CollabRegressor"]


def _ids(X) -> tuple[list, list]:
    """The user and item ids of ``X``: its first two columns."""
    if isinstance(X, pd.DataFrame):
        if X.shape[1] < 2:
            raise ConfigError(f"X needs user and item columns, got the columns {list(X.columns)}")
        return X.iloc[:, 0].tolist(), X.iloc[:, 1].tolist()
    array = np.asarray(X, dtype=object)
    if array.ndim != 2 or array.shape[1] < 2:
        raise ConfigError(f"X needs two columns (user, item), got an array of shape {array.shape}")
    return array[:, 0].tolist(), array[:, 1].tolist()


class CollabRegressor:
    """The biased dot-product model as a scikit-learn regressor (defaults: the fastai book's recipe).

    ``y_range=None`` derives the output range from the training ratings (``(0, 1.1 * max)`` for
    non-negative ones); ``optimizer`` is ``"adam"`` or ``"sgd"``; ``seed`` fixes the initial
    weights and the batch order. After ``fit``: ``learner_`` (the trained
    :class:`~mfscratch.learner.Learner`), ``y_range_`` and ``n_features_in_``.
    """

    _estimator_type = "regressor"  # scikit-learn before 1.6 reads this; later versions __sklearn_tags__

    def __init__(
        self,
        n_factors: int = 50,
        epochs: int = 5,
        lr: float = 5e-3,
        wd: float = 0.1,
        bs: int = 64,
        y_range: tuple[float, float] | None = None,
        optimizer: str = "adam",
        sparse: bool = False,
        backend: str = "cpu",
        seed: int | None = None,
    ):
        self.n_factors = n_factors
        self.epochs = epochs
        self.lr = lr
        self.wd = wd
        self.bs = bs
        self.y_range = y_range
        self.optimizer = optimizer
        self.sparse = sparse
        self.backend = backend
        self.seed = seed

    _PARAMS = ("n_factors", "epochs", "lr", "wd", "bs", "y_range", "optimizer", "sparse", "backend", "seed")

    # --- scikit-learn's conventions ------------------------------------------------------------
    def get_params(self, deep: bool = True) -> dict:
        """The hyper-parameters by name (``deep`` is accepted for scikit-learn; there are no nested ones)."""
        return {name: getattr(self, name) for name in self._PARAMS}

    def set_params(self, **params) -> CollabRegressor:
        """Change hyper-parameters by name; returns the estimator."""
        unknown = sorted(set(params) - set(self._PARAMS))
        if unknown:
            raise ConfigError(f"unknown parameter(s) {unknown} for CollabRegressor: use {', '.join(self._PARAMS)}")
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = CollabRegressor()
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if v != getattr(defaults, k)]
        return f"CollabRegressor({', '.join(changed)})"

    def __sklearn_tags__(self):
        from sklearn.utils import InputTags, RegressorTags, Tags, TargetTags

        return Tags(
            estimator_type="regressor",
            target_tags=TargetTags(required=True),
            regressor_tags=RegressorTags(),
            input_tags=InputTags(two_d_array=True, categorical=True, string=True),
            non_deterministic=self.seed is None,
        )

    # --- fitting and predicting ------------------------------------------------------------------
    def fit(self, X, y) -> CollabRegressor:
        """Train on every row of ``X`` (user and item ids) with the ratings ``y``; returns the estimator."""
        from .api import fit

        users, items = _ids(X)
        ratings = np.asarray(y, dtype=np.float64).ravel()
        if len(ratings) != len(users):
            raise ConfigError(f"X has {len(users)} rows but y has {len(ratings)} ratings")
        df = pd.DataFrame({"user": users, "item": items, "rating": ratings})
        learn = fit(
            df,
            epochs=self.epochs,
            lr=self.lr,
            wd=self.wd,
            n_factors=self.n_factors,
            bs=self.bs,
            valid_pct=0.0,
            y_range=self.y_range,
            seed=self.seed,
            opt_func=self.optimizer,
            sparse=self.sparse,
            backend=self.backend,
        )
        self.learner_, self.y_range_, self.n_features_in_ = learn, learn.model.y_range, 2
        return self

    def predict(self, X) -> np.ndarray:
        """Predicted ratings for the (user, item) rows of ``X``."""
        if not hasattr(self, "learner_"):
            raise ConfigError("this CollabRegressor is not fitted yet: call fit(X, y) first")
        from .analysis import FallbackWarning

        users, items = _ids(X)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FallbackWarning)  # unseen ids: the known biases, as documented
            return np.asarray(self.learner_.predict(users, items), dtype=np.float64)

    def score(self, X, y, sample_weight=None) -> float:
        """R² of the predictions (1 is perfect, 0 is predicting the mean rating), as scikit-learn's regressors."""
        y = np.asarray(y, dtype=np.float64).ravel()
        w = np.ones_like(y) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        pred = self.predict(X)
        mean = np.average(y, weights=w)
        total = float(np.sum(w * (y - mean) ** 2))
        residual = float(np.sum(w * (y - pred) ** 2))
        return 1.0 - residual / total if total > 0 else float(residual == 0)

    def rmse(self, X, y) -> float:
        """Root mean squared error of the predictions."""
        return float(np.sqrt(np.mean((np.asarray(y, dtype=np.float64).ravel() - self.predict(X)) ** 2)))
