"""Half-precision storage on the CPU (``kernels/cpu/half.py``): the rounding and the per-rating epoch.

Ordinary tests (no simulator): the CPU emulation is what measures the accuracy cost of fp16/bf16
storage (benchmarks/half_storage_ml100k.py); the CUDA kernel storing the same formats is checked
against it in tests/test_cuda_per_rating.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from mfscratch.kernels import cpu
from mfscratch.kernels.cpu.half import BF16, FP16, FP32, round_params, train_epoch_per_rating_half
from mfscratch.kernels.records import BlockLayout, EpochOut, Ratings, Shape, YRange


def _bf16_numpy(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 (round to nearest, ties to even) -> float32, on the bits (finite inputs)."""
    b = x.view(np.uint32).astype(np.uint64)
    b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
    return b.astype(np.uint32).view(np.float32)


def _values():
    rng = np.random.default_rng(0)
    x = rng.normal(size=20000) * 10.0 ** rng.integers(-9, 6, 20000)
    edges = [65504, 65519.9, 65520, 7e4, -1e-8, 6e-8, 2.98e-8, 3e-8, 0.0, 1 + 2**-11, 1 + 3 * 2**-11, 3.3e38]
    return np.concatenate([x, edges]).astype(np.float32)


def test_fp16_rounding_is_numpys_float16_conversion():
    x = _values()
    got = x.copy()
    round_params(got, FP16)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(got, want)


def test_bf16_rounding_is_round_to_nearest_even_on_the_bits():
    x = _values()
    got = x.copy()
    round_params(got, BF16)
    np.testing.assert_array_equal(got, _bf16_numpy(x))


def _problem(seed=3, n_users=7, n_items=9, k=5, n=200):
    rng = np.random.default_rng(seed)
    shape = Shape(n_users, n_items, k)
    params = rng.normal(scale=0.3, size=(n_users + n_items) * (k + 1)).astype(np.float32)
    data = Ratings(
        rng.integers(0, n_users, n).astype(np.int32),
        rng.integers(0, n_items, n).astype(np.int32),
        rng.integers(1, 6, n).astype(np.float32),
    )
    order = rng.permutation(n).astype(np.int64)
    return shape, params, data, BlockLayout(order, np.array([0, n], dtype=np.int64), 1)


def _numpy_epoch(params, shape, data, layout, lr, wd, y_range, rounding):
    """Per-rating SGD in NumPy float32, each stored value passed through ``rounding``."""
    p = rounding(params.copy())
    nu, ni, k = shape
    P, Q = p[: nu * k].reshape(nu, k), p[nu * k : (nu + ni) * k].reshape(ni, k)
    b, c = p[(nu + ni) * k : (nu + ni) * k + nu], p[(nu + ni) * k + nu :]
    f = np.float32
    lo, span = f(y_range.lo), f(y_range.hi - y_range.lo)
    for row in layout.order:
        u, i = data.users[row], data.items[row]
        x = f(0.0)
        for j in range(k):
            x = f(x + P[u, j] * Q[i, j])
        x = f(f(x + b[u]) + c[i])
        s = f(1.0) / (f(1.0) + np.exp(-x))
        err = f(lo + span * s - data.ratings[row])
        dx = f(2.0) * err * span * s * (f(1.0) - s)
        shrink, step = f(1.0 - lr * wd), f(lr) * dx
        pu, qi = P[u].copy(), Q[i].copy()
        P[u] = rounding(pu * shrink - step * qi)
        Q[i] = rounding(qi * shrink - step * pu)
        b[u] = rounding(np.array([b[u] * shrink - step]))[0]
        c[i] = rounding(np.array([c[i] * shrink - step]))[0]
    return p


@pytest.mark.parametrize("storage", [FP32, FP16, BF16], ids=["fp32", "fp16", "bf16"])
def test_half_epoch_matches_a_numpy_loop_and_stores_only_storage_values(storage):
    shape, params, data, layout = _problem()
    y_range = YRange(0.5, 5.5, True)
    rounding = {
        FP32: lambda a: a,
        FP16: lambda a: np.asarray(a, np.float32).astype(np.float16).astype(np.float32),
        BF16: lambda a: _bf16_numpy(np.asarray(a, np.float32)),
    }[storage]
    want = _numpy_epoch(params, shape, data, layout, 0.05, 0.02, y_range, rounding)
    got = params.copy()
    losses = np.empty(len(layout.order))
    n = train_epoch_per_rating_half(
        got, shape, data, layout, np.array([0.05]), 0.02, y_range, EpochOut(losses, np.zeros(1, np.int64)), storage
    )
    assert n == len(layout.order)
    np.testing.assert_array_equal(got, rounding(got))  # every stored value is a storage value
    # the dot product's rounding differs (Numba may reassociate nothing here, NumPy rounds each step):
    # one storage quantum at most
    tol = {FP32: 1e-5, FP16: 2e-3, BF16: 1.6e-2}[storage]
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_fp32_storage_is_the_per_rating_kernel_to_rounding():
    shape, params, data, layout = _problem(seed=4)
    y_range = YRange(0.5, 5.5, True)
    lrs = np.linspace(0.05, 0.01, len(layout.order))
    a, b = params.copy(), params.copy()
    la, lb = np.empty(len(layout.order)), np.empty(len(layout.order))
    train_epoch_per_rating_half(a, shape, data, layout, lrs, 0.02, y_range, EpochOut(la, np.zeros(1, np.int64)), FP32)
    cpu.train_epoch_per_rating(b, shape, data, layout, lrs, 0.02, y_range, EpochOut(lb, np.zeros(1, np.int64)))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(la, lb, rtol=1e-4, atol=1e-6)
