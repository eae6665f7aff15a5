"""What every backend promises, checked on each registered backend that can run here.

Each (backend, mode) trains a tiny float64 problem through the declared interface (``bind``,
``runner``, ``evaluate``, ``sync``, ``warmup``) and is checked against a NumPy reference loop
(``mfscratch.reference``) over the very rows the runner trained (``runner.order``):

* every mode against the reference to 1e-9 relative (float64 tables: any rule difference shows), or
  the backend's own tolerance (:data:`RTOL`); Hogwild! (the parallel backend's sparse mode) runs
  steps at once and has no step-by-step reference;
* a repeated fit bit for bit, where ``backend.reproducible(mode)`` promises it, else to its tolerance;
* a fit stopped after an epoch and resumed from its checkpoint equals the uninterrupted fit (the same
  way);
* a NaN loss stops the epoch before that step's update (the weights those that produced it);
* ``evaluate`` equals the reference's mean squared error; ``warmup`` runs; the step counter ends at
  the number of steps.

A new backend joins by its line in ``backends.BACKENDS`` (and, if it needs its own process or
marker, a line in ``MARKS``). A backend that trains only some modes lists them in its ``modes``
attribute (``dask``: per-rating only, its docstring says why); its other cases are skipped, saying so.
``cuda`` runs in the ``cudasim`` process under Numba's simulator.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_ratings

from mfscratch import SGD, Adam, CollabDataLoaders, collab_learner, reference
from mfscratch import checkpoint as ck
from mfscratch.backends import BACKENDS
from mfscratch.model import EmbeddingDotBias
from mfscratch.optim import OptState

pytestmark = pytest.mark.filterwarnings("ignore::mfscratch.DataWarning")

#: Marks a backend's cases need: cuda runs in its own process under the simulator (tests/run.sh).
#: (dask's cases run on a 2-worker LocalCluster started once for this module: ``dask_client``.)
MARKS = {"cuda": [pytest.mark.cudasim]}
#: Backend settings worth a case of their own: the parallel backend's split dense update, the dense kernel,
#: the cuda backend's per-rating strata over a layout of two groups (one launch per stratum).
VARIANTS = {
    "parallel": [{}, {"min_parallel_params": 0}],
    "cpu": [{}, {"defer_rows": False}],
    "cuda": [{}, {"per_rating_n_groups": 2}],
}
#: Settings that change per-rating mode only: their cases run in that mode alone.
PER_RATING_ONLY = {"per_rating_n_groups"}
#: Relative tolerance against the reference where it is not 1e-9. cuda: the simulator runs the kernels
#: as Python, where NumPy 2 makes ``float - float32`` a float32 (the compiled kernels compute in float64).
RTOL = {"cuda": 1e-5}
#: (backend, mode) pairs that run steps at once (Hogwild!): no step-by-step reference, no repeat.
HOGWILD = {("parallel", "sparse")}
MODES = {"exact": Adam(wd=0.1), "sparse": Adam(wd=0.1), "per-rating": SGD(wd=0.05)}


def _refused(name, mode):
    """A skip naming why, for a mode the backend refuses (its ``modes``; every mode when it has none)."""
    cls = BACKENDS[name]
    if mode in getattr(cls, "modes", MODES):
        return []
    return [pytest.mark.skip(reason=f"backend {name!r} refuses {mode} mode (see its docstring)")]


CASES = [
    pytest.param(
        name,
        settings,
        mode,
        marks=MARKS.get(name, []) + _refused(name, mode),
        id=f"{name}{'-' if settings else ''}{'-'.join(settings)}-{mode}",
    )
    for name in BACKENDS
    for settings in VARIANTS.get(name, [{}])
    for mode in MODES
    if mode == "per-rating" or not PER_RATING_ONLY & set(settings)
]


@pytest.fixture(scope="module")
def dask_client():
    """A 2-worker LocalCluster (processes, loopback, one thread each) as Dask's default client."""
    distributed = pytest.importorskip("distributed")
    import logging

    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},  # its HTTP port: loopback, free
        silence_logs=logging.CRITICAL,
    )
    client = distributed.Client(cluster, timeout=60)
    try:
        yield client
    finally:
        client.close(timeout=30)
        cluster.close(timeout=30)


@pytest.fixture(autouse=True)
def _cluster_for_dask(request):
    """Start (once) the cluster that a ``dask`` case trains on."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("name") == "dask":
        request.getfixturevalue("dask_client")


def _backend(name, settings):
    cls = BACKENDS[name]
    if not cls.available():
        pytest.skip(f"backend {name!r} cannot run here")
    backend = cls()
    for key, value in settings.items():
        setattr(backend, key, value)
    return backend


def _dls(mode, seed=8):
    """5 users, 6 items; 48 training rows in steps of 8, or 24 rows of one (per-rating: one step a rating)."""
    df = make_ratings(n_users=5, n_items=6, n_ratings=30 if mode == "per-rating" else 60, seed=seed)
    return CollabDataLoaders.from_df(df, valid_pct=0.2, seed=0, bs=1 if mode == "per-rating" else 8)


def _model(dls, y_range=(0.5, 5.5), seed=9):
    n = EmbeddingDotBias.n_params_for(dls.n_users, dls.n_items, 4)
    params = np.random.default_rng(seed).normal(scale=0.3, size=n)  # float64: tight comparisons
    return EmbeddingDotBias(4, dls.n_users, dls.n_items, y_range=y_range, params=params)


def _tables(flat, model):
    out, offset = {}, 0
    for name, (rows, cols) in zip(
        reference.TABLES, [(model.n_users, 4), (model.n_items, 4), (model.n_users, 1), (model.n_items, 1)]
    ):
        out[name] = flat[offset : offset + rows * cols].reshape(rows, cols)
        offset += rows * cols
    return out


def _reference_epoch(mode, model, params, m, v, dls, order, lrs, moms, step0, opt):
    """One epoch of ``mode`` in NumPy over ``order``; stops at a non-finite loss before its update."""
    P, M, V = _tables(params, model), _tables(m, model), _tables(v, model)
    bs = dls.bs
    losses = []
    for s in range(len(order) // bs):
        rows = order[s * bs : (s + 1) * bs]
        u, i = dls.train_users[rows].astype(np.int64), dls.train_items[rows].astype(np.int64)
        with np.errstate(all="ignore"):
            loss, grads = reference.loss_and_grads(
                *(P[n] for n in reference.TABLES), u, i, dls.train_ratings[rows], model.y_range
            )
        losses.append(loss)
        if not np.isfinite(loss):
            break
        mom = moms[s] if opt.uses_momentum else 0.0
        for name in reference.TABLES:
            touched = u if name.startswith("u_") else i
            hyper = (opt.wd, opt.decouple_wd)
            if opt.name == "adam":
                adam = (lrs[s], moms[s], opt.sqr_mom, opt.eps, *hyper)
                if mode == "exact":
                    reference.adam_step(P[name], grads[name], M[name], V[name], step0 + s + 1, *adam)
                else:
                    reference.sparse_adam_step(P[name], grads[name], M[name], V[name], touched, step0 + s + 1, *adam)
            elif mode == "exact":
                reference.sgd_step(P[name], grads[name], M[name], lrs[s], mom, *hyper)
            else:
                reference.sparse_sgd_step(P[name], grads[name], M[name], touched, lrs[s], mom, *hyper)
    return np.array(losses)


def _schedule(dls):
    steps = dls.n_train // dls.bs
    return np.linspace(2e-2, 5e-3, steps), np.linspace(0.95, 0.85, steps)


@pytest.mark.parametrize("name, settings, mode", CASES)
def test_epochs_match_the_reference_and_evaluate(name, settings, mode):
    backend, dls, opt = _backend(name, settings), _dls(mode), MODES[mode]
    model = _model(dls)
    state = OptState.zeros_like(model.params)
    want = (model.params.copy(), state.exp_avg.copy(), state.exp_avg_sq.copy())
    backend.bind(model, state, dls)
    runner = backend.runner(opt, mode, dls.bs)
    rng = np.random.default_rng(0)
    lrs, moms = _schedule(dls)
    stepwise, rtol = (name, mode) not in HOGWILD, RTOL.get(name, 1e-9)
    for epoch in range(2):
        step0 = epoch * len(lrs)
        got = runner.train_epoch(rng, lrs, moms, step0)
        assert sorted(runner.order) == list(range(dls.n_train)) and runner.progress.sum() == len(lrs)
        expected = _reference_epoch(mode, model, *want, dls, runner.order, lrs, moms, step0, opt)
        if stepwise:
            np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * 1e-3)
        assert len(got) == len(lrs) and np.isfinite(got).all()
    backend.sync()
    if stepwise:
        for got_, want_ in zip((model.params, state.exp_avg, state.exp_avg_sq), want):
            np.testing.assert_allclose(got_, want_, rtol=rtol, atol=rtol * 1e-3)
    valid = (dls.valid_users, dls.valid_items, dls.valid_ratings)
    P = _tables(model.params, model)
    pred, _, _ = reference.forward(
        *(P[n] for n in reference.TABLES), *(a.astype(np.int64) for a in valid[:2]), model.y_range
    )
    assert backend.evaluate(*valid) == pytest.approx(np.mean((pred - valid[2]) ** 2), rel=rtol)


@pytest.mark.parametrize("name, settings, mode", CASES)
def test_divergence_stops_before_the_update(name, settings, mode):
    """A NaN in one user's weights: the first batch with that user gives a NaN loss, the epoch ends
    there, and the weights are those the reference has before that step's update."""
    backend, dls, opt = _backend(name, settings), _dls(mode), MODES[mode]
    model = _model(dls, y_range=None)
    user = int(dls.train_users[dls.n_train // 2])
    model.u_weight.weight[user, 0] = np.nan
    state = OptState.zeros_like(model.params)
    want = (model.params.copy(), state.exp_avg.copy(), state.exp_avg_sq.copy())
    backend.bind(model, state, dls)
    runner = backend.runner(opt, mode, dls.bs)
    lrs, moms = _schedule(dls)
    with np.errstate(all="ignore"):
        got = runner.train_epoch(np.random.default_rng(1), lrs, moms, 0)
    assert len(got) < len(lrs) and not np.isfinite(got[-1])
    if (name, mode) not in HOGWILD:  # Hogwild!'s other threads may finish their steps: no step-exact stop
        expected = _reference_epoch(mode, model, *want, dls, runner.order, lrs, moms, 0, opt)
        assert len(got) == len(expected)
        backend.sync()
        rtol = RTOL.get(name, 1e-9)
        np.testing.assert_allclose(model.params, want[0], rtol=rtol, atol=rtol * 1e-3, equal_nan=True)


def _learner(name, settings, mode, **kw):
    _backend(name, settings)  # skips where the backend cannot run
    dls, opt = _dls(mode), MODES[mode]
    learn = collab_learner(
        dls, n_factors=4, y_range=(0.5, 5.5), seed=3, log=None, backend=name, opt_func=opt, sparse=mode != "exact", **kw
    )
    for key, value in settings.items():
        setattr(learn.backend, key, value)
    return learn


class _Stop(Exception):
    """Stands in for a killed process, raised after the checkpoint of the first epoch."""


def _stop_after_first(learner, epoch):
    if epoch == 0:
        raise _Stop


@pytest.mark.parametrize("name, settings, mode", CASES)
def test_repeat_and_resume(name, settings, mode, tmp_path):
    """The same fit twice gives the same floats, and a fit resumed from its checkpoint after the first
    epoch ends with the uninterrupted fit's weights: bit for bit where ``reproducible(mode)``, else to
    the backend's tolerance."""
    straight = _learner(name, settings, mode)
    straight.warmup()
    straight.fit_one_cycle(2, 2e-2, wd=0.05)
    if (name, mode) in HOGWILD:
        assert np.isfinite(straight.model.params).all()
        pytest.skip(f"{name} does not repeat {mode} mode (Hogwild!)")
    if straight.backend.reproducible(mode):
        same = np.testing.assert_array_equal
    else:
        rtol = RTOL.get(name, 1e-9)

        def same(got, want):
            np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * 1e-3)

    again = _learner(name, settings, mode)
    again.fit_one_cycle(2, 2e-2, wd=0.05)
    same(again.model.params, straight.model.params)
    stopped = _learner(name, settings, mode)
    stopped.after_epoch += [ck.Checkpoint(tmp_path), _stop_after_first]
    with pytest.raises(_Stop):
        stopped.fit_one_cycle(2, 2e-2, wd=0.05)
    resumed = _learner(name, settings, mode)
    ck.resume(resumed, tmp_path)
    same(resumed.model.params, straight.model.params)
    same(resumed.opt_state.exp_avg, straight.opt_state.exp_avg)
    same(np.array(resumed.recorder.values), np.array(straight.recorder.values))


def test_parallel_thread_count_changes_only_the_block_layout():
    """``threads=1``: one group, the learner's permutation, so the parallel backend's per-rating fit is
    the serial backend's bit for bit; a thread count the machine lacks is one clear error."""
    fits = []
    for backend, threads in (("cpu", None), ("parallel", 1)):
        learn = collab_learner(
            _dls("per-rating"),
            n_factors=4,
            seed=3,
            log=None,
            backend=backend,
            threads=threads,
            opt_func=SGD,
            sparse=True,
        )
        learn.fit_one_cycle(2, 2e-2, wd=0.05)
        fits.append(learn.model.params)
    np.testing.assert_array_equal(fits[0], fits[1])
    from mfscratch.errors import ConfigError

    with pytest.raises(ConfigError, match="threads must be between 1 and"):
        collab_learner(_dls("exact"), n_factors=4, log=None, backend="parallel", threads=10_000)
    with pytest.raises(ConfigError, match="cpu backend runs one thread"):
        collab_learner(_dls("exact"), n_factors=4, log=None, backend="cpu", threads=2)
