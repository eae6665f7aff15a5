"""The CUDA kernels against their CPU twins, and the ``cuda`` backend against the ``cpu`` one.

Tests marked ``cudasim`` run in their own process with ``NUMBA_ENABLE_CUDASIM=1`` (tests/run.sh),
where Numba's simulator runs the kernels as Python threads: the problems are tiny on purpose.
On a machine with an NVIDIA GPU, ``pytest -m cudasim tests/test_cuda.py`` without the variable
runs the same checks on the GPU (benchmarks/gpu_check.sh does). The one unmarked test checks
the error a user gets asking for ``cuda`` where there is none.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_ratings

from mfscratch import reference
from mfscratch.backends import CpuBackend, CudaBackend, get_backend
from mfscratch.data import CollabDataLoaders
from mfscratch.errors import ConfigError
from mfscratch.kernels import cpu
from mfscratch.kernels import cuda as ck
from mfscratch.kernels.records import Hyper, Moments, Ratings, Shape, YRange, step_scalars
from mfscratch.learner import collab_learner
from mfscratch.model import EmbeddingDotBias
from mfscratch.optim import SGD, Adam, OptState

_needs_cuda = pytest.mark.skipif(not ck.HAS_CUDA, reason="no CUDA (run with NUMBA_ENABLE_CUDASIM=1 or on a GPU)")


def cudasim(test):
    """Mark a test as a CUDA-kernel test: its own process, skipped where there is no CUDA at all."""
    return pytest.mark.cudasim(_needs_cuda(test))


N_USERS, N_ITEMS, K, B = 5, 6, 4, 12
SHAPE = Shape(N_USERS, N_ITEMS, K)
RANGE = YRange(0.5, 5.5, True)
NO_RANGE = YRange(0.0, 1.0, False)
T = ck.THREADS


def _model(seed=0, scale=1.0):
    """A small model with weights large enough that predictions vary (fastai's init is 0.01-sized)."""
    params = np.random.default_rng(seed).normal(scale=0.3 * scale, size=(N_USERS + N_ITEMS) * (K + 1))
    return EmbeddingDotBias(K, N_USERS, N_ITEMS, y_range=(0.5, 5.5), params=params.astype(np.float32))


def _batch(seed=1, n=B):
    """A batch in which users and items repeat (5 users, 6 items, 12 ratings)."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, N_USERS, n).astype(np.int32)
    items = rng.integers(0, N_ITEMS, n).astype(np.int32)
    users[1] = users[0]  # make sure of at least one repeat on each side
    items[2] = items[0]
    return Ratings(users, items, rng.uniform(1, 5, n).astype(np.float32))


def _split(flat):
    return cpu.split_flat(flat, SHAPE)


@cudasim
@pytest.mark.parametrize("range_args", [RANGE, NO_RANGE], ids=["y_range", "no_range"])
def test_forward_backward_matches_cpu_with_repeated_rows(range_args):
    m = _model()
    batch = _batch()
    assert len(set(batch.users)) < B and len(set(batch.items)) < B
    g_cpu, g_gpu = np.zeros_like(m.params), np.zeros_like(m.params)
    loss_cpu = cpu.forward_backward(_split(m.params), batch, range_args, _split(g_cpu))
    loss = np.zeros(1)
    # Two blocks of fewer threads than the batch: the loss crosses blocks through the atomic add.
    ck.forward_backward[ck.blocks_for(B), T](_split(m.params), batch, range_args, _split(g_gpu), loss)
    np.testing.assert_allclose(loss[0], loss_cpu, rtol=1e-6)
    np.testing.assert_allclose(g_gpu, g_cpu, rtol=1e-5, atol=1e-7)


@cudasim
@pytest.mark.parametrize("decouple_wd", [True, False])
def test_dense_updates_match_cpu_and_zero_the_gradient(decouple_wd):
    rng = np.random.default_rng(2)
    n = (N_USERS + N_ITEMS) * (K + 1)
    p0, g0 = rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32)
    m0, v0 = rng.normal(size=n).astype(np.float32) * 0.1, rng.uniform(size=n).astype(np.float32) * 0.1
    # Adam, at step 3 with the current momentum 0.93
    hyper = Hyper(True, True, 0.99, 1e-5, 0.1, decouple_wd)
    sc = step_scalars(1e-2, 0.93, 3, hyper)
    p, g, m, v = p0.copy(), g0.copy(), m0.copy(), v0.copy()
    cpu.adam_update_dense(p, g, m, v, sc)
    pg, gg, mg, vg = p0.copy(), g0.copy(), m0.copy(), v0.copy()
    # Fewer blocks than elements / THREADS: the grid-stride loop must cover the rest.
    ck.adam_update_dense[2, T](pg, gg, Moments(mg, vg), sc, hyper)
    for got, want in ((pg, p), (mg, m), (vg, v)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert not gg.any()
    # SGD with and without momentum
    for use_mom in (True, False):
        hyper = Hyper(False, use_mom, 0.0, 0.0, 0.1, decouple_wd)
        sc = step_scalars(1e-2, 0.9, 1, hyper)
        p, g, m = p0.copy(), g0.copy(), m0.copy()
        cpu.sgd_update_dense(p, g, m, sc, use_mom)
        pg, gg, mg = p0.copy(), g0.copy(), m0.copy()
        ck.sgd_update_dense[2, T](pg, gg, mg, sc, hyper)
        np.testing.assert_allclose(pg, p, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(mg, m, rtol=1e-6, atol=1e-7)
        assert not gg.any()


def lazy_reference_step(
    params, exp_avg, exp_avg_sq, users, items, ratings, y_range, opt, lr, mom, step, n_users=N_USERS, n_items=N_ITEMS
):
    """One sparse ("lazy") step in NumPy, in place on float64 arrays; returns the batch loss.

    The gradient of the whole batch (``reference.loss_and_grads``), then fastai's Adam/SGD
    (``reference.adam_step``/``sgd_step``) on the elements of the users and items in the batch only,
    each row once, with Adam's bias correction from the global ``step``.
    """
    shapes = [(n_users, K), (n_items, K), (n_users, 1), (n_items, 1)]
    bounds = np.cumsum([0] + [r * c for r, c in shapes])
    tables = [params[a:b].reshape(s) for a, b, s in zip(bounds, bounds[1:], shapes)]
    loss, grads = reference.loss_and_grads(*tables, users, items, ratings.astype(np.float64), y_range)
    g = np.concatenate([grads[name].ravel() for name in reference.TABLES])
    touched = np.zeros(params.shape, dtype=bool)
    for (a, b, s), rows in zip(zip(bounds, bounds[1:], shapes), (users, items, users, items)):
        touched[a:b].reshape(s)[rows] = True
    p, m, v = params[touched], exp_avg[touched], exp_avg_sq[touched]
    if opt.name == "adam":
        reference.adam_step(p, g[touched], m, v, step, lr, mom, opt.sqr_mom, opt.eps, opt.wd, opt.decouple_wd)
    else:
        reference.sgd_step(p, g[touched], m, lr, mom if opt.uses_momentum else 0.0, opt.wd, opt.decouple_wd)
    params[touched], exp_avg[touched], exp_avg_sq[touched] = p, m, v
    return loss


@cudasim
@pytest.mark.parametrize("opt", [Adam(wd=0.1), SGD(mom=0.9, wd=0.1)], ids=["adam", "sgd"])
def test_sparse_update_touches_each_batch_row_once_and_nothing_else(opt):
    m = _model(seed=3)
    batch = _batch(seed=4, n=6)  # 6 ratings: some users and items stay untouched
    users, items, ratings = batch
    rng = np.random.default_rng(5)
    n = m.params.shape[0]
    m0, v0 = rng.normal(size=n) * 0.01, rng.uniform(size=n) * 0.01
    want_p, want_m, want_v = m.params.astype(np.float64), m0.copy(), v0.copy()
    lazy_reference_step(want_p, want_m, want_v, users, items, ratings, (0.5, 5.5), opt, 1e-2, 0.9, 7)

    p, g = m.params.copy(), np.zeros(n, dtype=np.float32)
    exp_avg, exp_avg_sq = m0.astype(np.float32), v0.astype(np.float32)
    loss = np.zeros(1)
    ck.forward_backward[1, T](_split(p), batch, RANGE, _split(g), loss)
    owners = ck.Owners(np.full(N_USERS, -1, np.int32), np.full(N_ITEMS, -1, np.int32))
    ck.mark_rows[1, T](users, items, owners)
    lazy_blocks = ck.blocks_for(2 * len(users) * (K + 1))
    hyper = Hyper(opt.name == "adam", True, opt.sqr_mom, opt.eps, opt.wd, opt.decouple_wd)
    sc = step_scalars(1e-2, 0.9, 7, hyper)
    ck.update_sparse[lazy_blocks, T](p, g, Moments(exp_avg, exp_avg_sq), SHAPE, users, items, owners, sc, hyper)
    np.testing.assert_allclose(p, want_p, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(exp_avg, want_m, rtol=1e-5, atol=1e-7)
    if opt.name == "adam":
        np.testing.assert_allclose(exp_avg_sq, want_v, rtol=1e-5, atol=1e-8)
    assert not g.any()  # the touched gradient rows are cleared, and no others were ever set
    untouched_users = np.setdiff1d(np.arange(N_USERS), users)
    assert untouched_users.size and np.array_equal(_split(p)[0][untouched_users], _split(m.params)[0][untouched_users])


@cudasim
@pytest.mark.parametrize("range_args", [RANGE, NO_RANGE], ids=["y_range", "no_range"])
def test_evaluation_matches_cpu(range_args):
    m = _model(seed=6)
    data = _batch(seed=7, n=3 * T + 5)  # several blocks of partial sums
    out = np.zeros(1)
    ck.evaluate_mse[2, T](_split(m.params), data, range_args, out)  # grid-stride: 2 blocks
    np.testing.assert_allclose(out[0], cpu.evaluate_mse(_split(m.params), data, range_args), rtol=1e-6)


# --- the backend: a few steps of training, CUDA against CPU ---------------------------------------------
def _dls(bs=8):
    df = make_ratings(n_users=N_USERS, n_items=N_ITEMS, n_ratings=50, seed=8)
    return CollabDataLoaders.from_df(df, valid_pct=0.2, seed=0, bs=bs)  # 40 training rows: 5 steps


def _bound(backend, dls, seed=9):
    model = EmbeddingDotBias(K, dls.n_users, dls.n_items, y_range=(0.5, 5.5), params=_model_for(dls, seed))
    state = OptState.zeros_like(model.params)
    backend.bind(model, state, dls)
    return model, state


def _model_for(dls, seed):
    n = (dls.n_users + dls.n_items) * (K + 1)
    return (np.random.default_rng(seed).normal(scale=0.3, size=n)).astype(np.float32)


def _epochs(backend, dls, opt, mode, n_epochs=2):
    """``n_epochs`` epochs through ``backend``'s runner (orders from a seeded generator); returns the losses."""
    runner = backend.runner(opt, mode, dls.bs)
    steps = dls.n_train // dls.bs
    rng = np.random.default_rng(10)
    out = []
    for epoch in range(n_epochs):
        out.append(
            runner.train_epoch(rng, np.linspace(1e-2, 3e-2, steps), np.linspace(0.95, 0.9, steps), epoch * steps)
        )
    return out


def _cpu_and_cuda(gpu_b):
    """A CPU backend and ``gpu_b`` bound to the same weights and data: ``(cpu_b, [(model, state)] * 2, dls)``."""
    dls = _dls()
    cpu_b = CpuBackend()
    return cpu_b, [_bound(b, dls) for b in (cpu_b, gpu_b)], dls


@cudasim
@pytest.mark.parametrize(
    "mode, loop, group",
    [("exact", "device", g) for g in (None, 1, 2, 8)]
    + [("exact", "host", None)]
    + [("sparse", loop, None) for loop in CudaBackend.LOOPS],
)
@pytest.mark.parametrize("opt", [Adam(wd=0.1), SGD(mom=0.9, wd=0.05, decouple_wd=False)], ids=["adam", "sgd"])
def test_epochs_on_cuda_equal_cpu(mode, loop, group, opt, monkeypatch):
    """Both loops and several thread-group sizes (2: two columns per lane; 8: idle lanes, two rounds)
    against the CPU backend's dense or sparse kernel: losses, weights, moments, evaluation."""
    monkeypatch.setattr(CpuBackend, "defer_rows", False)  # the dense kernel, as on the GPU
    gpu_b = CudaBackend(loop, group)
    cpu_b, ((m_cpu, s_cpu), (m_gpu, s_gpu)), dls = _cpu_and_cuda(gpu_b)
    for want, got in zip(_epochs(cpu_b, dls, opt, mode), _epochs(gpu_b, dls, opt, mode)):
        np.testing.assert_allclose(got, want, rtol=1e-5)
    gpu_b.sync()
    np.testing.assert_allclose(m_gpu.params, m_cpu.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s_gpu.exp_avg, s_cpu.exp_avg, rtol=1e-4, atol=1e-7)
    valid = (dls.valid_users, dls.valid_items, dls.valid_ratings)
    np.testing.assert_allclose(gpu_b.evaluate(*valid), cpu_b.evaluate(*valid), rtol=1e-5)


@cudasim
def test_a_refused_cooperative_launch_falls_back_to_the_host_loop(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("cooperative launch not supported")

    monkeypatch.setattr(ck, "cooperative_blocks", refuse)
    monkeypatch.setattr(CpuBackend, "defer_rows", False)
    gpu_b = CudaBackend("device")
    cpu_b, _, dls = _cpu_and_cuda(gpu_b)
    with pytest.warns(UserWarning, match="host loop"):
        got = _epochs(gpu_b, dls, Adam(), "exact", n_epochs=1)
    assert gpu_b.loop == "host"
    np.testing.assert_allclose(got[0], _epochs(cpu_b, dls, Adam(), "exact", n_epochs=1)[0], rtol=1e-5)


# --- without CUDA -------------------------------------------------------------------------------------
def test_cuda_backend_without_a_gpu_is_one_clear_config_error(monkeypatch):
    if ck.HAS_CUDA:
        pytest.skip("CUDA is available here (GPU or simulator)")
    with pytest.raises(ConfigError, match="backend 'cuda' needs an NVIDIA GPU"):
        get_backend("cuda")
    with pytest.raises(ConfigError, match="backend 'cuda' needs an NVIDIA GPU"):
        collab_learner(_dls(), n_factors=K, backend="cuda", log=None)
    monkeypatch.setattr(ck, "cuda", None)  # as if numba-cuda were not installed
    with pytest.raises(ConfigError, match=r"pip install 'mfscratch\[cuda\]'"):
        get_backend("cuda")


def test_cli_refuses_cuda_without_a_gpu_before_reading_data(monkeypatch, capsys):
    if ck.HAS_CUDA:
        pytest.skip("CUDA is available here (GPU or simulator)")
    from mfscratch import cli

    def no_data(args):
        raise AssertionError("the data must not be read")

    monkeypatch.setattr(cli.train, "load_training_data", no_data)
    assert cli.main(["train", "--backend", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: backend 'cuda' needs an NVIDIA GPU")
