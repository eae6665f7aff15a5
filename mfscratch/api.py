"""One call for programs that import mfscratch: ``mfscratch.fit(df, user=..., item=..., rating=...)``.

It is the command line's recipe as a function: the loaders (``CollabDataLoaders.from_df``), the
model (``collab_learner``) with the output range taken from the ratings unless given, and
``fit_one_cycle``; it returns the trained :class:`~mfscratch.learner.Learner`, ready to
``predict``, ``recommend``, ``export`` or train further. The scikit-learn-style estimator
(``estimator.CollabRegressor``) is built on it.
"""

from __future__ import annotations

import pandas as pd

__all__ = ["fit"]


def fit(
    df: pd.DataFrame,
    user=None,
    item=None,
    rating=None,
    *,
    epochs: int = 5,
    lr: float = 5e-3,
    wd: float = 0.1,
    n_factors: int = 50,
    bs: int = 64,
    valid_pct: float = 0.2,
    y_range: tuple[float, float] | None = None,
    seed: int | None = None,
    cbs=None,
    log=None,
    **learner_args,
):
    """Train the biased dot-product model on ``df`` and return the learner.

    ``user``, ``item``, ``rating`` name the columns (default: columns 0, 1, 2). The defaults are the
    fastai book's recipe (``fit_one_cycle(5, 5e-3, wd=0.1)``, 50 factors, batches of 64, a random
    20% validation split). ``y_range`` defaults to one derived from the ratings, ``(0, 1.1 * max)``
    for non-negative ratings (``readers.default_y_range``); ``seed`` fixes the split, the initial
    weights and the batch order; ``cbs`` are fastai-style callbacks (early stopping, keeping the
    best epoch); ``log=print`` prints fastai's results table. Other keyword arguments go to
    ``collab_learner`` (``opt_func``, ``sparse``, ``backend``).
    """
    from .data import CollabDataLoaders
    from .learner import collab_learner
    from .readers import default_y_range

    dls = CollabDataLoaders.from_df(df, valid_pct, user_name=user, item_name=item, rating_name=rating, seed=seed, bs=bs)
    if y_range is None:
        y_range = default_y_range(df[dls.rating_name])
    learn = collab_learner(dls, n_factors=n_factors, y_range=y_range, seed=seed, log=log, **learner_args)
    learn.fit_one_cycle(epochs, lr, wd=wd, cbs=cbs)
    return learn
