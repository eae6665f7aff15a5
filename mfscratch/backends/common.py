"""What every backend shares: the mode names, the epoch's permutation and the warm-up's tiny problem."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
from numba import njit

from ..errors import ConfigError

__all__ = ["MODES", "mode_of", "normalise_mode", "permutation_into", "tiny_problem", "LossKeep", "EpochLosses"]

#: The training modes: every row every step (the fastai recipe), only the batch's rows, and per-rating
#: SGD (sparse mode with plain SGD, no momentum, batches of one rating: a fused kernel).
MODES = ("exact", "sparse", "per-rating")
#: Names that version 0.1 used, accepted for one more release with a DeprecationWarning.
OLD_MODE_NAMES = {"sparse-sgd1": "per-rating"}


@dataclass(frozen=True)
class LossKeep:
    """What a long epoch keeps of its losses (a runner with ``steps_in_kernel``): the losses of the
    steps ``sample_steps`` (positions in the epoch, sorted, int64) and of its last ``tail`` steps."""

    sample_steps: np.ndarray
    tail: int


@dataclass(frozen=True)
class EpochLosses:
    """A long epoch's losses summarised by the kernel, instead of one float64 a step (at 20M steps an
    epoch, 160 MB): what the learner and the recorder use of them.

    ``n_done``: the steps done (all, or up to and including the first non-finite loss); ``last_loss``:
    the loss of step ``n_done - 1`` (non-finite: the epoch diverged there); ``total``: the float64 sum
    of the losses, each block's summed in step order and the blocks' sums added in block (step) order:
    not NumPy's pairwise sum, so ``total / n_done`` equals ``np.mean`` of the same losses to rounding
    (about 1e-16 relative), not bit for bit; ``sample``: the losses of the steps ``sample_steps``;
    ``tail``: the losses of the epoch's last ``len(tail)`` steps. The arrays may be buffers the next
    epoch reuses: copy what is kept.
    """

    n_done: int
    last_loss: float
    total: float
    sample_steps: np.ndarray
    sample: np.ndarray
    tail: np.ndarray


def mode_of(sparse: bool, opt, bs: int) -> str:
    """The mode a fit runs: ``exact`` unless ``sparse``; sparse plain SGD with ``bs = 1`` is ``per-rating``."""
    if not sparse:
        return "exact"
    return "per-rating" if bs == 1 and opt.name == "sgd" and not opt.uses_momentum else "sparse"


def normalise_mode(name: str) -> str:
    """``name`` as one of :data:`MODES`; an old name is accepted with a DeprecationWarning."""
    if name in OLD_MODE_NAMES:
        new = OLD_MODE_NAMES[name]
        warnings.warn(
            f"mode {name!r} is now called {new!r}; the old name goes in the next release",
            DeprecationWarning,
            stacklevel=3,
        )
        return new
    if name not in MODES:
        raise ConfigError(f"unknown mode {name!r}: use {', '.join(MODES)}")
    return name


@njit(cache=True)
def _fill_range(out):
    for i in range(out.shape[0]):
        out[i] = i


def permutation_into(rng: np.random.Generator, out: np.ndarray) -> np.ndarray:
    """``rng.permutation(len(out))`` written into ``out`` (int64): the same numbers, no fresh allocation.

    NumPy's permutation is ``arange`` then ``shuffle``; both in place skip a fresh array's page faults,
    and the shuffle is ``kernels.shuffle``'s (NumPy's, compiled, with its swaps prefetched).
    """
    from ..kernels.shuffle import shuffle

    _fill_range(out)
    shuffle(rng, out)
    return out


def tiny_problem(model, dls, mode: str):
    """A model of 2 users, 2 items and k = 2 and loaders of 2 ratings with the dtypes of ``model`` and
    ``dls``: what a backend's warm-up trains so that the real fit finds its kernels compiled."""
    from ..model import EmbeddingDotBias

    tiny = EmbeddingDotBias(2, 2, 2, y_range=model.y_range, seed=0, dtype=model.dtype)
    codes = np.array([0, 1])
    users, items = codes.astype(dls.train_users.dtype), codes.astype(dls.train_items.dtype)
    ratings = np.array([0.5, 1.0], dtype=dls.train_ratings.dtype)
    loaders = SimpleNamespace(
        bs=1 if mode == "per-rating" else 2,
        n_train=2,
        train_users=users,
        train_items=items,
        train_ratings=ratings,
        valid_users=users,
        valid_items=items,
        valid_ratings=ratings,
    )
    return tiny, loaders
