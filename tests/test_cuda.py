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
from mfscratch.learner import collab_learner
from mfscratch.model import EmbeddingDotBias
from mfscratch.optim import SGD, Adam, OptState

_needs_cuda = pytest.mark.skipif(not ck.HAS_CUDA, reason="no CUDA (run with NUMBA_ENABLE_CUDASIM=1 or on a GPU)")


def cudasim(test):
    """Mark a test as a CUDA-kernel test: its own process, skipped where there is no CUDA at all."""
    return pytest.mark.cudasim(_needs_cuda(test))


N_USERS, N_ITEMS, K, B = 5, 6, 4, 12
RANGE = (0.5, 5.5, True)
NO_RANGE = (0.0, 1.0, False)
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
    return users, items, rng.uniform(1, 5, n).astype(np.float32)


def _split(flat):
    return cpu.split_flat(flat, N_USERS, N_ITEMS, K)


@cudasim
@pytest.mark.parametrize("range_args", [RANGE, NO_RANGE], ids=["y_range", "no_range"])
def test_forward_backward_matches_cpu_with_repeated_rows(range_args):
    m = _model()
    users, items, ratings = _batch()
    assert len(set(users)) < B and len(set(items)) < B
    g_cpu, g_gpu = np.zeros_like(m.params), np.zeros_like(m.params)
    loss_cpu = cpu.forward_backward(*_split(m.params), users, items, ratings, *range_args, *_split(g_cpu))
    loss = np.zeros(1)
    # Two blocks of fewer threads than the batch: the loss crosses blocks through the atomic add.
    ck.forward_backward[ck.blocks_for(B), T](
        *_split(m.params), users, items, ratings, *range_args, *_split(g_gpu), loss
    )
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
    p, g, m, v = p0.copy(), g0.copy(), m0.copy(), v0.copy()
    cpu.adam_update_dense(p, g, m, v, 1e-2, 0.93, 0.99, 1e-5, 0.1, decouple_wd, 3)
    pg, gg, mg, vg = p0.copy(), g0.copy(), m0.copy(), v0.copy()
    # Fewer blocks than elements / THREADS: the grid-stride loop must cover the rest.
    ck.adam_update_dense[2, T](pg, gg, mg, vg, 1e-2, 0.93, 0.99, 1e-5, 0.1, decouple_wd, 3)
    for got, want in ((pg, p), (mg, m), (vg, v)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert not gg.any()
    # SGD with and without momentum
    for use_mom in (True, False):
        p, g, m = p0.copy(), g0.copy(), m0.copy()
        cpu.sgd_update_dense(p, g, m, 1e-2, 0.9, 0.1, decouple_wd, use_mom)
        pg, gg, mg = p0.copy(), g0.copy(), m0.copy()
        ck.sgd_update_dense[2, T](pg, gg, mg, 1e-2, 0.9, 0.1, decouple_wd, use_mom)
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
    users, items, ratings = _batch(seed=4, n=6)  # 6 ratings: some users and items stay untouched
    rng = np.random.default_rng(5)
    n = m.params.shape[0]
    m0, v0 = rng.normal(size=n) * 0.01, rng.uniform(size=n) * 0.01
    want_p, want_m, want_v = m.params.astype(np.float64), m0.copy(), v0.copy()
    lazy_reference_step(want_p, want_m, want_v, users, items, ratings, (0.5, 5.5), opt, 1e-2, 0.9, 7)

    p, g = m.params.copy(), np.zeros(n, dtype=np.float32)
    exp_avg, exp_avg_sq = m0.astype(np.float32), v0.astype(np.float32)
    loss = np.zeros(1)
    ck.forward_backward[1, T](*_split(p), users, items, ratings, *RANGE, *_split(g), loss)
    owners = np.full(N_USERS, -1, np.int32), np.full(N_ITEMS, -1, np.int32)
    ck.mark_rows[1, T](users, items, *owners)
    lazy_blocks = ck.blocks_for(2 * len(users) * (K + 1))
    if opt.name == "adam":
        ck.adam_update_sparse[lazy_blocks, T](
            p,
            g,
            exp_avg,
            exp_avg_sq,
            N_USERS,
            N_ITEMS,
            K,
            users,
            items,
            *owners,
            1e-2,
            0.9,
            opt.sqr_mom,
            opt.eps,
            opt.wd,
            opt.decouple_wd,
            7,
        )
    else:
        ck.sgd_update_sparse[lazy_blocks, T](
            p, g, exp_avg, N_USERS, N_ITEMS, K, users, items, *owners, 1e-2, 0.9, opt.wd, opt.decouple_wd, True
        )
    np.testing.assert_allclose(p, want_p, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(exp_avg, want_m, rtol=1e-5, atol=1e-7)
    if opt.name == "adam":
        np.testing.assert_allclose(exp_avg_sq, want_v, rtol=1e-5, atol=1e-8)
    assert not g.any()  # the touched gradient rows are cleared, and no others were ever set
    untouched_users = np.setdiff1d(np.arange(N_USERS), users)
    assert untouched_users.size and np.array_equal(_split(p)[0][untouched_users], _split(m.params)[0][untouched_users])


@cudasim
@pytest.mark.parametrize("range_args", [RANGE, NO_RANGE], ids=["y_range", "no_range"])
def test_evaluation_and_prediction_match_cpu(range_args):
    m = _model(seed=6)
    users, items, ratings = _batch(seed=7, n=3 * T + 5)  # several blocks of partial sums
    out = np.zeros(1)
    ck.evaluate_mse[2, T](*_split(m.params), users, items, ratings, *range_args, out)  # grid-stride: 2 blocks
    want = cpu.evaluate_mse(*_split(m.params), users, items, ratings, *range_args)
    np.testing.assert_allclose(out[0], want, rtol=1e-6)

    pred, want = np.empty(len(users), np.float32), np.empty(len(users), np.float32)
    ck.predict[ck.blocks_for(len(users)), T](*_split(m.params), users, items, *range_args, pred)
    np.testing.assert_allclose(
        pred, cpu.predict(*_split(m.params), users, items, *range_args, want), rtol=1e-6, atol=1e-6
    )

    scores = np.empty(N_ITEMS, np.float32)
    ck.score_items[1, T](*_split(m.params), 2, *range_args, scores)
    all_items = np.arange(N_ITEMS, dtype=np.int32)
    want = cpu.predict(
        *_split(m.params), np.full(N_ITEMS, 2, np.int32), all_items, *range_args, np.empty(N_ITEMS, np.float32)
    )
    np.testing.assert_allclose(scores, want, rtol=1e-6, atol=1e-6)


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


def _epoch_inputs(dls, seed=10):
    rng = np.random.default_rng(seed)
    steps = dls.n_train // dls.bs
    return rng.permutation(dls.n_train), np.linspace(1e-2, 3e-2, steps), np.linspace(0.95, 0.9, steps)


@cudasim
@pytest.mark.parametrize("loop, group", [("device", None), ("device", 1), ("device", 2), ("device", 8), ("host", None)])
@pytest.mark.parametrize("opt", [Adam(wd=0.1), SGD(mom=0.9, wd=0.05, decouple_wd=False)], ids=["adam", "sgd"])
def test_exact_epochs_on_cuda_equal_cpu(loop, group, opt):
    # group 2: two columns per lane; 8: idle lanes, two rounds
    (cpu_b, gpu_b), dls = _two_epochs_cpu_and_cuda(CudaBackend(loop, group), opt, sparse=False)
    np.testing.assert_allclose(
        gpu_b.evaluate(dls.valid_users, dls.valid_items, dls.valid_ratings),
        cpu_b.evaluate(dls.valid_users, dls.valid_items, dls.valid_ratings),
        rtol=1e-5,
    )


def _two_epochs_cpu_and_cuda(gpu_b, opt, sparse):
    """Two epochs (the global step carries over) on the CPU and on ``gpu_b`` from the same weights;
    asserts equal losses, weights and moments, and returns ``((cpu, gpu), dls)``."""
    dls = _dls()
    cpu_b = CpuBackend()
    (m_cpu, s_cpu), (m_gpu, s_gpu) = _bound(cpu_b, dls), _bound(gpu_b, dls)
    for epoch, step0 in ((0, 0), (1, 5)):
        order, lrs, moms = _epoch_inputs(dls, seed=epoch)
        want = cpu_b.train_epoch(order, lrs, moms, opt, sparse, step0)
        got = gpu_b.train_epoch(order, lrs, moms, opt, sparse, step0)
        np.testing.assert_allclose(got, want, rtol=1e-5)
    gpu_b.sync()
    np.testing.assert_allclose(m_gpu.params, m_cpu.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s_gpu.exp_avg, s_cpu.exp_avg, rtol=1e-4, atol=1e-7)
    return (cpu_b, gpu_b), dls


@cudasim
@pytest.mark.parametrize("loop", CudaBackend.LOOPS)
@pytest.mark.parametrize("opt", [Adam(wd=0.1), SGD(mom=0.9, wd=0.05)], ids=["adam", "sgd"])
def test_sparse_epochs_on_cuda_equal_cpu(loop, opt):
    """The CUDA lazy update against the CPU's ``train_epoch_sparse``: a row repeated in a batch moves once."""
    _two_epochs_cpu_and_cuda(CudaBackend(loop), opt, sparse=True)


@cudasim
@pytest.mark.parametrize("loop", CudaBackend.LOOPS)
def test_sparse_epoch_on_cuda_equals_numpy_lazy_reference(loop):
    dls, opt = _dls(), Adam(wd=0.1)
    backend = CudaBackend(loop)
    model, state = _bound(backend, dls)
    p, m, v = model.params.astype(np.float64), np.zeros(model.params.shape), np.zeros(model.params.shape)
    order, lrs, moms = _epoch_inputs(dls)
    got = backend.train_epoch(order, lrs, moms, opt, True, 3)
    want = []
    for s in range(len(lrs)):
        rows = order[s * dls.bs : (s + 1) * dls.bs]
        want.append(
            lazy_reference_step(
                p,
                m,
                v,
                dls.train_users[rows],
                dls.train_items[rows],
                dls.train_ratings[rows],
                (0.5, 5.5),
                opt,
                lrs[s],
                moms[s],
                3 + s + 1,
                dls.n_users,
                dls.n_items,
            )
        )
    np.testing.assert_allclose(got, want, rtol=1e-5)
    backend.sync()
    np.testing.assert_allclose(model.params, p, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(state.exp_avg_sq, v, rtol=1e-4, atol=1e-9)


@cudasim
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the simulator's NumPy scalars report the overflow
def test_divergence_stops_the_epoch_where_the_cpu_does():
    dls, opt = _dls(), Adam()
    cpu_b, gpu_b = CpuBackend(), CudaBackend("device")
    (m_cpu, _), (m_gpu, _) = _bound(cpu_b, dls), _bound(gpu_b, dls)
    for m in (m_cpu, m_gpu):
        m.y_range = None  # without the sigmoid an absurd learning rate overflows the loss
    for b in (cpu_b, gpu_b):
        b.bind(b.model, b.state, dls)
    order, _, moms = _epoch_inputs(dls)
    lrs = np.full(len(moms), 1e30)
    want = cpu_b.train_epoch(order, lrs, moms, opt, False, 0)
    got = gpu_b.train_epoch(order, lrs, moms, opt, False, 0)
    assert len(want) < len(lrs) and not np.isfinite(want[-1])
    assert len(got) == len(want) and not np.isfinite(got[-1])
    gpu_b.sync()
    np.testing.assert_allclose(m_gpu.params, m_cpu.params, rtol=1e-5)  # the diverging update was not applied


@cudasim
def test_a_refused_cooperative_launch_falls_back_to_the_host_loop(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("cooperative launch not supported")

    monkeypatch.setattr(ck, "cooperative_blocks", refuse)
    dls, opt = _dls(), Adam()
    cpu_b, gpu_b = CpuBackend(), CudaBackend("device")
    (m_cpu, _), (m_gpu, _) = _bound(cpu_b, dls), _bound(gpu_b, dls)
    order, lrs, moms = _epoch_inputs(dls)
    with pytest.warns(UserWarning, match="host loop"):
        got = gpu_b.train_epoch(order, lrs, moms, opt, False, 0)
    assert gpu_b.loop == "host"
    np.testing.assert_allclose(got, cpu_b.train_epoch(order, lrs, moms, opt, False, 0), rtol=1e-5)


@cudasim
def test_short_fit_through_the_learner_api():
    dls = _dls(bs=8)
    learn = collab_learner(dls, n_factors=K, y_range=(0.5, 5.5), seed=11, backend="cuda", log=None)
    learn.backend.warmup()
    learn.fit_one_cycle(2, 1e-2, wd=0.1)
    values = np.array(learn.recorder.values)
    assert values.shape == (2, 2) and np.isfinite(values).all()
    assert np.isfinite(learn.recorder.losses).all() and len(learn.recorder.losses) == 10
    # sync() brought the weights home: the host model reproduces the device's validation loss
    np.testing.assert_allclose(
        values[-1, 1],
        cpu.evaluate_mse(
            *learn.model.kernel_tables(), dls.valid_users, dls.valid_items, dls.valid_ratings, *learn.model.range_args
        ),
        rtol=1e-5,
    )
    scores = learn.backend.score_items(1)
    np.testing.assert_allclose(
        scores, learn.model.forward(np.ones(dls.n_items, int), np.arange(dls.n_items)), rtol=1e-5
    )


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
