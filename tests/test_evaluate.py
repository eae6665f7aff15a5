"""The validation loss: the serial and parallel evaluations give the same float64 total on any thread count."""

from __future__ import annotations

import math
import platform

import numba
import numpy as np
import pytest

from mfscratch.kernels import cpu
from mfscratch.kernels.cpu._llvm import PREFETCH_MIN_BYTES
from mfscratch.kernels.cpu.core import EVAL_RUN
from mfscratch.kernels.records import Ratings, Shape, YRange


@pytest.mark.parametrize(
    "n, nu",
    [(1000, 500), (3 * EVAL_RUN + 17, 500), (EVAL_RUN + 5, 120_000)],
    ids=["small", "several-runs", "prefetching"],  # 120,000 users x 21: tables over PREFETCH_MIN_BYTES
)
def test_parallel_evaluation_equals_the_serial_one(n, nu):
    rng = np.random.default_rng(0)
    ni, k = 300, 20
    params = (rng.standard_normal((nu + ni) * (k + 1)) * 0.3).astype(np.float32)
    tables = cpu.split_flat(params, Shape(nu, ni, k))
    assert (params.nbytes > PREFETCH_MIN_BYTES) == (nu == 120_000)
    data = Ratings(
        rng.integers(0, nu, n).astype(np.int64),
        rng.integers(0, ni, n).astype(np.int64),
        rng.uniform(1, 5, n).astype(np.float32),
    )
    y_range = YRange(0.0, 5.5, True)
    serial = cpu.evaluate_mse(tables, data, y_range)
    before = numba.get_num_threads()
    try:
        for threads in range(1, numba.config.NUMBA_NUM_THREADS + 1):
            numba.set_num_threads(threads)
            assert cpu.evaluate_mse_parallel(tables, data, y_range) == serial
    finally:
        numba.set_num_threads(before)
    P, Q, b, c = (np.asarray(t, dtype=np.float64) for t in tables)
    x = (P[data.users] * Q[data.items]).sum(1) + b[data.users] + c[data.items]
    pred = 5.5 / (1 + np.exp(-x))
    assert serial == pytest.approx(np.mean((pred - data.ratings) ** 2), rel=1e-6)


def _library_exp():
    from numba import njit

    @njit
    def library_exp(xs, out):  # math.exp compiled: the C library's exp
        for j in range(xs.shape[0]):
            out[j] = math.exp(xs[j])

    return library_exp


def _fast_exp():
    from numba import njit

    from mfscratch.kernels.cpu.exp import exp_fast, exp_in_range

    @njit
    def fast_exp(xs, out, inside):
        for j in range(xs.shape[0]):
            out[j] = exp_fast(xs[j])
            inside[j] = exp_in_range(xs[j])

    return fast_exp


def test_exp_fast_is_the_c_librarys_exp_in_its_range():
    """The validation pass's vectorised exp: the C library's algorithm, its results where it takes its main path."""
    rng = np.random.default_rng(3)
    n = 400_000
    xs = np.concatenate(
        [
            rng.uniform(-40, 40, n),
            rng.uniform(-511.99, 511.99, n),
            np.exp(rng.uniform(np.log(2.0**-54), np.log(511.99), n)) * rng.choice([-1.0, 1.0], n),
            [2.0**-54, -(2.0**-54), 511.99999999999994, -511.99999999999994, 1.0, -1.0],
        ]
    )
    want, got, inside = np.empty_like(xs), np.empty_like(xs), np.empty(len(xs), dtype=np.bool_)
    _library_exp()(xs, want)
    _fast_exp()(xs, got, inside)
    assert inside.all()
    # Within an ulp of the C library anywhere; equal to it, bit for bit, where it is glibc on x86-64
    # (glibc 2.28 on: the same algorithm, its FMA build fusing the same operations).
    np.testing.assert_allclose(got, want, rtol=2.3e-16, atol=0)
    libc, version = platform.libc_ver()
    if platform.machine() == "x86_64" and libc == "glibc" and tuple(map(int, version.split(".")[:2])) >= (2, 28):
        assert np.array_equal(got, want)


def test_exp_fast_range_ends():
    xs = np.array([0.0, -0.0, 2.0**-55, 512.0, -512.0, 1e4, -1e4, np.inf, -np.inf, np.nan])
    got, inside = np.empty_like(xs), np.empty(len(xs), dtype=np.bool_)
    _fast_exp()(xs, got, inside)
    assert not inside.any()  # the caller takes math.exp there


def test_exp_table_holds_two_to_the_j_over_128():
    from mfscratch.kernels.cpu.exp import _TABLE

    j = np.arange(128)
    scale = (_TABLE[1::2] + (j.astype(np.uint64) << np.uint64(45))).view(np.float64)
    tail = _TABLE[0::2].view(np.float64)
    np.testing.assert_allclose(scale, 2.0 ** (j / 128), rtol=2.3e-16)  # NumPy's power: within an ulp
    assert np.abs(tail).max() < 2.0**-53 and tail[0] == 0.0


@pytest.mark.parametrize("scale", [1e-30, 0.3, 40.0], ids=["logits-near-zero", "usual", "logits-beyond-512"])
def test_evaluation_with_the_c_librarys_exp_as_reference(scale):
    """Every logit's error as a row-by-row loop with math.exp computes it, summed in the same order."""
    rng = np.random.default_rng(1)
    nu, ni, k, n = 50, 40, 8, 3 * EVAL_RUN // 2 + 7
    params = (rng.standard_normal((nu + ni) * (k + 1)) * scale).astype(np.float32)
    params[: 5 * k] = 0.0  # users 0-4: a zero row
    tables = cpu.split_flat(params, Shape(nu, ni, k))
    tables.u_bias[:5] = 0.0
    tables.i_bias[:] = np.where(rng.random(ni) < 0.5, 0.0, tables.i_bias)
    data = Ratings(rng.integers(0, nu, n), rng.integers(0, ni, n), rng.uniform(1, 5, n).astype(np.float32))
    y_range = YRange(0.0, 5.5, True)
    got = cpu.evaluate_mse(tables, data, y_range)

    from numba import njit

    from mfscratch.kernels.cpu.core import logit, sigmoid

    @njit
    def row_by_row(tables, data, lo, hi):
        users, items, ratings = data
        runs = np.zeros((len(users) + EVAL_RUN - 1) // EVAL_RUN)
        for r in range(len(users)):
            err = lo + (hi - lo) * sigmoid(logit(tables, users[r], items[r])) - ratings[r]
            runs[r // EVAL_RUN] += err * err
        total = 0.0
        for s in runs:
            total += s
        return total / len(users)

    assert got == row_by_row(tables, data, 0.0, 5.5)
    assert cpu.evaluate_mse_parallel(tables, data, y_range) == got
