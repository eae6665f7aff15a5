"""The records the kernels take: small named tuples instead of long lists of positional arguments.

Numba passes a named tuple to a compiled function as one argument, typed field by field, and a
field read costs nothing in the compiled loop. The CPU kernels (``kernels/cpu``) and their CUDA
twins (``kernels/cuda``) take the same records, so a backend builds each record once per fit or
per epoch and hands the same one to either. Field names are the symbols of ``docs/math.md``.

Three plain-Python functions are the one copy of what both kernel packages need: :func:`step_scalars`
(a step's optimiser scalars), :func:`sigmoid` and :func:`split_flat` (the flat buffer cut into its
tables); each package compiles them (``njit`` on the CPU, device functions on the GPU).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "Shape",
    "Tables",
    "Moments",
    "Ratings",
    "YRange",
    "Hyper",
    "Steps",
    "BlockLayout",
    "Groups",
    "EpochOut",
    "StepLrs",
    "LossSummary",
    "StepScalars",
    "step_scalars",
    "sigmoid",
    "split_flat",
    "hyper_of",
    "y_range_of",
]


class Shape(NamedTuple):
    """The table sizes: ``n_users`` rows of P and b, ``n_items`` rows of Q and c, ``n_factors`` = k."""

    n_users: int
    n_items: int
    n_factors: int


class Tables(NamedTuple):
    """The four tables of a flat buffer as views: P, Q (2-D) and b, c (1-D); gradients use the same record."""

    u_weight: np.ndarray
    i_weight: np.ndarray
    u_bias: np.ndarray
    i_bias: np.ndarray


class Moments(NamedTuple):
    """The optimiser's running moments m and v, flat like ``params`` (``exp_avg_sq`` is unused by SGD)."""

    exp_avg: np.ndarray
    exp_avg_sq: np.ndarray


class Ratings(NamedTuple):
    """Rating rows: ``users[r]``, ``items[r]`` (codes) and ``ratings[r]`` (the target y)."""

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray


class YRange(NamedTuple):
    """The output range: ``pred = lo + (hi - lo) s`` when ``has_range``, else ``pred = x``."""

    lo: float
    hi: float
    has_range: bool


class Hyper(NamedTuple):
    """An optimiser's fixed hyper-parameters: Adam or SGD, momentum or not, sqr_mom, eps, wd, decay kind."""

    is_adam: bool
    use_mom: bool
    sqr_mom: float
    eps: float
    wd: float
    decouple_wd: bool


class Steps(NamedTuple):
    """An epoch's steps: step ``s`` trains rows ``order[s bs:(s+1) bs]`` with ``lrs[s]``, ``moms[s]`` and
    Adam's step count ``t = step0 + s + 1`` (``step0``: optimiser steps taken before the epoch)."""

    order: np.ndarray
    bs: int
    lrs: np.ndarray
    moms: np.ndarray
    step0: int


class BlockLayout(NamedTuple):
    """Per-rating SGD's epoch: ``order`` laid out in ``n_groups**2`` blocks, block ``p`` is
    ``order[block_start[p]:block_start[p + 1]]``; an empty ``order`` is the ratings as stored."""

    order: np.ndarray
    block_start: np.ndarray
    n_groups: int


class Groups(NamedTuple):
    """``user_group[u]`` and ``item_group[i]``, each in ``0..n_groups-1``: the rows of per-rating SGD's blocks."""

    user_group: np.ndarray
    item_group: np.ndarray
    n_groups: int


class EpochOut(NamedTuple):
    """What an epoch kernel writes besides the weights: ``losses[s]`` (one per step; empty: none kept)
    and ``progress`` (one int64 slot per lane of work, each the steps its lane has done: for a bar).
    The per-rating kernels also take a :class:`LossSummary` as ``losses``: what a long epoch keeps."""

    losses: Any
    progress: np.ndarray


class StepLrs(NamedTuple):
    """An epoch's learning rates for the per-rating kernels: step ``s`` of the epoch (0-based) trains at
    ``lrs[s]`` (one a step), at ``lrs[0]`` (one element: every step), or, with ``lrs`` empty, at
    ``fit_one_cycle``'s rate for step ``first_step + s`` of ``total_steps``, made in the kernel
    (``schedule.one_cycle_lr``: ``lr_start = lr_max / div``, ``lr_end = lr_max / div_final``), so that
    no per-step array exists (at 20M steps an epoch it is 160 MB)."""

    lrs: np.ndarray
    total_steps: int
    first_step: int
    pct_start: float
    lr_start: float
    lr_max: float
    lr_end: float


class LossSummary(NamedTuple):
    """What a per-rating epoch keeps of its losses instead of one a step (:class:`EpochOut`'s ``losses``).

    ``sample[j]``: the loss of step ``sample_steps[j]`` (sorted, int64); ``tail[s - tail_start]``: the
    losses of steps ``tail_start..`` (the epoch's last ``len(tail)``); ``sums[b]``: the float64 sum of
    block ``b``'s losses in step order; ``bad_losses[b]``: the non-finite loss block ``b`` stopped at
    (written only then). Empty ``sums`` and ``bad_losses``: not written.
    """

    sample_steps: np.ndarray
    sample: np.ndarray
    tail: np.ndarray
    tail_start: int
    sums: np.ndarray
    bad_losses: np.ndarray


class StepScalars(NamedTuple):
    """The scalars of one optimiser step (float64; the CPU kernels round them to the tables' dtype).

    ``decay = 1 - lr wd`` and ``l2 = 0`` for decoupled weight decay, ``decay = 1`` and ``l2 = wd`` for L2;
    ``beta1 = mom``, ``beta2 = sqr_mom``; ``step_size = lr / (1 - mom^t)``, ``debias2 = 1 - sqr_mom^t``.
    """

    decay: float
    l2: float
    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    step_size: float
    debias2: float
    eps: float
    lr: float


def step_scalars(lr, mom, t, hyper):
    """The :class:`StepScalars` of the step with learning rate ``lr``, momentum ``mom`` and step count ``t``."""
    if hyper.decouple_wd:
        decay, l2 = 1.0 - lr * hyper.wd, 0.0
    else:
        decay, l2 = 1.0, hyper.wd
    sqr_mom = hyper.sqr_mom
    return StepScalars(
        decay,
        l2,
        mom,
        1.0 - mom,
        sqr_mom,
        1.0 - sqr_mom,
        lr / (1.0 - mom**t),
        1.0 - sqr_mom**t,
        hyper.eps,
        lr,
    )


def sigmoid(x):
    """``s = 1 / (1 + exp(-x))``, branching on the sign so that ``exp`` never overflows.

    Plain Python; the CUDA kernels compile it (under the simulator it runs as Python, where ``exp``
    raises on overflow). The CPU kernels use the branch-free form, ``kernels.cpu.core.sigmoid``."""
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    ex = math.exp(x)
    return ex / (1.0 + ex)


def split_flat(params, shape):
    """The four tables inside the flat buffer ``params = P | Q | b | c`` as a :class:`Tables` of views.

    Plain Python on NumPy or device arrays; compiled by both kernel packages as well.
    """
    n_users, n_items, k = shape.n_users, shape.n_items, shape.n_factors
    a = n_users * k
    b = a + n_items * k
    c = b + n_users
    return Tables(
        params[:a].reshape((n_users, k)), params[a:b].reshape((n_items, k)), params[b:c], params[c : c + n_items]
    )


def hyper_of(opt) -> Hyper:
    """The :class:`Hyper` record of an ``optim.Adam`` or ``optim.SGD``, with the types the kernels compile for."""
    return Hyper(
        opt.name == "adam",
        bool(opt.uses_momentum),
        float(opt.sqr_mom),
        float(opt.eps),
        float(opt.wd),
        bool(opt.decouple_wd),
    )


def y_range_of(y_range) -> YRange:
    """The :class:`YRange` of a model's ``y_range`` (``None``: no range, ``pred = x``)."""
    if y_range is None:
        return YRange(0.0, 1.0, False)
    return YRange(float(y_range[0]), float(y_range[1]), True)
