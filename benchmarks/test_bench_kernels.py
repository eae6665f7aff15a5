"""pytest-benchmark suites for the CPU kernels: forward+backward, each optimiser update (dense and
sparse), and whole epochs, over a few problem sizes. Compile time is kept out: every kernel runs
once before it is timed.

Not part of the test run (``testpaths`` is ``tests/``). Run with::

    python -m pytest benchmarks --benchmark-only
    python -m pytest benchmarks --benchmark-only -k "epoch and ml100k"   # a subset

The machine may be shared: compare ``min`` columns, and rerun before trusting a difference.
"""

from __future__ import annotations

import numpy as np
import pytest

from mfscratch.kernels import cpu
from mfscratch.model import init_params

# (name, n_users, n_items, k, n_ratings): ML-100k's shape, and ten and a hundred times it.
SIZES = [
    ("ml100k", 944, 1665, 50, 80_000),
    ("x10", 9_440, 16_650, 50, 800_000),
    ("ml25m_k64", 162_541, 59_047, 64, 2_000_000),  # ML-25M's tables, a slice of its ratings
]
IDS = [s[0] for s in SIZES]


class Problem:
    """Tables, optimiser state and a rating set of one size, with the per-step schedule."""

    def __init__(self, n_users, n_items, k, n_ratings, bs=64, seed=0):
        rng = np.random.default_rng(seed)
        self.shape = (n_users, n_items, k)
        self.params = init_params(n_users, n_items, k, rng)
        self.grads = np.zeros_like(self.params)
        self.m, self.v = np.zeros_like(self.params), np.zeros_like(self.params)
        # Power-law popularity, as in real data (and as mfscratch.synthetic draws it).
        self.users = (rng.zipf(1.3, n_ratings) % n_users).astype(np.int32)
        self.items = (rng.zipf(1.5, n_ratings) % n_items).astype(np.int32)
        self.ratings = rng.integers(1, 6, n_ratings).astype(np.float32)
        self.order = rng.permutation(n_ratings)
        self.bs = bs
        n_steps = n_ratings // bs
        self.lrs, self.moms = np.full(n_steps, 1e-3), np.full(n_steps, 0.9)
        self.losses = np.empty(n_steps)

    def tables(self, flat):
        return cpu.split_flat(flat, *self.shape)

    def epoch_args(self, is_adam=True):
        return (
            *self.shape,
            self.users,
            self.items,
            self.ratings,
            self.order,
            self.bs,
            self.lrs,
            self.moms,
            0,
            is_adam,
            True,
            0.99,
            1e-5,
            0.1,
            True,
            0.0,
            5.5,
            True,
            self.losses,
        )


@pytest.fixture(scope="module", params=SIZES, ids=IDS)
def problem(request):
    _, n_users, n_items, k, n_ratings = request.param
    return Problem(n_users, n_items, k, n_ratings)


@pytest.mark.parametrize("bs", [64, 1024])
def test_forward_backward(benchmark, problem, bs):
    """One batch: predictions, loss and the scatter-added gradient."""
    rows = problem.order[:bs]
    u, i, r = problem.users[rows], problem.items[rows], problem.ratings[rows]
    args = (*problem.tables(problem.params), u, i, r, 0.0, 5.5, True, *problem.tables(problem.grads))
    cpu.forward_backward(*args)
    benchmark(cpu.forward_backward, *args)


@pytest.mark.parametrize("variant", ["serial", "parallel"])
def test_adam_update_dense(benchmark, problem, variant):
    """One exact-mode Adam step over every parameter (the cost that bounds exact mode)."""
    kernel = cpu.adam_update_dense if variant == "serial" else cpu.adam_update_dense_parallel
    args = (problem.params, problem.grads, problem.m, problem.v, 1e-3, 0.9, 0.99, 1e-5, 0.1, True, 5)
    kernel(*args)
    benchmark(kernel, *args)


@pytest.mark.parametrize("variant", ["serial", "parallel"])
def test_sgd_update_dense(benchmark, problem, variant):
    kernel = cpu.sgd_update_dense if variant == "serial" else cpu.sgd_update_dense_parallel
    args = (problem.params, problem.grads, problem.m, 1e-3, 0.9, 0.1, True, True)
    kernel(*args)
    benchmark(kernel, *args)


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_sparse_update_steps(benchmark, problem, opt):
    """Sparse mode's update cost: 100 steps of forward+backward+lazy update (one chunk of an epoch)."""
    small = Problem.__new__(Problem)
    small.__dict__.update(problem.__dict__)
    small.order = problem.order[: 100 * problem.bs]
    small.lrs, small.moms, small.losses = problem.lrs[:100], problem.moms[:100], problem.losses[:100]
    args = (problem.params, problem.m, problem.v, *small.epoch_args(opt == "adam"), 1)
    cpu.train_epoch_sparse(*args)
    benchmark(cpu.train_epoch_sparse, *args)


def _epoch_bench(benchmark, kernel, args):
    kernel(*args)  # compile
    benchmark.pedantic(kernel, args=args, rounds=3, iterations=1, warmup_rounds=0)


@pytest.mark.parametrize("backend", ["serial", "parallel"])
def test_epoch_exact(benchmark, problem, backend):
    if problem.shape[0] > 1_000:
        pytest.skip("exact mode beyond ML-100k: every parameter at every step; one epoch is minutes")
    kernel = cpu.train_epoch_dense if backend == "serial" else cpu.train_epoch_dense_parallel
    _epoch_bench(benchmark, kernel, (problem.params, problem.grads, problem.m, problem.v, *problem.epoch_args()))


def test_epoch_exact_deferred(benchmark, problem):
    """Exact mode with deferred rows (the CPU backends' default): one whole epoch, flushed at its end."""
    if problem.shape[0] > 1_000:
        pytest.skip("exact mode beyond ML-100k: every parameter at every step")
    n_users, n_items, _ = problem.shape
    n_steps = problem.losses.shape[0]
    args = (
        problem.params,
        problem.m,
        problem.v,
        *problem.epoch_args(),
        np.zeros(n_users, dtype=np.int64),
        np.zeros(n_items, dtype=np.int64),
        np.zeros((4, n_steps)),
        0,
        True,
    )
    _epoch_bench(benchmark, cpu.train_epoch_deferred, args)


@pytest.mark.parametrize("backend", ["serial", "hogwild"])
def test_epoch_sparse(benchmark, problem, backend):
    import numba

    kernel = cpu.train_epoch_sparse if backend == "serial" else cpu.train_epoch_sparse_parallel
    n_chunks = 1 if backend == "serial" else numba.get_num_threads()
    _epoch_bench(benchmark, kernel, (problem.params, problem.m, problem.v, *problem.epoch_args(), n_chunks))


@pytest.mark.parametrize("backend", ["serial", "blocks"])
def test_epoch_sgd_per_rating(benchmark, problem, backend):
    """Per-rating SGD (sparse, bs 1): serially over the order, or on the backend's stratified blocks."""
    import numba

    from mfscratch.backends import per_rating_groups

    n_users, n_items, k = problem.shape
    n = problem.order.shape[0]
    threads = 1 if backend == "serial" else numba.get_num_threads()
    groups = per_rating_groups(problem.params.nbytes, threads)
    order, block_start = problem.order, np.array([0, n])
    if groups > 1:
        block = np.empty(n, dtype=np.int32)
        block_start = cpu.block_index(
            problem.users,
            problem.items,
            cpu.balanced_groups(problem.users, n_users, groups),
            cpu.balanced_groups(problem.items, n_items, groups),
            groups,
            block,
        )
        order = np.empty_like(problem.order)
        cpu.block_layout(problem.order, block, groups * groups, order)
    kernel = cpu.train_epoch_sgd_per_rating if threads == 1 else cpu.train_epoch_sgd_per_rating_parallel
    args = (
        problem.params,
        n_users,
        n_items,
        k,
        problem.users,
        problem.items,
        problem.ratings,
        order,
        block_start,
        groups,
        np.array([1e-3]),
        0.1,
        True,
        0.0,
        5.5,
        True,
        np.empty(0),
    )
    _epoch_bench(benchmark, kernel, args)
