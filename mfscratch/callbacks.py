"""fastai's callbacks that watch a fit: ``EarlyStoppingCallback`` and ``SaveModelCallback``.

A callback is called after each finished epoch as ``cb(learn, epoch)`` (the learner's
``after_epoch`` list; ``checkpoint.Checkpoint`` is one too), and may have ``before_fit(learn)``
and ``after_fit(learn)`` methods. Pass callbacks for one fit with ``learn.fit_one_cycle(...,
cbs=[...])`` (or ``learn.fit``); they run in the order of their ``order`` attribute, as in fastai.
A callback ends the fit after the current epoch by raising :class:`CancelFitException`; the
learner then finishes the fit as after its last epoch (``after_fit`` runs, the weights are synced).

Both trackers read ``learn.recorder.values[-1]``: ``monitor`` is ``"valid_loss"`` (default) or
``"train_loss"``; lower is better, and a value counts as better only when it beats the best so far
by more than ``min_delta``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np

from .errors import ConfigError

__all__ = ["CancelFitException", "TrackerCallback", "EarlyStoppingCallback", "SaveModelCallback", "attached"]

_MONITORS = ("train_loss", "valid_loss")


class CancelFitException(Exception):
    """Raised by a callback to end the fit after the current epoch (fastai's ``CancelFitException``)."""


class TrackerCallback:
    """Tracks the best value of ``monitor`` over a fit (fastai's ``TrackerCallback``)."""

    order = 60

    def __init__(self, monitor: str = "valid_loss", min_delta: float = 0.0, reset_on_fit: bool = True):
        if monitor not in _MONITORS:
            raise ConfigError(f"monitor must be one of {', '.join(_MONITORS)}, got {monitor!r}")
        if not (isinstance(min_delta, (int, float)) and math.isfinite(min_delta) and min_delta >= 0):
            raise ConfigError(f"min_delta must be a finite number >= 0, got {min_delta!r}")
        self.monitor, self.min_delta, self.reset_on_fit = monitor, float(min_delta), reset_on_fit
        self.best = math.inf
        self.best_epoch: int | None = None
        self.new_best = False

    def before_fit(self, learn) -> None:
        if self.monitor == "valid_loss" and learn.dls.n_valid == 0:
            raise ConfigError(
                f"{type(self).__name__} watches valid_loss, but there are no validation rows: "
                "keep some (valid_pct > 0) or monitor='train_loss'"
            )
        if self.reset_on_fit:
            self.best, self.best_epoch = math.inf, None

    def __call__(self, learn, epoch: int) -> None:
        self._track(learn.recorder.values[-1][_MONITORS.index(self.monitor)], epoch)

    def _track(self, value: float, epoch: int) -> None:
        self.new_best = bool(value < self.best - self.min_delta)
        if self.new_best:
            self.best, self.best_epoch = float(value), epoch

    def after_fit(self, learn) -> None:
        pass


class EarlyStoppingCallback(TrackerCallback):
    """Ends the fit when ``monitor`` has not improved for ``patience`` epochs (fastai's ``EarlyStoppingCallback``)."""

    order = TrackerCallback.order + 3

    def __init__(
        self, monitor: str = "valid_loss", min_delta: float = 0.0, patience: int = 1, reset_on_fit: bool = True
    ):
        super().__init__(monitor, min_delta, reset_on_fit)
        if not (isinstance(patience, int) and patience >= 1):
            raise ConfigError(f"patience must be a positive integer, got {patience!r}")
        self.patience = patience
        self.wait = 0
        self.stopped_epoch: int | None = None

    def before_fit(self, learn) -> None:
        super().before_fit(learn)
        self.wait, self.stopped_epoch = 0, None

    def replay(self, learn, start_epoch: int) -> None:
        """A resumed fit (``start_epoch > 0``) counts the epochs its checkpoint already trained, from the
        restored history, so that the patience runs on from where the interrupted fit left it."""
        history = learn.recorder.values[-start_epoch:] if start_epoch > 0 else []
        for epoch, values in enumerate(history):
            self._track(values[_MONITORS.index(self.monitor)], epoch)
            self.wait = 0 if self.new_best else self.wait + 1

    def __call__(self, learn, epoch: int) -> None:
        super().__call__(learn, epoch)
        self.wait = 0 if self.new_best else self.wait + 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            if learn.log is not None:
                learn.log(f"No improvement since epoch {epoch - self.wait}: early stopping")
            raise CancelFitException()


class SaveModelCallback(TrackerCallback):
    """Keeps the weights of the best epoch and puts them back when the fit ends (fastai's ``SaveModelCallback``).

    With ``fname`` (default ``"model"``, as fastai) the best epoch is written with ``learn.save(fname)``
    and read back with ``learn.load(fname)``; with ``fname=None`` it is kept in memory. ``with_opt``
    also brings back that epoch's optimiser state.
    """

    def __init__(
        self,
        monitor: str = "valid_loss",
        min_delta: float = 0.0,
        fname: str | None = "model",
        with_opt: bool = False,
        reset_on_fit: bool = True,
    ):
        super().__init__(monitor, min_delta, reset_on_fit)
        self.fname, self.with_opt = fname, with_opt
        self._kept: tuple[np.ndarray, np.ndarray, np.ndarray, int] | None = None

    def before_fit(self, learn) -> None:
        super().before_fit(learn)
        self._kept = None

    def __call__(self, learn, epoch: int) -> None:
        super().__call__(learn, epoch)
        if not self.new_best:
            return
        if learn.log is not None:
            learn.log(f"Better model found at epoch {epoch} with {self.monitor} value: {self.best:.6f}.")
        if self.fname is not None:
            learn.save(self.fname, with_opt=self.with_opt)
            return
        learn.backend.sync()  # the weights of this epoch, on the host (GPU backend, deferred rows)
        s = learn.opt_state
        self._kept = (learn.model.params.copy(), s.exp_avg.copy(), s.exp_avg_sq.copy(), s.step)

    def after_fit(self, learn) -> None:
        if self.best_epoch is None:
            return
        if self.fname is not None:
            learn.load(self.fname, with_opt=self.with_opt)
        elif self._kept is not None:
            params, exp_avg, exp_avg_sq, step = self._kept
            learn.model.params[...] = params
            if self.with_opt:
                learn.opt_state.exp_avg[...], learn.opt_state.exp_avg_sq[...] = exp_avg, exp_avg_sq
                learn.opt_state.step = step
            self._kept = None


@contextlib.contextmanager
def attached(learn, cbs, start_epoch: int = 0) -> Iterator[None]:
    """Run one fit with ``cbs`` added to ``learn.after_epoch``: ``before_fit`` first, ``after_fit`` once the
    fit ends normally or is cancelled (not when it fails), then the callbacks are removed again.

    A fit resumed at ``start_epoch`` also calls ``replay(learn, start_epoch)`` on callbacks that have it
    (early stopping: its patience counts the epochs before the interruption)."""
    added = sorted(list(cbs or ()), key=lambda cb: getattr(cb, "order", 0))
    learn.after_epoch.extend(added)
    try:
        for cb in learn.after_epoch:
            if hasattr(cb, "before_fit"):
                cb.before_fit(learn)
            if start_epoch > 0 and hasattr(cb, "replay"):
                cb.replay(learn, start_epoch)
        yield
        for cb in learn.after_epoch:
            if hasattr(cb, "after_fit"):
                cb.after_fit(learn)
    finally:
        for cb in added:
            learn.after_epoch.remove(cb)
