"""A small problem driven straight through the CPU kernels, with the records they take.

Shared by the kernel tests (``test_kernels.py``, ``test_deferred.py``): random codes with repeats,
weights far from zero (so that rows differ), and one helper per epoch kernel that returns
``(params, exp_avg, exp_avg_sq, losses)`` after one epoch from copies of the given state.
"""

from __future__ import annotations

import numpy as np

from mfscratch.kernels import cpu
from mfscratch.kernels.records import BlockLayout, EpochOut, Hyper, Moments, Ratings, Shape, Steps, YRange
from mfscratch.model import EmbeddingDotBias

N_USERS, N_ITEMS, K = 13, 17, 5
SHAPE = Shape(N_USERS, N_ITEMS, K)
RANGE, NO_RANGE = YRange(0.0, 5.5, True), YRange(0.0, 1.0, False)


def problem(dtype=np.float32, n_ratings=400, seed=0):
    """``(data, model)``: ratings with repeated users and items, and a model with 0.3-sized weights."""
    rng = np.random.default_rng(seed)
    data = Ratings(
        rng.integers(0, N_USERS, n_ratings).astype(np.int32),
        rng.integers(0, N_ITEMS, n_ratings).astype(np.int32),
        rng.integers(1, 6, n_ratings).astype(np.float32),
    )
    model = EmbeddingDotBias(K, N_USERS, N_ITEMS, y_range=(0.0, 5.5), seed=seed, dtype=dtype)
    model.params[:] = rng.standard_normal(model.params.size) * 0.3
    return data, model


def hyper(is_adam=True, use_mom=True, wd=0.1, decouple_wd=True) -> Hyper:
    return Hyper(is_adam, use_mom, 0.99, 1e-5, wd, decouple_wd)


def schedule(n_steps, lr=1e-2):
    """A falling learning rate and a falling momentum, one per step."""
    return np.linspace(lr, lr / 3, n_steps), np.linspace(0.95, 0.85, n_steps)


def run_epoch(
    kind, params, data, order, bs, hyper, y_range=RANGE, lr=1e-2, step0=3, moments=None, n_ranges=1, shape=SHAPE
):
    """One epoch of ``kind`` (``dense``, ``dense_parallel``, ``deferred``, ``sparse``, ``sparse_parallel``)
    from copies of ``params`` (and ``moments``, zero by default); returns ``(params, m, v, losses)``."""
    params = params.copy()
    m, v = (np.zeros_like(params), np.zeros_like(params)) if moments is None else (a.copy() for a in moments)
    n_steps = len(order) // bs
    lrs, moms = schedule(n_steps, lr)
    steps = Steps(np.asarray(order, dtype=np.int64), bs, lrs, moms, step0)
    out = EpochOut(np.empty(n_steps), np.zeros(n_ranges, dtype=np.int64))
    moments = Moments(m, v)
    if kind.startswith("dense"):
        kernel = cpu.train_epoch_dense if kind == "dense" else cpu.train_epoch_dense_parallel
        n = kernel(params, np.zeros_like(params), moments, shape, data, steps, hyper, y_range, out)
    elif kind == "deferred":
        n = cpu.train_epoch_deferred(params, moments, shape, data, steps, hyper, y_range, out)
    else:
        kernel = cpu.train_epoch_sparse if kind == "sparse" else cpu.train_epoch_sparse_parallel
        n = kernel(params, moments, shape, data, steps, hyper, y_range, out, n_ranges)
    return params, m, v, out.losses[:n]


def layout(data, order, n_groups):
    """``order`` in per-rating SGD's blocks: ``BlockLayout(blocked, block_start, n_groups)``."""
    from mfscratch.kernels.records import Groups

    groups = Groups(
        cpu.balanced_groups(data.users, N_USERS, n_groups), cpu.balanced_groups(data.items, N_ITEMS, n_groups), n_groups
    )
    block = np.empty(len(data.users), dtype=np.uint16)
    full_start = cpu.block_index(data, groups, block)
    blocked = np.empty(len(order) or len(data.users), dtype=np.int64)
    block_start = cpu.block_layout(np.asarray(order, dtype=np.int64), block, n_groups**2, blocked)
    if len(order) in (0, len(data.users)):
        np.testing.assert_array_equal(block_start, full_start)
    return BlockLayout(blocked, block_start, n_groups), groups


def per_rating_epoch(kernel, params, data, order, lrs, wd=0.1, y_range=RANGE, n_groups=1, record=True):
    """One per-rating epoch from a copy of ``params``; returns ``(params, losses)``."""
    params = params.copy()
    order = np.asarray(order, dtype=np.int64)
    if n_groups > 1:
        blocks, _ = layout(data, order, n_groups)
    else:
        blocks = BlockLayout(order, np.array([0, len(order) or len(data.users)], dtype=np.int64), 1)
    n_steps = len(order) or len(data.users)
    losses = np.full(n_steps if record else 0, np.nan)
    n = kernel(params, SHAPE, data, blocks, lrs, wd, y_range, EpochOut(losses, np.zeros(1, dtype=np.int64)))
    return params, losses[:n]
