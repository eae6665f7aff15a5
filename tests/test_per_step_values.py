"""The per-rating epoch without per-step arrays: the one-cycle learning rate made in the kernels
(``records.StepLrs``, ``schedule.one_cycle_lr``) and a long epoch's losses summarised there
(``records.LossSummary``, ``backends.EpochLosses``), against the per-step arrays they replace."""

from __future__ import annotations

import tracemalloc

import numba
import numpy as np
import pandas as pd
import pytest
from kernel_problem import RANGE, SHAPE, layout, problem

from mfscratch import SGD, CollabDataLoaders, DivergenceError, collab_learner, schedule
from mfscratch import learner as learner_module
from mfscratch.backends import CpuBackend, ParallelBackend
from mfscratch.backends.cpu import _PerRatingRunner
from mfscratch.kernels import cpu
from mfscratch.kernels.records import BlockLayout, EpochOut, LossSummary, StepLrs
from mfscratch.learner import SMOOTH_TAIL, Recorder
from mfscratch.synthetic import synthetic_dataloaders

pytestmark = pytest.mark.filterwarnings("ignore::mfscratch.DataWarning")


@pytest.fixture(autouse=True)
def lrs_in_kernel_at_any_size(monkeypatch):
    """The learner makes the learning rates in the kernel above ``LRS_IN_KERNEL_STEPS`` steps an epoch
    (1M); these tests' epochs are small, so it is set to 0 here (except where a test sets it back)."""
    monkeypatch.setattr(learner_module, "LRS_IN_KERNEL_STEPS", 0)


@pytest.mark.parametrize("total, pct", [(100_003, 0.25), (4_001, 0.3), (977, 0.0), (5_000, 0.999), (1, 0.25)])
def test_one_cycle_lr_is_one_cycle_bit_for_bit(total, pct):
    """One step's value, in Python and compiled, equals the per-step array's, at every step."""
    want = schedule.one_cycle(total, 0.02, pct_start=pct)[0]
    ends = (0.02 / 25.0, 0.02, 0.02 / 1e5)
    compiled = cpu.per_rating.one_cycle_lr
    got = np.array([compiled(s, total, pct, *ends) for s in range(total)])
    np.testing.assert_array_equal(got, want)
    every = max(1, total // 997)
    python = np.array([schedule.one_cycle_lr(s, total, pct, *ends) for s in range(0, total, every)])
    np.testing.assert_array_equal(python, want[::every])
    sched = schedule.OneCycle(total, 0.02, pct_start=pct)
    rec = sched.step_lrs(total // 3)
    got = np.array([compiled(rec.first_step + s, rec.total_steps, rec.pct_start, *rec[4:]) for s in range(total // 2)])
    np.testing.assert_array_equal(got, sched(total // 3, total // 3 + total // 2)[0])


@pytest.mark.parametrize(
    "total, pct, first_steps",
    [
        (240_000_000, 0.25, [0, 1_000_000, 59_998_976, 60_000_000, 150_000_000, 239_998_976, 240_100_000]),
        (1_000_000, 0.25, [0, 100_000, 249_000, 250_000, 600_000, 998_976]),  # ML-100k's size: larger turns
        (10_000_000, 0.01, [0, 50_000, 98_976, 100_000, 5_000_000]),  # a short warm-up: roundings grow with 1 / pct
        (50_000, 1.7, [0, 20_000, 48_976]),
    ],
)
def test_rotation_stays_well_inside_its_slack(total, pct, first_steps):
    """The rotated cosine behind the kernels' learning rates (:func:`per_rating.rotation_rates`) stays
    within an eighth of its ``slack`` of the C library's ``cos`` of the exact rate's own angle, step by
    step, in chunks across a fit (its ends, the phase boundary, past the end)."""
    per_rating, chunk = cpu.per_rating, cpu.per_rating.STEP_CHUNK
    checked = 0
    for first in first_steps:
        got = _rotated_cosines(first, chunk, total, pct)
        if got is None:  # a chunk across pct_start: the exact rates
            continue
        cosines, slack = got
        pos = (first + np.arange(chunk)) / total
        warm = pos < pct
        assert warm.all() or not warm.any()
        term = pos / pct if warm[0] else (pos - pct) / (1.0 - pct)
        want = np.cos(np.pi * (1.0 - term))  # the exact rate's operations, in NumPy
        assert np.abs(cosines - want).max() < slack / 8
        assert slack < 1e-11  # far below a float32 rate's spacing (6e-8 of it)
        checked += 1
    assert checked >= len(first_steps) - 1
    assert not per_rating.rotation_rates(0, chunk, 1_000, 0.25, 0.1, 1.0, 0.0)[0]  # a short fit: turns too far


def _rotated_cosines(first, n, total, pct):
    ok, s0, s1, cos_a, sin_a, beta, slack = cpu.per_rating.rotation_rates(first, n, total, pct, 0.1, 1.0, 0.0)
    if not ok:
        return None
    # the cosine back from the bounds' midpoint: a = s0 + (1 + (c - slack)) (s1 - s0) / 2
    a_b = np.array([cpu.per_rating.rotated_bounds(j, s0, s1, cos_a, sin_a, beta, slack) for j in range(n)])
    return (a_b.mean(axis=1) - s0) * 2.0 / (s1 - s0) - 1.0, slack


@numba.njit
def _fill_chunks(lrs, wd, n, steps, shrinks):
    for c0 in range(0, n, cpu.per_rating.STEP_CHUNK):
        c1 = min(c0 + cpu.per_rating.STEP_CHUNK, n)
        cpu.per_rating.fill_lrs(lrs, wd, c0, c1, steps[c0:c1], shrinks[c0:c1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "total, first, pct, lr_max, wd",
    [
        (240_000_000, 0, 0.25, 0.02, 0.01),  # the start of a 12-epoch fit at ML-25M's shape
        (240_000_000, 59_990_000, 0.25, 0.02, 0.01),  # across the phase boundary
        (240_000_000, 239_900_000, 0.25, 0.02, 0.01),  # the end: rates near lr_max / div_final
        (100_003, 0, 0.0, 0.1, 0.0),
        (5_000, 0, 0.999, 0.02, 0.08),  # and steps past the end (positions above 1)
        (300_000, 7, 0.3, 3.0, 1.5),  # a rate times wd near 1: shrinks near 0
        (50_000, 0, 1.7, 0.02, 0.01),  # pct_start above 1
        (50_000, 0, 0.25, 0.02, -0.05),  # a negative wd
    ],
)
def test_fill_lrs_gives_the_exact_rates_roundings(total, first, pct, lr_max, wd, dtype):
    """The numbers a step takes from its rate, ``T(lr)`` and ``T(1 - lr wd)``, from the kernel's
    two-pass fill equal those of :func:`schedule.one_cycle_lr`'s exact rate, bit for bit, chunk by
    chunk, for float32 and float64 tables."""
    ends = (lr_max / 25.0, lr_max, lr_max / 1e5)
    n = 100_000  # past the schedule's end where total - first is less
    lrs = StepLrs(np.empty(0), total, first, pct, *ends)
    steps, shrinks = np.empty(n, dtype), np.empty(n, dtype)
    _fill_chunks(lrs, wd, n, steps, shrinks)
    exact = np.array([schedule.one_cycle_lr(first + s, total, pct, *ends) for s in range(n)])
    np.testing.assert_array_equal(steps, exact.astype(dtype))
    np.testing.assert_array_equal(shrinks, (1.0 - exact * wd).astype(dtype))


def _with_threads(threads, fn):
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        return fn()
    finally:
        numba.set_num_threads(before)


def _kernels():
    """(name, n_groups, run(params, data, layout, lrs, out)) for every per-rating epoch kernel."""
    no_order = np.empty(0, dtype=np.int64)

    def shuffled(params, data, blocks, lrs, out):  # the serial blocked epoch shuffling each block itself
        canonical = blocks.order.copy()
        order = BlockLayout(np.empty_like(canonical), blocks.block_start, blocks.n_groups)
        return cpu.train_epoch_per_rating_shuffled(params, SHAPE, data, order, lrs, 0.1, RANGE, out, canonical, 3)

    def dynamic(params, data, blocks, lrs, out):
        run = lambda: cpu.train_epoch_per_rating_dynamic(  # noqa: E731
            params, SHAPE, data, blocks, lrs, 0.1, RANGE, out, 2, no_order, 0
        )
        return _with_threads(2, run)

    def barrier(params, data, blocks, lrs, out):
        return _with_threads(
            2, lambda: cpu.train_epoch_per_rating_parallel(params, SHAPE, data, blocks, lrs, 0.1, RANGE, out)
        )

    def serial(params, data, blocks, lrs, out):
        return cpu.train_epoch_per_rating(params, SHAPE, data, blocks, lrs, 0.1, RANGE, out)

    return [("serial", 1, serial), ("serial", 3, serial), ("shuffled", 3, shuffled), ("barrier", 2, barrier),
            ("barrier", 3, barrier), ("dynamic", 3, dynamic)]  # fmt: skip


@pytest.mark.parametrize("name, n_groups, run", _kernels(), ids=lambda v: str(v) if not callable(v) else "")
def test_kernels_make_the_one_cycle_lr_and_summarise_the_losses(name, n_groups, run):
    """Each per-rating kernel given a ``StepLrs`` and a ``LossSummary`` trains to the same weights bit for
    bit as with the epoch's slice of ``one_cycle`` and one loss a step, and keeps exactly those losses:
    the sampled steps', the tail's, and each block's float64 sum in step order."""
    data, model = problem(np.float32, n_ratings=600)
    n = len(data.ratings)
    order = np.random.default_rng(4).permutation(n)
    blocks = (
        BlockLayout(order, np.array([0, n], dtype=np.int64), 1) if n_groups == 1 else layout(data, order, n_groups)[0]
    )
    sched = schedule.OneCycle(3 * n, 0.3)
    want, want_losses = model.params.copy(), np.full(n, np.nan)
    progress = np.zeros(1, dtype=np.int64)
    done = run(want, data, blocks, sched(n, 2 * n, with_moms=False)[0], EpochOut(want_losses, progress))
    assert done == n and np.isfinite(want_losses).all()
    sample_steps = np.sort(np.random.default_rng(0).choice(n, 50, replace=False))
    tail = np.full(40, np.nan)
    sums, bad = np.full(n_groups**2, np.nan), np.zeros(n_groups**2)
    summary = LossSummary(sample_steps, np.full(50, np.nan), tail, n - 40, sums, bad)
    got = model.params.copy()
    assert run(got, data, blocks, sched.step_lrs(n), EpochOut(summary, progress)) == n
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(summary.sample, want_losses[sample_steps])
    np.testing.assert_array_equal(tail, want_losses[-40:])
    starts = blocks.block_start
    want_sums = [np.cumsum(want_losses[a:b])[-1] if b > a else 0.0 for a, b in zip(starts[:-1], starts[1:])]
    np.testing.assert_array_equal(sums, want_sums)  # sequential float64 sums, block by block
    assert (bad == 0).all()
    # a non-finite loss: the block that met it keeps it, and the step count is the array path's
    ratings = data.ratings.copy()
    ratings[blocks.order[starts[-2] - 1] if n_groups > 1 else order[n // 2]] = np.inf
    bad_data = data._replace(ratings=ratings)
    want_losses[:] = np.nan
    n_want = run(
        model.params.copy(), bad_data, blocks, sched(n, 2 * n, with_moms=False)[0], EpochOut(want_losses, progress)
    )
    bad[:] = 0.0
    n_got = run(model.params.copy(), bad_data, blocks, sched.step_lrs(n), EpochOut(summary, progress))
    assert n_got == n_want < n
    block = int(np.searchsorted(starts, n_got - 1, side="right")) - 1
    assert bad[block] == want_losses[n_got - 1] == np.inf


def _fit(monkeypatch, in_kernel, steps_kept, backend="cpu", n_groups=None, dls=None, epochs=3, lr=0.02):
    """A per-rating fit_one_cycle with the learning rates made in the kernel (``in_kernel``) or handed to
    it as per-step arrays, and ``Recorder.STEPS_KEPT`` set to ``steps_kept``."""
    monkeypatch.setattr(Recorder, "STEPS_KEPT", steps_kept)
    monkeypatch.setattr(_PerRatingRunner, "steps_in_kernel", in_kernel)
    monkeypatch.setattr(CpuBackend, "per_rating_n_groups", n_groups)
    monkeypatch.setattr(ParallelBackend, "per_rating_n_groups", n_groups)
    dls = dls or synthetic_dataloaders(4000, 60, 50, bs=1, seed=0)
    learn = collab_learner(
        dls, n_factors=8, y_range=(0.5, 5.5), opt_func=SGD, sparse=True, seed=1, log=None, backend=backend, wd=0.08
    )
    learn.fit_one_cycle(epochs, lr)
    return learn


def _assert_same_record(got, want, sample_of=None):
    """The recorder's values of a summarised fit (``got``) equal the per-step arrays' (``want``): every
    value bit for bit, each epoch's mean to 1e-12 (a sum in block order, not NumPy's pairwise one)."""
    assert got.sampled
    assert got.values == want.values  # train_loss (the moving average over the tail) and valid_loss
    assert got.steps == want.steps
    for name in ("losses", "lrs", "moms"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    np.testing.assert_allclose(got.mean_losses, want.mean_losses, rtol=1e-12)


@pytest.mark.parametrize("backend, n_groups", [("cpu", None), ("cpu", 3), ("parallel", None), ("parallel", 3)])
def test_summarised_epochs_record_what_the_per_step_arrays_did(monkeypatch, backend, n_groups):
    """STEPS_KEPT patched small, so that the kernel summarises each epoch: the weights and every recorded
    value equal those of the fit that hands the kernel per-step learning rates and keeps every loss."""
    arrays = _fit(monkeypatch, False, 1000, backend, n_groups)
    summarised = _fit(monkeypatch, True, 1000, backend, n_groups)
    np.testing.assert_array_equal(summarised.model.params, arrays.model.params)
    _assert_same_record(summarised.recorder, arrays.recorder)
    # the same steps and values as the fit that keeps every step, and the means are exactly the block sums
    everything = _fit(monkeypatch, True, 20_000, backend, n_groups).recorder
    assert not everything.sampled and everything.values == summarised.recorder.values
    steps = summarised.recorder.steps
    np.testing.assert_array_equal(summarised.recorder.losses, np.array(everything.losses)[steps])
    np.testing.assert_array_equal(summarised.recorder.lrs, np.array(everything.lrs)[steps])
    full = np.array(everything.losses).reshape(3, -1)
    np.testing.assert_allclose(summarised.recorder.mean_losses, full.mean(axis=1), rtol=1e-12)
    if backend == "cpu" and n_groups is None:  # one block: the sum is the losses' in step order
        assert summarised.recorder.mean_losses == [np.cumsum(row)[-1] / len(row) for row in full]


@pytest.mark.parametrize("backend, n_groups", [("cpu", None), ("parallel", 3)])
def test_summarised_epochs_with_learning_rates_from_arrays(monkeypatch, backend, n_groups):
    """Epochs of at most LRS_IN_KERNEL_STEPS steps: the losses summarised in the kernel, the learning
    rates read from the epoch's array (cheaper than a cosine a step): the same weights and records."""
    arrays = _fit(monkeypatch, False, 1000, backend, n_groups)
    monkeypatch.setattr(learner_module, "LRS_IN_KERNEL_STEPS", 10**9)
    summarised = _fit(monkeypatch, True, 1000, backend, n_groups)
    np.testing.assert_array_equal(summarised.model.params, arrays.model.params)
    _assert_same_record(summarised.recorder, arrays.recorder)


def test_ml100k_per_rating_recipe_summarised_in_the_kernel(monkeypatch, ml100k):
    """Real ML-100k (80,000 training ratings, more than STEPS_KEPT: the summary runs unpatched) on the
    per-rating recipe: the same weights and recorded values as with per-step arrays."""
    df = pd.read_csv(ml100k / "u.data", sep="\t", header=None, names=["user", "item", "rating", "timestamp"])
    dls = CollabDataLoaders.from_df(df, valid_pct=0.2, seed=42, bs=1)
    assert dls.n_train > Recorder.STEPS_KEPT
    for backend in ("cpu", "parallel"):
        arrays = _fit(monkeypatch, False, Recorder.STEPS_KEPT, backend, dls=dls, epochs=2)
        summarised = _fit(monkeypatch, True, Recorder.STEPS_KEPT, backend, dls=dls, epochs=2)
        np.testing.assert_array_equal(summarised.model.params, arrays.model.params)
        _assert_same_record(summarised.recorder, arrays.recorder)
        assert len(summarised.recorder.losses) == 2 * Recorder.SAMPLE_STEPS


def test_divergence_reports_the_same_step_loss_and_lr(monkeypatch):
    messages = []
    for in_kernel in (False, True):
        with pytest.raises(DivergenceError) as err, np.errstate(all="ignore"):
            _fit(monkeypatch, in_kernel, 1000, lr=1e6)
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "step" in messages[0]


def test_a_summarised_epoch_allocates_no_per_step_array(monkeypatch):
    """A long per-rating epoch allocates neither per-step learning rates, momenta nor losses: what the
    fit allocates is the epoch's order (8 bytes a rating with one group), not 32 bytes a rating more."""
    dls = synthetic_dataloaders(200_000, 300, 200, bs=1, seed=0)
    n = dls.n_train
    peaks = {}
    for in_kernel in (False, True):
        monkeypatch.setattr(_PerRatingRunner, "steps_in_kernel", in_kernel)
        learn = collab_learner(dls, n_factors=8, y_range=(0.5, 5.5), opt_func=SGD, sparse=True, seed=1, log=None)
        learn.warmup()
        tracemalloc.start()
        try:
            learn.fit_one_cycle(2, 0.02)
            peaks[in_kernel] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peaks[True] < 10 * n < 3 * 8 * n < peaks[False]


def test_smooth_tail_is_long_enough():
    """The moving average's weight on what comes before the tail is below float64's resolution."""
    assert 0.98**SMOOTH_TAIL < 1e-30 and SMOOTH_TAIL < Recorder.STEPS_KEPT


def test_constant_lr_fit_summarised_records_what_the_arrays_did(monkeypatch):
    """``fit`` (a constant rate: one element for every step) through the same two ways."""
    fits = []
    for in_kernel in (False, True):
        monkeypatch.setattr(Recorder, "STEPS_KEPT", 1000)
        monkeypatch.setattr(_PerRatingRunner, "steps_in_kernel", in_kernel)
        dls = synthetic_dataloaders(4000, 60, 50, bs=1, seed=0)
        learn = collab_learner(dls, n_factors=8, y_range=(0.5, 5.5), opt_func=SGD, sparse=True, seed=1, log=None)
        learn.fit(2, 0.01, wd=0.05)
        fits.append(learn)
    np.testing.assert_array_equal(fits[1].model.params, fits[0].model.params)
    _assert_same_record(fits[1].recorder, fits[0].recorder)


def test_resumed_summarised_fit_is_bit_identical(monkeypatch, tmp_path):
    """A checkpointed per-rating fit whose epochs are summarised resumes to the uninterrupted fit: the
    weights and the recorder's values (the moving average restarts from the restored one)."""
    from mfscratch import checkpoint as ck

    monkeypatch.setattr(Recorder, "STEPS_KEPT", 1000)

    class Stop(Exception):
        pass

    def stop_after_first(learn, epoch):
        if epoch == 0:
            raise Stop

    def learner():
        dls = synthetic_dataloaders(4000, 60, 50, bs=1, seed=0)
        return collab_learner(dls, n_factors=8, y_range=(0.5, 5.5), opt_func=SGD, sparse=True, seed=1, log=None)

    straight = learner()
    straight.fit_one_cycle(3, 0.02)
    stopped = learner()
    stopped.after_epoch += [ck.Checkpoint(tmp_path), stop_after_first]
    with pytest.raises(Stop):
        stopped.fit_one_cycle(3, 0.02)
    resumed = learner()
    ck.resume(resumed, tmp_path)
    assert resumed.recorder.sampled
    np.testing.assert_array_equal(resumed.model.params, straight.model.params)
    assert resumed.recorder.values == straight.recorder.values
    assert resumed.recorder.losses == straight.recorder.losses and resumed.recorder.steps == straight.recorder.steps


def test_step_lrs_equal_the_slices_for_any_number_type():
    """A NumPy float32 lr_max (or integer div) gives the kernel the same rates as the slices."""
    sched = schedule.OneCycle(5000, np.float32(0.02), div=25, div_final=np.float64(1e4), pct_start=np.float32(0.3))
    rec = sched.step_lrs(1000)
    compiled = cpu.per_rating.one_cycle_lr
    got = np.array([compiled(1000 + s, rec.total_steps, rec.pct_start, *rec[4:]) for s in range(2000)])
    np.testing.assert_array_equal(got, sched(1000, 3000, with_moms=False)[0])
    np.testing.assert_array_equal(got, sched.at(np.arange(1000, 3000))[0])
