"""Where the training loop runs: the declared interface, the registry of backends.

A backend owns the arrays it trains on (on the CPU the model's own buffer, on a GPU device copies)
and the learner talks to it through :class:`Backend` and nothing more:

* ``bind(model, state, dls)``: the weights, optimiser state and data of a fit;
* ``runner(opt, mode, bs)``: the :class:`EpochRunner` of a fit, the mode chosen once (``exact``,
  ``sparse`` or ``per-rating``: see :func:`mode_of`); the runner owns its scratch arrays and draws
  each epoch's order of the training rows from the learner's generator;
* ``evaluate(users, items, ratings)``: the exact mean squared error under the current weights;
* ``sync()``: make ``model.params`` and the optimiser state on the host current;
* ``warmup(model, dls, opt, mode)``: compile (or load from the cache) what that fit runs, on a tiny
  problem of the same types, so that no compile time falls inside a timed epoch;
* ``reproducible(mode)``: whether a repeated fit gives the same floats, bit for bit.

Adding a backend is a class with these methods and one line in :data:`BACKENDS`; the conformance
suite (``tests/test_backend_conformance.py``) then runs on it.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from ..errors import ConfigError
from .common import MODES, EpochLosses, LossKeep, mode_of, normalise_mode
from .cpu import CpuBackend, ParallelBackend, per_rating_groups
from .cuda import CudaBackend
from .dask import DaskBackend

__all__ = [
    "Backend",
    "EpochRunner",
    "MODES",
    "EpochLosses",
    "LossKeep",
    "mode_of",
    "normalise_mode",
    "per_rating_groups",
    "CpuBackend",
    "ParallelBackend",
    "CudaBackend",
    "DaskBackend",
    "BACKENDS",
    "available_backends",
    "get_backend",
]


class EpochRunner(Protocol):
    """One fit's epochs in one mode: ``train_epoch`` runs an epoch and returns its per-step losses.

    A runner whose ``steps_in_kernel`` is true (the CPU per-rating runner) also takes, as ``lrs``, a
    ``kernels.records.StepLrs`` (the learning rates made in its kernel, no per-step array; ``moms``
    unused, may be empty) and a ``keep`` (:class:`LossKeep`), with which it returns an
    :class:`EpochLosses` summary instead of one loss a step. Other runners (CUDA, Dask) have no such
    attribute and are given per-step arrays and no ``keep``.
    """

    #: ``exact``, ``sparse`` or ``per-rating``
    mode: str
    #: One int64 slot per lane of work, each the steps its lane has done in the current epoch (a
    #: progress bar polls the sum from another thread while an epoch runs).
    progress: np.ndarray
    #: The training rows of the last epoch in the order they were trained.
    order: np.ndarray

    def train_epoch(
        self, rng: np.random.Generator, lrs: Any, moms: np.ndarray, step0: int, keep: LossKeep | None = None
    ) -> np.ndarray | EpochLosses:
        """One epoch: the order drawn from ``rng``, step ``s`` at ``lrs[s]``, ``moms[s]`` and Adam's step
        count ``step0 + s + 1``. Returns the batch losses; a NaN/inf loss stops the epoch before that
        step's update and the array ends there. The array may be a buffer the next epoch reuses: copy
        what is kept. ``keep`` (``steps_in_kernel`` runners only): an :class:`EpochLosses` instead."""
        ...


class Backend(Protocol):
    """The calls the learner makes (see the module docstring)."""

    name: str

    def bind(self, model, state, dls) -> None: ...

    def runner(self, opt, mode: str, bs: int) -> EpochRunner: ...

    def evaluate(self, users: np.ndarray, items: np.ndarray, ratings: np.ndarray) -> float: ...

    def sync(self) -> None: ...

    def warmup(self, model, dls, opt, mode: str) -> None: ...

    def reproducible(self, mode: str) -> bool: ...


#: The registered backends by name: a class whose constructor takes ``threads=None``.
BACKENDS: dict[str, Any] = {"cpu": CpuBackend, "parallel": ParallelBackend, "cuda": CudaBackend, "dask": DaskBackend}


def available_backends() -> list[str]:
    """The registered backends that can run on this machine (``cuda`` needs numba-cuda and a GPU)."""
    return [name for name, cls in BACKENDS.items() if cls.available()]


def get_backend(name: str, threads: int | None = None, per_rating_scheduler: str | None = None) -> Backend:
    """A fresh backend object by name (``'cpu'``, ``'parallel'``, ``'cuda'``); ``threads`` and
    ``per_rating_scheduler``: see ``ParallelBackend``."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}")
    if per_rating_scheduler is None:
        return BACKENDS[name](threads=threads)
    if name != "parallel":
        raise ConfigError(
            f"per_rating_scheduler hands per-rating blocks to the parallel backend's threads; "
            f"use backend 'parallel' (got {name!r}) or leave it out"
        )
    return ParallelBackend(threads=threads, per_rating_scheduler=per_rating_scheduler)
