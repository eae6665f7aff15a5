r"""MovieLens-like synthetic ratings at any size, for benchmarks, scale runs and tests.

Real rating data is skewed: a few users rate thousands of items and a few items collect most
ratings, and that skew is what decides how often a row is reused (cache behaviour, Hogwild
collisions). The generator plants it on purpose:

* **popularity**: user ``u`` is drawn with probability proportional to ``(rank_u + offset)^(-user_exponent)``
  (a Zipf-Mandelbrot law), items likewise with ``item_exponent``; the ranks are a random
  permutation of the codes, so popular rows are scattered through the tables as in real data.
  The defaults give ML-25M-like shares: the most popular item holds about 0.2% of all ratings.
* **ratings**: a planted low-rank model plus noise,
  ``z = mu + b[u] + c[i] + 0.6 P[u].Q[i] + noise`` with ``P, Q ~ N(0, 1/sqrt(k_true))`` (so the dot
  product has unit variance), ``b ~ N(0, 0.4)``, ``c ~ N(0, 0.5)``, ``noise ~ N(0, noise)``;
  ``z`` is rounded to the rating step and clipped to ``[lo, hi]`` (1-5 stars, or 0.5-5 in half
  stars). The mean is about 3.5 and the standard deviation about 1, as on MovieLens.

Memory: the output is three arrays (int32, int32, float32: 12 bytes a rating) written in passes,
so the peak is the output plus one pass; 25M ratings take 300 MB. Pairs may repeat (a user can
rate an item twice), which MovieLens does not do; for training speed it makes no difference.
"""

from __future__ import annotations

import numpy as np

from .data import CollabDataLoaders
from .errors import ConfigError
from .validate import check_seed

__all__ = ["popularity_weights", "synthetic_ratings", "synthetic_dataloaders", "ML_25M_SHAPE"]

#: ML-25M's shape: ratings, users, items.
ML_25M_SHAPE = (25_000_095, 162_541, 59_047)

_RATINGS_PER_PASS = 1 << 21  # keeps the temporaries (ratings x k_true floats) near 16 MB


def popularity_weights(n: int, exponent: float, offset: float, rng: np.random.Generator) -> np.ndarray:
    """Sampling probabilities ``w[code] ∝ (rank[code] + offset)^(-exponent)``, ranks a random permutation."""
    ranks = rng.permutation(n).astype(np.float64)
    w = (ranks + offset) ** (-exponent)
    return w / w.sum()


def synthetic_ratings(
    n_ratings: int,
    n_users: int,
    n_items: int,
    k_true: int = 8,
    rating_range=(1.0, 5.0),
    rating_step: float = 1.0,
    user_exponent: float = 0.5,
    item_exponent: float = 0.7,
    offset: float = 10.0,
    noise: float = 0.5,
    mean: float = 3.5,
    seed: int | None = 0,
):
    """``(users, items, ratings)`` as int32, int32, float32 arrays of length ``n_ratings``.

    Codes run over ``0..n_users-1`` and ``0..n_items-1`` (see the module docstring for the model).
    ``rating_step = 0.5`` with ``rating_range = (0.5, 5.0)`` gives ML-25M's half stars.
    Deterministic for a given ``seed``.
    """
    for name, value in (("n_ratings", n_ratings), ("n_users", n_users), ("n_items", n_items), ("k_true", k_true)):
        if int(value) != value or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    lo, hi = (float(v) for v in rating_range)
    if not lo < hi or not rating_step > 0:
        raise ConfigError(f"rating_range must have lo < hi and rating_step > 0, got {rating_range}, {rating_step}")
    n_ratings, n_users, n_items = int(n_ratings), int(n_users), int(n_items)
    rng = np.random.default_rng(check_seed(seed))
    user_cdf = np.cumsum(popularity_weights(n_users, user_exponent, offset, rng))
    item_cdf = np.cumsum(popularity_weights(n_items, item_exponent, offset, rng))
    scale = k_true**-0.25
    P = (rng.standard_normal((n_users, k_true)) * scale).astype(np.float32)
    Q = (rng.standard_normal((n_items, k_true)) * scale).astype(np.float32)
    b = (rng.standard_normal(n_users) * 0.4).astype(np.float32)
    c = (rng.standard_normal(n_items) * 0.5).astype(np.float32)

    users = np.empty(n_ratings, dtype=np.int32)
    items = np.empty(n_ratings, dtype=np.int32)
    ratings = np.empty(n_ratings, dtype=np.float32)
    for start in range(0, n_ratings, _RATINGS_PER_PASS):
        stop = min(start + _RATINGS_PER_PASS, n_ratings)
        u = np.searchsorted(user_cdf, rng.random(stop - start), side="right").clip(0, n_users - 1)
        i = np.searchsorted(item_cdf, rng.random(stop - start), side="right").clip(0, n_items - 1)
        z = np.einsum("rk,rk->r", P[u], Q[i]) * np.float32(0.6)
        z += b[u] + c[i] + np.float32(mean)
        z += rng.standard_normal(stop - start, dtype=np.float32) * np.float32(noise)
        z = np.clip(np.round((z - lo) / rating_step) * rating_step + lo, lo, hi)
        users[start:stop], items[start:stop], ratings[start:stop] = u, i, z
    return users, items, ratings


def synthetic_dataloaders(
    n_ratings: int, n_users: int, n_items: int, valid_pct: float = 0.2, bs: int = 64, seed: int | None = 0, **kwargs
) -> CollabDataLoaders:
    """Synthetic ratings wrapped as :class:`CollabDataLoaders` without copying them.

    The rows are drawn independently, so they are already in random order: the first
    ``int(valid_pct * n)`` rows are the validation set and the rest the training set, both views
    of the generated arrays (``CollabDataLoaders.from_codes`` would permute and copy them).
    ``kwargs`` go to :func:`synthetic_ratings`.
    """
    users, items, ratings = synthetic_ratings(n_ratings, n_users, n_items, seed=seed, **kwargs)
    n_valid = int(valid_pct * n_ratings)
    if n_ratings - n_valid < bs:
        raise ConfigError(f"{n_ratings} ratings with valid_pct={valid_pct} leave fewer training rows than bs={bs}")
    classes = CollabDataLoaders.from_codes(users[:1], items[:1], ratings[:1], n_users, n_items, 0.0).classes
    return CollabDataLoaders(
        users, items, ratings, slice(n_valid, n_ratings), slice(0, n_valid), classes, "user", "item", "rating", bs, seed
    )
