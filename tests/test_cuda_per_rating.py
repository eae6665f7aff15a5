"""Per-rating SGD on the GPU (``kernels/cuda/per_rating.py``) against its CPU twins.

Marked ``cudasim``: run in their own process with ``NUMBA_ENABLE_CUDASIM=1`` (tests/run.sh), or on a
GPU without the variable (benchmarks/gpu_check.sh). Tiny problems: the simulator runs every lane as a
Python thread.

* the stratified schedule against ``CpuBackend`` over the same block layout (same seed, same order):
  losses, weights and evaluation, for several layouts and lane counts;
* batch-Hogwild! against the CPU's serial epoch over the same permutation: equal under the simulator,
  which runs the thread blocks one after another; on a GPU the blocks interleave, so only the
  validation error is compared there;
* fp16 and bf16 storage against the CPU emulation (``kernels/cpu/half.py``), and the bf16 conversions
  against NumPy's bits;
* a non-finite loss in a stratified epoch stops where the CPU stops.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_ratings

from mfscratch.backends import CpuBackend, CudaBackend
from mfscratch.data import CollabDataLoaders
from mfscratch.errors import ConfigError
from mfscratch.kernels import cuda as ck
from mfscratch.kernels.cpu.half import STORAGE_CODES, round_params, train_epoch_per_rating_half
from mfscratch.model import EmbeddingDotBias
from mfscratch.optim import SGD, Adam, OptState

_needs_cuda = pytest.mark.skipif(not ck.HAS_CUDA, reason="no CUDA (run with NUMBA_ENABLE_CUDASIM=1 or on a GPU)")
pytestmark = [pytest.mark.cudasim, _needs_cuda, pytest.mark.filterwarnings("ignore::mfscratch.DataWarning")]

K = 4
OPT = SGD(wd=0.05)


def _dls(n_ratings=60, n_users=6, n_items=7, seed=8):
    df = make_ratings(n_users=n_users, n_items=n_items, n_ratings=n_ratings, seed=seed)
    return CollabDataLoaders.from_df(df, valid_pct=0.2, seed=0, bs=1)


def _bound(backend, dls, k=K, seed=9):
    n = (dls.n_users + dls.n_items) * (k + 1)
    params = np.random.default_rng(seed).normal(scale=0.3, size=n).astype(np.float32)
    model = EmbeddingDotBias(k, dls.n_users, dls.n_items, y_range=(0.5, 5.5), params=params)
    backend.bind(model, OptState.zeros_like(model.params), dls)
    return model


def _epochs(backend, dls, n_epochs=2):
    runner = backend.runner(OPT, "per-rating", 1)
    rng = np.random.default_rng(10)
    out = []
    for epoch in range(n_epochs):
        lrs = np.linspace(5e-2, 2e-2, dls.n_train)
        losses = runner.train_epoch(rng, lrs, np.zeros(dls.n_train), epoch * dls.n_train)
        out.append((losses.copy(), runner.order.copy()))  # the runner may reuse its losses buffer next epoch
    return out


def _half_cpu_backend(storage):
    code = STORAGE_CODES[storage]

    def epoch(params, shape, data, layout, lrs, wd, y_range, out):
        return train_epoch_per_rating_half(params, shape, data, layout, lrs, wd, y_range, out, code)

    return type("HalfCpu", (CpuBackend,), {"_per_rating_epoch": staticmethod(epoch)})()


def _compare(gpu_b, cpu_b, dls, k=K, rtol=1e-5, atol=1e-6):
    m_gpu, m_cpu = _bound(gpu_b, dls, k), _bound(cpu_b, dls, k)
    for (got, got_order), (want, want_order) in zip(_epochs(gpu_b, dls), _epochs(cpu_b, dls)):
        np.testing.assert_array_equal(got_order, want_order)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    gpu_b.sync()
    np.testing.assert_allclose(m_gpu.params, m_cpu.params, rtol=rtol, atol=atol)
    valid = (dls.valid_users, dls.valid_items, dls.valid_ratings)
    np.testing.assert_allclose(gpu_b.evaluate(*valid), cpu_b.evaluate(*valid), rtol=max(rtol, 1e-5))
    return m_gpu


@pytest.mark.parametrize("n_groups, k, group", [(1, 4, None), (2, 4, None), (3, 5, 2), (2, 3, 1)])
def test_stratified_equals_the_cpu_kernel_over_the_same_layout(n_groups, k, group):
    """1 group: the learner's permutation; 2-3 groups: the CPU's block layout and per-block shuffle.
    k = 5 on 2 lanes: three columns on lane 0, two on lane 1; one lane: no exchange at all."""
    gpu_b, cpu_b = CudaBackend(group=group), CpuBackend()
    gpu_b.per_rating_n_groups = cpu_b.per_rating_n_groups = n_groups
    assert gpu_b.schedule == "stratified" and gpu_b.reproducible("per-rating")
    _compare(gpu_b, cpu_b, _dls(), k=k)


def test_hogwild_trains_every_rating_and_matches_the_serial_epoch_under_the_simulator():
    gpu_b = CudaBackend(schedule="hogwild")
    gpu_b.hogwild_per_worker = 7  # 48 ratings: 7 thread blocks, the last one short
    assert not gpu_b.reproducible("per-rating")
    cpu_b = CpuBackend()
    cpu_b.per_rating_n_groups = 1
    dls = _dls()
    if ck.SIMULATOR:  # blocks run one after another: the serial epoch over the same permutation
        _compare(gpu_b, cpu_b, dls)
        return
    _bound(gpu_b, dls), _bound(cpu_b, dls)  # on a GPU: the order of updates is not fixed
    for (got, _), (want, _) in zip(_epochs(gpu_b, dls), _epochs(cpu_b, dls)):
        assert got.shape == want.shape and np.isfinite(got).all()
    gpu_b.sync()
    valid = (dls.valid_users, dls.valid_items, dls.valid_ratings)
    assert abs(gpu_b.evaluate(*valid) - cpu_b.evaluate(*valid)) < 0.05


@pytest.mark.parametrize("storage, quantum", [("fp16", 2.0**-10), ("bf16", 2.0**-7)])
@pytest.mark.parametrize("n_groups", [1, 2])
def test_half_storage_matches_the_cpu_emulation(storage, quantum, n_groups):
    """The GPU rounds each update from float64, the emulation from float32: a stored value may land one
    quantum apart (relative ``2^-10`` in fp16, ``2^-7`` in bf16), so the tolerance is a few quanta."""
    gpu_b, cpu_b = CudaBackend(storage=storage, allow_bf16=True), _half_cpu_backend(storage)
    gpu_b.per_rating_n_groups = cpu_b.per_rating_n_groups = n_groups
    m_gpu = _compare(gpu_b, cpu_b, _dls(), rtol=4 * quantum, atol=4 * quantum)
    stored = m_gpu.params.copy()
    round_params(stored, STORAGE_CODES[storage])
    np.testing.assert_array_equal(m_gpu.params, stored)  # the model holds storage values only


@pytest.mark.skipif(not ck.SIMULATOR, reason="device functions run from the host only under the simulator")
def test_bf16_conversions_are_round_to_nearest_even_on_the_bits():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=2000) * 10.0 ** rng.integers(-40, 39, 2000)).astype(np.float32)
    x = np.concatenate([x, np.float32([0.0, -0.0, 1.0, 1 + 2**-8, 1 + 3 * 2**-8, 3.39e38, 1e-39, 9.2e-41])])
    x = x[np.isfinite(x)]
    b = x.view(np.uint32).astype(np.uint64)
    want = (((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000) >> 16).astype(np.uint16)
    got = np.array([ck.bf16_bits(float(v)) for v in x], dtype=np.uint16)
    np.testing.assert_array_equal(got, want)
    back = np.array([ck.bf16_value(v) for v in got], dtype=np.float32)
    np.testing.assert_array_equal(back, (want.astype(np.uint32) << 16).view(np.float32))


def test_a_non_finite_loss_stops_the_stratified_epoch_where_the_cpu_stops():
    dls = _dls()
    dls.train_ratings[17] = np.inf  # one rating that gives an infinite loss
    gpu_b, cpu_b = CudaBackend(), CpuBackend()
    gpu_b.per_rating_n_groups = cpu_b.per_rating_n_groups = 2
    m_gpu, m_cpu = _bound(gpu_b, dls), _bound(cpu_b, dls)
    (got, _), (want, _) = _epochs(gpu_b, dls, 1)[0], _epochs(cpu_b, dls, 1)[0]
    assert len(got) == len(want) < dls.n_train and not np.isfinite(got[-1])
    np.testing.assert_allclose(got[:-1], want[:-1], rtol=1e-5, atol=1e-6)
    gpu_b.sync()
    np.testing.assert_allclose(m_gpu.params, m_cpu.params, rtol=1e-5, atol=1e-6)


def test_bad_schedule_and_storage_are_config_errors():
    with pytest.raises(ConfigError, match="schedule 'fast'"):
        CudaBackend(schedule="fast")
    with pytest.raises(ConfigError, match="storage 'fp8'"):
        CudaBackend(storage="fp8")
    with pytest.raises(ConfigError, match="storage 'bf16' is not offered.*use fp16"):
        CudaBackend(storage="bf16")  # misses the accuracy bar: only for measuring (allow_bf16=True)
    backend = CudaBackend(storage="fp16")
    _bound(backend, _dls())
    with pytest.raises(ConfigError, match="per-rating mode only"):
        backend.runner(Adam(), "exact", 8)
