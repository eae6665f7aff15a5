"""Optimisers: fastai's ``Adam`` and ``SGD`` hyper-parameters, and the state they carry between steps.

The update rules themselves are written out in :func:`mfscratch.reference.adam_step` and
:func:`mfscratch.reference.sgd_step` and compiled in ``kernels/cpu/updates.py``. Two ways of applying them:

* **exact** (the fastai recipe): every element of every table is updated at every step, including
  rows the batch did not touch (zero gradient, but decay and the moments still move them);
* **sparse**: only the rows in the batch are updated (like ``torch.nn.Embedding(sparse=True)`` with
  ``SparseAdam``): a different, much cheaper algorithm, never called the fastai recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError

__all__ = ["Adam", "SGD", "OptState", "resolve_opt"]


@dataclass
class Adam:
    """fastai's ``Adam(lr, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.01, decouple_wd=True)``."""

    lr: float = 1e-3
    mom: float = 0.9
    sqr_mom: float = 0.99
    eps: float = 1e-5
    wd: float = 0.01
    decouple_wd: bool = True
    name: str = field(default="adam", init=False)

    @property
    def uses_momentum(self) -> bool:
        return True


@dataclass
class SGD:
    """fastai's ``SGD(lr, mom=0., wd=0., decouple_wd=True)``.

    As in fastai, momentum exists only if the optimiser is built with ``mom != 0``: a one-cycle
    momentum schedule then moves it; with ``mom == 0`` the schedule's momenta are ignored.
    """

    lr: float = 1e-3
    mom: float = 0.0
    wd: float = 0.0
    decouple_wd: bool = True
    name: str = field(default="sgd", init=False)
    # Unused by SGD, present so that kernels take one argument list for both optimisers.
    sqr_mom: float = field(default=0.0, init=False)
    eps: float = field(default=0.0, init=False)

    @property
    def uses_momentum(self) -> bool:
        return self.mom != 0.0


def resolve_opt(opt_func) -> Adam | SGD:
    """Accept ``Adam``, ``SGD``, an instance, a ``functools.partial`` of either, or a name."""
    if isinstance(opt_func, str):
        table = {"adam": Adam, "sgd": SGD}
        if opt_func.lower() not in table:
            raise ConfigError(f"unknown optimiser {opt_func!r}: use 'adam' or 'sgd'")
        opt_func = table[opt_func.lower()]
    opt = opt_func if isinstance(opt_func, (Adam, SGD)) else opt_func()
    if not isinstance(opt, (Adam, SGD)):
        raise ConfigError(f"opt_func must be mfscratch.Adam or mfscratch.SGD, got {opt_func!r}")
    return opt


@dataclass
class OptState:
    """What an optimiser remembers: the running moments (flat, like ``params``) and the step count."""

    exp_avg: np.ndarray
    exp_avg_sq: np.ndarray
    step: int = 0

    @classmethod
    def zeros_like(cls, params: np.ndarray) -> OptState:
        """Zero moments shaped like ``params``, made with ``np.zeros`` (``calloc``): the pages stay unmapped
        until written, so an optimiser that never reads its moments (plain SGD) holds no memory for them,
        where ``np.zeros_like`` writes every page."""
        return cls(np.zeros(params.shape, params.dtype), np.zeros(params.shape, params.dtype), 0)
