"""fastai's ``set_seed``: one call that makes every unseeded draw of a program repeatable.

Each ``seed=None`` of the API (the split, the initial weights, the batch order) draws fresh
entropy from the operating system, as fastai's defaults do. After ``set_seed(s)`` those ``None``
seeds become integers drawn, in call order, from one generator seeded with ``s``: a script that
passes no seed at all (the fastai book's) gives the same numbers on every run. NumPy's and Python's
global generators are seeded with ``s`` too, as fastai's ``set_seed`` seeds them.
"""

from __future__ import annotations

import random

import numpy as np

from .errors import ConfigError

__all__ = ["set_seed", "seed_or_drawn"]

_unseeded: np.random.Generator | None = None


def set_seed(s: int) -> None:
    """Seed every unseeded draw that follows (see the module's docstring); ``s``: an integer >= 0."""
    global _unseeded
    from .validate import check_seed

    if s is None:
        raise ConfigError("set_seed needs an integer >= 0, got None")
    seed = check_seed(s)
    _unseeded = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x5EED,)))
    np.random.seed(s % 2**32)
    random.seed(s)


def seed_or_drawn(seed: int | None) -> int | None:
    """``seed`` itself, or for ``None`` the next integer of ``set_seed``'s generator (``None`` without one)."""
    if seed is None and _unseeded is not None:
        return int(_unseeded.integers(2**63))
    return seed
