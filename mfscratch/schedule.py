"""Learning-rate and momentum schedules, as per-step arrays the kernels consume.

fastai's one-cycle (``callback/schedule.py``): with ``pos = b / total_steps`` for batch ``b``
(0-based, counted across all epochs, set before that batch's forward pass)::

    cos(start, end, pos) = start + (1 + cos(pi (1 - pos))) (end - start) / 2
    lr(pos)  = cos(lr_max/div, lr_max, pos/pct_start)                              if pos < pct_start
             = cos(lr_max, lr_max/div_final, (pos - pct_start)/(1 - pct_start))    otherwise
    mom(pos) = the same two phases from moms[0] to moms[1] to moms[2]
"""

from __future__ import annotations

import math

import numpy as np

from .kernels.records import StepLrs

__all__ = ["sched_cos", "combined_cos", "one_cycle", "one_cycle_lr", "constant", "OneCycle", "Constant"]


def sched_cos(start: float, end: float, pos: np.ndarray) -> np.ndarray:
    """Cosine annealing from ``start`` (pos 0) to ``end`` (pos 1)."""
    return start + (1.0 + np.cos(math.pi * (1.0 - pos))) * (end - start) / 2.0


def combined_cos(pct: float, start: float, middle: float, end: float, pos: np.ndarray) -> np.ndarray:
    """Two cosine phases: ``start -> middle`` over ``[0, pct)``, ``middle -> end`` over ``[pct, 1]``."""
    pos = np.asarray(pos, dtype=np.float64)
    out = np.empty_like(pos)
    first = pos < pct
    out[first] = sched_cos(start, middle, pos[first] / pct) if pct > 0 else middle
    out[~first] = sched_cos(middle, end, (pos[~first] - pct) / (1.0 - pct))
    return out


#: Steps of the one-cycle schedule made at a time: the temporaries of a chunk stay in cache.
_CHUNK = 1 << 16


def one_cycle(
    total_steps: int,
    lr_max: float,
    div: float = 25.0,
    div_final: float = 1e5,
    pct_start: float = 0.25,
    moms=(0.95, 0.85, 0.95),
    start: int = 0,
    stop: int | None = None,
    with_moms: bool = True,
):
    """Per-step ``(lrs, moms)`` float64 arrays for ``fit_one_cycle``: steps ``start..stop-1`` of ``total_steps``
    (``with_moms=False``: the momenta are left out, an empty array).

    The whole schedule by default. The learner asks for one epoch's steps at a time: with batches
    of one rating a whole fit's schedule is 16 bytes a step (5 epochs of ML-25M: 2 GB). A slice
    holds the same numbers as the same steps of the whole.

    The numbers are :func:`combined_cos`'s, bit for bit, made faster: the steps go in chunks of
    ``_CHUNK`` whose temporaries stay in cache, the phase boundary is found by a binary search (the
    positions increase), and the cosine term ``1 + cos(pi (1 - p))``, the same for the learning
    rate and the momentum, is computed once for both (20M steps an epoch: a tenth of the time).
    """
    stop = total_steps if stop is None else stop
    n = max(stop - start, 0)
    lrs, mom = np.empty(n, dtype=np.float64), np.empty(n if with_moms else 0, dtype=np.float64)
    ends = ((lr_max / div, lr_max, lr_max / div_final), tuple(moms))
    pct = pct_start
    scratch = np.empty(min(n, _CHUNK), dtype=np.float64)
    for a in range(0, n, _CHUNK):
        b = min(a + _CHUNK, n)
        pos = np.arange(start + a, start + b, dtype=np.float64) / max(total_steps, 1)
        split = int(np.searchsorted(pos, pct, side="left"))  # pos < pct on [0, split)
        for lo, hi, phase in ((0, split, 0), (split, b - a, 1)):
            if lo == hi:
                continue
            if phase == 0 and not pct > 0:  # combined_cos's "middle" for pos < 0 (never reached: pos >= 0)
                lrs[a + lo : a + hi] = ends[0][1]
                if with_moms:
                    mom[a + lo : a + hi] = ends[1][1]
                continue
            term = scratch[: hi - lo]
            if phase == 0:
                np.divide(pos[lo:hi], pct, out=term)
            else:
                np.subtract(pos[lo:hi], pct, out=term)
                np.divide(term, 1.0 - pct, out=term)
            np.subtract(1.0, term, out=term)
            np.multiply(math.pi, term, out=term)
            np.cos(term, out=term)
            np.add(1.0, term, out=term)  # sched_cos's (1 + cos(pi (1 - p)))
            for out, (first, middle, last) in ((lrs, ends[0]), (mom, ends[1]))[: 2 if with_moms else 1]:
                s0, s1 = (first, middle) if phase == 0 else (middle, last)
                dest = out[a + lo : a + hi]
                np.multiply(term, s1 - s0, out=dest)
                np.divide(dest, 2.0, out=dest)
                np.add(s0, dest, out=dest)
    return lrs, mom


def one_cycle_lr(step: int, total_steps: int, pct_start: float, start: float, middle: float, end: float) -> float:
    """:func:`one_cycle`'s value at one step: ``start -> middle -> end`` (the learning rates' ends are
    ``lr_max / div``, ``lr_max``, ``lr_max / div_final``), the same float64 operations in the same order,
    so the same float bit for bit (``math.cos`` and NumPy's ``cos`` both call the C library's ``cos``).

    Plain Python; the per-rating kernels compile it to make each step's learning rate themselves
    (``records.StepLrs``) instead of reading a per-step array.
    """
    pos = float(step) / max(total_steps, 1)
    if pos < pct_start:
        s0, s1 = start, middle
        term = pos / pct_start
    else:
        s0, s1 = middle, end
        term = (pos - pct_start) / (1.0 - pct_start)
    term = 1.0 + math.cos(math.pi * (1.0 - term))  # sched_cos's (1 + cos(pi (1 - p)))
    return s0 + term * (s1 - s0) / 2.0


def constant(total_steps: int, lr: float, mom: float, start: int = 0, stop: int | None = None):
    """Per-step arrays for ``fit``: the same learning rate and momentum at every step (``start..stop-1``)."""
    n = (total_steps if stop is None else stop) - start
    return np.full(n, lr, dtype=np.float64), np.full(n, mom, dtype=np.float64)


class OneCycle:
    """A ``fit_one_cycle``'s schedule, made a slice at a time: ``sched(a, b)`` is :func:`one_cycle`'s steps
    ``a..b-1`` (``with_moms=False``: the learning rates alone), ``sched.at(steps)`` the same numbers at
    any steps (the recorder's sample of a long epoch)."""

    def __init__(
        self, total_steps: int, lr_max: float, div=25.0, div_final=1e5, pct_start=0.25, moms=(0.95, 0.85, 0.95)
    ):
        # Python floats: the slices, ``at`` and the per-rating kernels (``step_lrs``) then all compute in
        # float64 from the same numbers, whatever type the caller passed (a NumPy float32 lr included).
        self.total_steps, self.lr_max, self.div, self.div_final = (
            int(total_steps),
            float(lr_max),
            float(div),
            float(div_final),
        )
        self.pct_start, self.moms = float(pct_start), tuple(float(m) for m in moms)

    def __call__(self, start: int, stop: int, with_moms: bool = True):
        return one_cycle(
            self.total_steps, self.lr_max, self.div, self.div_final, self.pct_start, self.moms, start, stop, with_moms
        )

    def step_lrs(self, first_step: int) -> StepLrs:
        """The learning rates of the epoch starting at ``first_step``, made in the per-rating kernels
        (:func:`one_cycle_lr`): the same floats as ``self(first_step, ...)[0]``, with no per-step array."""
        lr_max = self.lr_max
        return StepLrs(
            np.empty(0, dtype=np.float64),
            self.total_steps,
            int(first_step),
            self.pct_start,
            lr_max / self.div,
            lr_max,
            lr_max / self.div_final,
        )

    def at(self, steps: np.ndarray):
        """``(lrs, moms)`` at the given steps: the same floats as the slices hold (``combined_cos``'s)."""
        pos = np.asarray(steps, dtype=np.float64) / max(self.total_steps, 1)
        lr_max, pct, m = self.lr_max, self.pct_start, self.moms
        lrs = combined_cos(pct, lr_max / self.div, lr_max, lr_max / self.div_final, pos)
        return lrs, combined_cos(pct, m[0], m[1], m[2], pos)


class Constant:
    """A ``fit``'s schedule, with :class:`OneCycle`'s calls: the same learning rate and momentum at every step."""

    def __init__(self, total_steps: int, lr: float, mom: float):
        self.total_steps, self.lr, self.mom = total_steps, lr, mom

    def __call__(self, start: int, stop: int, with_moms: bool = True):
        lrs, moms = constant(self.total_steps, self.lr, self.mom, start, stop)
        return lrs, moms if with_moms else moms[:0]

    def step_lrs(self, first_step: int) -> StepLrs:
        """The learning rates of an epoch for the per-rating kernels: one for every step."""
        return StepLrs(
            np.full(1, self.lr, dtype=np.float64), int(self.total_steps), int(first_step), 0.0, 0.0, 0.0, 0.0
        )

    def at(self, steps: np.ndarray):
        n = len(steps)
        return np.full(n, self.lr, dtype=np.float64), np.full(n, self.mom, dtype=np.float64)
