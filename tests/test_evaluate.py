"""The validation loss: the serial and parallel evaluations give the same float64 total on any thread count."""

from __future__ import annotations

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
