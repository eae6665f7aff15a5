"""pytest-benchmark suites for the CPU kernels: forward+backward, each optimiser update (dense and
sparse), and whole epochs, over a few problem sizes. Compile time is kept out: every kernel runs
once before it is timed.

Not part of the test run (``testpaths`` is ``tests/``). Run with::

    python -m pytest benchmarks --benchmark-only
    python -m pytest benchmarks --benchmark-only -k "epoch and ml100k"   # a subset

The machine may be shared: compare ``min`` columns, and rerun before trusting a difference.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

from mfscratch.kernels import cpu
from mfscratch.kernels.records import (
    BlockLayout,
    EpochOut,
    Groups,
    Hyper,
    Moments,
    Ratings,
    Shape,
    Steps,
    YRange,
    step_scalars,
)
from mfscratch.model import init_params

# (name, n_users, n_items, k, n_ratings): ML-100k's shape, and ten and a hundred times it.
SIZES = [
    ("ml100k", 944, 1665, 50, 80_000),
    ("x10", 9_440, 16_650, 50, 800_000),
    ("ml25m_k64", 162_541, 59_047, 64, 2_000_000),  # ML-25M's tables, a slice of its ratings
]
IDS = [s[0] for s in SIZES]
RANGE = YRange(0.0, 5.5, True)


class Problem:
    """Tables, optimiser state and a rating set of one size, with the per-step schedule, as records."""

    def __init__(self, n_users, n_items, k, n_ratings, bs=64, seed=0):
        rng = np.random.default_rng(seed)
        self.shape = Shape(n_users, n_items, k)
        self.params = init_params(n_users, n_items, k, rng)
        self.grads = np.zeros_like(self.params)
        self.moments = Moments(np.zeros_like(self.params), np.zeros_like(self.params))
        # Power-law popularity, as in real data (and as mfscratch.synthetic draws it).
        self.data = Ratings(
            (rng.zipf(1.3, n_ratings) % n_users).astype(np.int32),
            (rng.zipf(1.5, n_ratings) % n_items).astype(np.int32),
            rng.integers(1, 6, n_ratings).astype(np.float32),
        )
        self.order = rng.permutation(n_ratings)
        n_steps = n_ratings // bs
        self.steps = Steps(self.order, bs, np.full(n_steps, 1e-3), np.full(n_steps, 0.9), 0)
        self.out = EpochOut(np.empty(n_steps), np.zeros(max(2, numba.get_num_threads()), dtype=np.int64))

    def tables(self, flat):
        return cpu.split_flat(flat, self.shape)

    def epoch_args(self, is_adam=True, steps=None):
        """``(shape, data, steps, hyper, y_range, out)``: what every epoch kernel takes after its buffers."""
        hyper = Hyper(is_adam, True, 0.99, 1e-5, 0.1, True)
        return (self.shape, self.data, steps or self.steps, hyper, RANGE, self.out)


@pytest.fixture(scope="module", params=SIZES, ids=IDS)
def problem(request):
    _, n_users, n_items, k, n_ratings = request.param
    return Problem(n_users, n_items, k, n_ratings)


@pytest.mark.parametrize("bs", [64, 1024])
def test_forward_backward(benchmark, problem, bs):
    """One batch: predictions, loss and the scatter-added gradient."""
    rows = problem.order[:bs]
    batch = Ratings(*(a[rows] for a in problem.data))
    args = (problem.tables(problem.params), batch, RANGE, problem.tables(problem.grads))
    cpu.forward_backward(*args)
    benchmark(cpu.forward_backward, *args)


def test_adam_update_dense(benchmark, problem):
    """One exact-mode Adam step over every parameter (the cost that bounds exact mode)."""
    sc = step_scalars(1e-3, 0.9, 5, Hyper(True, True, 0.99, 1e-5, 0.1, True))
    args = (problem.params, problem.grads, *problem.moments, sc)
    cpu.adam_update_dense(*args)
    benchmark(cpu.adam_update_dense, *args)


def test_sgd_update_dense(benchmark, problem):
    sc = step_scalars(1e-3, 0.9, 5, Hyper(False, True, 0.0, 0.0, 0.1, True))
    args = (problem.params, problem.grads, problem.moments.exp_avg, sc, True)
    cpu.sgd_update_dense(*args)
    benchmark(cpu.sgd_update_dense, *args)


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_sparse_update_steps(benchmark, problem, opt):
    """Sparse mode's update cost: 100 steps of forward+backward+lazy update (a slice of an epoch)."""
    st = problem.steps
    steps = st._replace(order=st.order[: 100 * st.bs], lrs=st.lrs[:100], moms=st.moms[:100])
    args = (problem.params, problem.moments, *problem.epoch_args(opt == "adam", steps), 1)
    cpu.train_epoch_sparse(*args)
    benchmark(cpu.train_epoch_sparse, *args)


def _epoch_bench(benchmark, kernel, args):
    kernel(*args)  # compile
    benchmark.pedantic(kernel, args=args, rounds=3, iterations=1, warmup_rounds=0)


@pytest.mark.parametrize("backend", ["serial", "parallel"])
def test_epoch_exact(benchmark, problem, backend):
    if problem.shape.n_users > 1_000:
        pytest.skip("exact mode beyond ML-100k: every parameter at every step; one epoch is minutes")
    kernel = cpu.train_epoch_dense if backend == "serial" else cpu.train_epoch_dense_parallel
    _epoch_bench(benchmark, kernel, (problem.params, problem.grads, problem.moments, *problem.epoch_args()))


def test_epoch_exact_deferred(benchmark, problem):
    """Exact mode with deferred rows (the CPU backends' default): one whole epoch."""
    if problem.shape.n_users > 1_000:
        pytest.skip("exact mode beyond ML-100k: every parameter at every step")
    _epoch_bench(benchmark, cpu.train_epoch_deferred, (problem.params, problem.moments, *problem.epoch_args()))


@pytest.mark.parametrize("backend", ["serial", "hogwild"])
def test_epoch_sparse(benchmark, problem, backend):
    kernel = cpu.train_epoch_sparse if backend == "serial" else cpu.train_epoch_sparse_parallel
    n_ranges = 1 if backend == "serial" else numba.get_num_threads()
    _epoch_bench(benchmark, kernel, (problem.params, problem.moments, *problem.epoch_args(), n_ranges))


@pytest.mark.parametrize("backend", ["serial", "blocks"])
def test_epoch_per_rating(benchmark, problem, backend):
    """Per-rating SGD (sparse, bs 1): serially over the order, or on the backend's stratified blocks."""
    from mfscratch.backends.cpu import per_rating_groups

    n_users, n_items, _ = problem.shape
    n = problem.order.shape[0]
    threads = 1 if backend == "serial" else numba.get_num_threads()
    groups = per_rating_groups(problem.params.nbytes, threads)
    layout = BlockLayout(problem.order, np.array([0, n]), 1)
    if groups > 1:
        data = problem.data
        block = np.empty(n, dtype=np.int32)
        split = Groups(
            cpu.balanced_groups(data.users, n_users, groups), cpu.balanced_groups(data.items, n_items, groups), groups
        )
        cpu.block_index(data, split, block)
        order = np.empty_like(problem.order)
        layout = BlockLayout(order, cpu.block_layout(problem.order, block, groups * groups, order), groups)
    kernel = cpu.train_epoch_per_rating if threads == 1 else cpu.train_epoch_per_rating_parallel
    no_losses = EpochOut(np.empty(0), np.zeros(1, dtype=np.int64))
    args = (problem.params, problem.shape, problem.data, layout, np.array([1e-3]), 0.1, RANGE, no_losses)
    _epoch_bench(benchmark, kernel, args)
