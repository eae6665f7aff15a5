"""Shared fixtures: small synthetic ratings (never MovieLens slices) and the real ML-100k when present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


def make_ratings(n_users=30, n_items=40, n_ratings=600, k=3, seed=0, lo=1, hi=5):
    """A planted low-rank ratings table with integer ratings in [lo, hi], as a DataFrame."""
    rng = np.random.default_rng(seed)
    P = rng.normal(size=(n_users, k))
    Q = rng.normal(size=(n_items, k))
    users = rng.integers(0, n_users, n_ratings)
    items = rng.integers(0, n_items, n_ratings)
    raw = (P[users] * Q[items]).sum(1) + rng.normal(scale=0.3, size=n_ratings)
    ratings = np.clip(np.round((raw - raw.mean()) / (raw.std() + 1e-9) + (lo + hi) / 2), lo, hi)
    return pd.DataFrame({"user": users + 100, "item": [f"item{i:03d}" for i in items], "rating": ratings})


@pytest.fixture
def ratings_df():
    return make_ratings()


def ml100k_dir() -> Path | None:
    """The real ML-100k, found through the cache-folder variable as the library finds it."""
    root = os.environ.get("MFSCRATCH_DATA")
    if not root:
        return None
    path = Path(root) / "ml-100k"
    return path if (path / "u.data").is_file() else None


@pytest.fixture
def ml100k():
    path = ml100k_dir()
    if path is None:
        pytest.skip("real ML-100k not found: set MFSCRATCH_DATA to a folder holding ml-100k/")
    return path
