"""The learner: fastai's ``collab_learner``, ``fit`` and ``fit_one_cycle``, and the recorder.

The path of a batch: ``dls`` holds the encoded arrays -> :meth:`Learner._fit` makes the per-step
learning rates and momenta (or, for the per-rating runner, a ``records.StepLrs`` from which its
kernel makes them) -> the backend's epoch runner (``backends/``) draws the epoch's order and
runs the compiled kernel (``kernels/``: forward, backward, optimiser update) -> the model's flat
parameter buffer.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np
from numba import njit

from . import schedule
from . import validate as checks  # not "validate": Learner has a validate() method
from .backends import EpochLosses, LossKeep, get_backend, mode_of
from .callbacks import CancelFitException, attached
from .data import CollabDataLoaders
from .errors import ConfigError, DivergenceError
from .learner_api import LearnerAPI
from .model import EmbeddingDotBias
from .notices import compile_notice
from .optim import Adam, OptState, resolve_opt

__all__ = ["Learner", "Recorder", "collab_learner", "format_time"]

SMOOTH_BETA = 0.98  # fastai's AvgSmoothLoss
#: Per-rating epochs of more steps than this (and of more than ``Recorder.STEPS_KEPT``: the epochs whose
#: losses the kernel summarises) make each step's learning rate in the kernel instead of reading it from
#: an array made before the epoch (8 bytes a step): the same cosines, split over the threads and counted
#: in the epoch's training time, with no array (docs/speed.md, "Per-step values at bs 1").
LRS_IN_KERNEL_STEPS = 0
#: A long epoch summarised in the kernel keeps its last SMOOTH_TAIL losses for the moving average: the
#: earlier ones weigh at most 0.98^4096 ~ 1e-36 of it, far below float64's resolution (2e-16).
SMOOTH_TAIL = 4096


class Recorder:
    """What a fit records. ``values``: one ``[train_loss, valid_loss]`` per epoch, as fastai's recorder.

    Per epoch: ``epoch_seconds`` (the epoch's wall time: training, validation and recording),
    ``train_seconds`` (its training part), ``valid_seconds`` (its validation part) and
    ``mean_losses`` (the mean of its batch losses). Per fit: ``setup_seconds``, the one-time
    set-up before the first epoch (binding the data, the per-rating blocks) plus the making of
    each epoch's slice of the schedule.

    Per-step values: ``losses`` (raw batch losses), ``lrs`` and ``moms`` (learning rates and
    momenta), as lists of floats as fastai's, and ``steps``, the 0-based step of the fit each
    value belongs to. An epoch of at most :attr:`STEPS_KEPT` steps keeps every step (batches of 64
    on ML-100k: 1,250 steps); a longer one (batches of one rating: a step per rating) keeps a
    sample of :attr:`SAMPLE_STEPS` steps drawn with a seed fixed by the epoch's first step, so that
    memory stays flat however many epochs run (at 20M steps an epoch, every loss would be 160 MB
    more an epoch) and a resumed fit records the same steps as an uninterrupted one. ``steps``
    says which steps were kept; ``mean_losses`` holds each epoch's mean over all its steps. The
    per-rating runner summarises such an epoch in its kernel (``backends.EpochLosses``): the same
    sampled steps and values, and a mean whose sum is added in block order rather than NumPy's
    pairwise order (equal to rounding, about 1e-16 relative).
    """

    #: Epochs of at most this many steps keep every step's values.
    STEPS_KEPT = 20_000
    #: Longer epochs keep this many steps, a seeded sample.
    SAMPLE_STEPS = 2_000
    _STEP_FIELDS = ("steps", "losses", "lrs", "moms")

    def __init__(self) -> None:
        self.values: list = []
        self.epoch_seconds: list = []
        self.train_seconds: list = []
        self.valid_seconds: list = []
        self.mean_losses: list = []
        self.setup_seconds: float = 0.0
        self._steps: dict[str, list] = {name: [] for name in self._STEP_FIELDS}

    def kept_steps(self, n: int, start: int) -> np.ndarray:
        """The positions in an epoch of ``n`` steps, starting at fit step ``start``, whose values are kept."""
        if n <= self.STEPS_KEPT:
            return np.arange(n)
        return np.sort(np.random.default_rng(start).choice(n, self.SAMPLE_STEPS, replace=False))

    def add_steps(self, losses, lrs, moms, start: int, steps_schedule=None) -> None:
        """Record one epoch's per-step values, its steps being ``start, start + 1, ...`` of the fit.

        ``losses``: one a step (an array), or an ``EpochLosses`` summary whose sample holds the kept
        steps'. Copies what it keeps: a runner may reuse its buffers for the next epoch. ``lrs`` or
        ``moms`` ``None``: the kept steps' values come from ``steps_schedule.at`` (``schedule.OneCycle``).
        """
        if isinstance(losses, EpochLosses):
            n = losses.n_done
            self.mean_losses.append(losses.total / n if n else float("nan"))
            kept = np.asarray(losses.sample_steps, dtype=np.int64)
            kept_losses = np.array(losses.sample, dtype=np.float64)
        else:
            n = len(losses)
            self.mean_losses.append(float(np.mean(losses)) if n else float("nan"))
            kept = self.kept_steps(n, start)
            kept_losses = np.asarray(losses, dtype=np.float64)[kept]
        self._steps["steps"].append((kept + start).astype(np.float64))
        self._steps["losses"].append(kept_losses)
        at = steps_schedule.at(kept + start) if lrs is None or moms is None else (None, None)
        for name, values, made in (("lrs", lrs, at[0]), ("moms", moms, at[1])):
            self._steps[name].append(np.asarray(made if values is None else np.asarray(values)[kept], dtype=np.float64))

    @property
    def sampled(self) -> bool:
        """Whether some epoch kept a sample of its steps rather than every step."""
        steps = self.steps
        return bool(len(steps)) and steps[-1] + 1 != len(steps)

    def _step_list(self, name: str) -> list:
        chunks = self._steps[name]
        if len(chunks) != 1:  # join once: reading twice costs one concatenation
            chunks[:] = [np.concatenate(chunks or [np.empty(0)])]
        return chunks[0].tolist()

    def _set_steps(self, name: str, values) -> None:
        self._steps[name] = [np.asarray(values, dtype=np.float64).reshape(-1)]

    def _steps_list(self) -> list:
        if not self._steps["steps"] and self._steps["losses"]:  # values set without their steps: every step
            self._steps["steps"] = [np.arange(sum(len(c) for c in self._steps["losses"]), dtype=np.float64)]
        return [int(s) for s in self._step_list("steps")]

    losses = property(lambda self: self._step_list("losses"), lambda self, v: self._set_steps("losses", v))
    lrs = property(lambda self: self._step_list("lrs"), lambda self, v: self._set_steps("lrs", v))
    moms = property(lambda self: self._step_list("moms"), lambda self, v: self._set_steps("moms", v))
    steps = property(_steps_list, lambda self, v: self._set_steps("steps", v))


def format_time(seconds: float) -> str:
    """fastai's ``mm:ss`` (``hh:mm:ss`` past an hour)."""
    s = int(round(seconds))
    h, m = divmod(s, 3600)
    m, s = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


@njit(cache=True)
def _moving_average(losses, avg, beta):
    for loss in losses:
        avg = beta * avg + (1.0 - beta) * loss
    return avg


def _smooth(losses: np.ndarray, avg: float, count: int) -> tuple[float, int, float]:
    """Advance fastai's debiased moving average over ``losses``; returns ``(avg, count, smoothed)``.

    Compiled, because with batches of one rating an epoch has a step per rating (a Python loop
    over ML-100k's 80k losses took 14 ms, three times the epoch's training).
    """
    avg = float(_moving_average(np.asarray(losses, dtype=np.float64), float(avg), SMOOTH_BETA))
    count += len(losses)
    smoothed = avg / (1.0 - SMOOTH_BETA**count) if count else float("nan")
    return avg, count, smoothed


def _smooth_tail(tail: np.ndarray, n: int, count: int) -> tuple[float, int, float]:
    """:func:`_smooth` over an epoch of ``n`` steps of which only the last ``len(tail)`` losses are
    kept (at least :data:`SMOOTH_TAIL`): the average restarts at the tail, since what came before
    weighs at most ``0.98^len(tail)`` of it (below float64's resolution: the same float)."""
    avg = float(_moving_average(np.asarray(tail, dtype=np.float64), 0.0, SMOOTH_BETA))
    count += n
    return avg, count, avg / (1.0 - SMOOTH_BETA**count)


def _max_lr(steps_schedule, start: int, stop: int) -> float:
    """The largest learning rate of steps ``start..stop-1``, made a slice at a time (no per-step array)."""
    chunk = 1 << 20
    return max(
        float(np.max(steps_schedule(a, min(a + chunk, stop), with_moms=False)[0])) for a in range(start, stop, chunk)
    )


class Learner(LearnerAPI):
    """Trains an :class:`EmbeddingDotBias` on a :class:`CollabDataLoaders` (predicting, inspecting,
    saving and loading: :class:`~mfscratch.learner_api.LearnerAPI`).

    ``opt_func`` is ``Adam`` or ``SGD`` (or an instance / partial); ``wd`` overrides the optimiser's
    weight decay; ``seed`` fixes the order of the batches; ``sparse=True`` updates only the rows in
    each batch instead of every row (not the fastai recipe; see ``optim.py``); ``backend`` picks
    where the kernels run. ``log`` receives each line of the results table (``None``: silent).

    ``threads`` sets the Numba threads of the ``parallel`` backend (default: all of them);
    ``per_rating_scheduler`` how that backend hands per-rating SGD's blocks to them: ``"dynamic"``
    (default) or ``"barrier"``, reproducible, or ``"free"``, LIBMF's rule, steadier when other work
    shares the cores but not reproducible run to run.

    ``after_epoch`` is a list of callables ``cb(learner, epoch)`` run after each finished epoch
    (``mfscratch.checkpoint.Checkpoint`` is one); ``fit_args`` holds the arguments of the current
    fit, so that a checkpoint can resume it (``fit(..., start_epoch=...)``, as in fastai).
    """

    def __init__(
        self,
        dls: CollabDataLoaders,
        model: EmbeddingDotBias,
        opt_func=Adam,
        lr: float = 1e-3,
        wd: float | None = None,
        seed: int | None = None,
        sparse: bool = False,
        backend: str = "cpu",
        log=print,
        threads: int | None = None,
        per_rating_scheduler: str | None = None,
    ):
        self.dls, self.model = dls, model
        self.opt = resolve_opt(opt_func)
        self.lr = checks.positive_float("lr", lr)
        self.wd = None if wd is None else checks.nonneg_float("wd", wd)
        self.sparse = bool(sparse)
        self.backend_name = backend
        self.backend = get_backend(backend, threads=threads, per_rating_scheduler=per_rating_scheduler)
        self.log = log
        seed = checks.check_seed(seed)
        self.rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[1] if seed is not None else None)
        self.opt_state = OptState.zeros_like(model.params)
        self.recorder = Recorder()
        self._smooth_avg, self._smooth_count = 0.0, 0
        self.after_epoch: list = []
        self.fit_args: dict | None = None
        checks.warn_ratings_outside_range(dls, model.y_range)

    # --- public API, as in fastai --------------------------------------------------------
    def fit(
        self, n_epoch: int, lr: float | None = None, wd: float | None = None, start_epoch: int = 0, cbs=None
    ) -> None:
        """Train ``n_epoch`` epochs at a constant learning rate and the optimiser's own momentum.

        ``start_epoch`` skips the epochs a restored checkpoint already trained (see ``checkpoint.py``);
        ``cbs`` are callbacks for this fit only (``callbacks.py``: early stopping, keeping the best epoch).
        """
        lr = self.lr if lr is None else lr
        checks.check_fit(n_epoch, lr, wd, start_epoch)
        self.fit_args = dict(method="fit", n_epoch=n_epoch, lr=lr, wd=wd)
        total = n_epoch * self._steps_per_epoch()
        with attached(self, cbs, start_epoch), compile_notice(self.log):
            self._fit(n_epoch, schedule.Constant(total, lr, self.opt.mom), wd, start_epoch)

    def fit_one_cycle(
        self,
        n_epoch: int,
        lr_max: float | None = None,
        div: float = 25.0,
        div_final: float = 1e5,
        pct_start: float = 0.25,
        wd: float | None = None,
        moms=None,
        start_epoch: int = 0,
        cbs=None,
    ) -> None:
        """fastai's one-cycle: cosine warm-up of the learning rate to ``lr_max``, then annealing to
        ``lr_max / div_final``; momentum moves the opposite way (``moms``, default (0.95, 0.85, 0.95)).
        ``cbs``: callbacks for this fit only, as in :meth:`fit`."""
        lr_max = self.lr if lr_max is None else lr_max
        checks.check_fit(n_epoch, lr_max, wd, start_epoch)
        self.fit_args = checks.one_cycle_fit_args(n_epoch, lr_max, div, div_final, pct_start, wd, moms)
        moms = (0.95, 0.85, 0.95) if moms is None else moms
        total = n_epoch * self._steps_per_epoch()
        with attached(self, cbs, start_epoch), compile_notice(self.log):
            self._fit(n_epoch, schedule.OneCycle(total, lr_max, div, div_final, pct_start, moms), wd, start_epoch)

    def validate(self) -> float:
        """Exact mean squared error over the validation rows under the current weights."""
        self.backend.bind(self.model, self.opt_state, self.dls)
        return self._valid_loss()

    @property
    def mode(self) -> str:
        """The mode a fit runs: ``exact``, ``sparse`` or ``per-rating`` (sparse plain SGD with ``bs = 1``)."""
        return mode_of(self.sparse, self.opt, self.dls.bs)

    # --- the loop ---------------------------------------------------------------------------
    def _steps_per_epoch(self) -> int:
        steps = self.dls.n_train // self.dls.bs
        if self.dls.n_train == 0:
            raise ConfigError(
                "this learner holds no training ratings (load_learner without dls=): "
                "pass the ratings with load_learner(path, dls=...) to train it further"
            )
        if steps < 1:
            raise ConfigError(
                f"batch size {self.dls.bs} is larger than the {self.dls.n_train} training rows "
                "(the last partial batch is dropped); use a smaller bs"
            )
        return steps

    def _valid_loss(self) -> float:
        d = self.dls
        if d.n_valid == 0:
            return float("nan")
        return self.backend.evaluate(d.valid_users, d.valid_items, d.valid_ratings)

    def _fit(self, n_epoch: int, steps_schedule, wd: float | None, start_epoch: int = 0) -> None:
        """Train epochs ``start_epoch..n_epoch-1``; ``steps_schedule(a, b)`` gives steps ``a..b-1``: ``(lrs, moms)``."""
        if int(n_epoch) != n_epoch or n_epoch < 1:
            raise ConfigError(f"n_epoch must be a positive integer, got {n_epoch!r}")
        wd = self.wd if wd is None else wd
        # fastai: a fit's wd overrides the optimiser's default for that fit only.
        opt = dataclasses.replace(self.opt) if wd is None else dataclasses.replace(self.opt, wd=float(wd))
        steps = self._steps_per_epoch()
        rec = self.recorder
        t_setup = time.perf_counter()
        self.backend.bind(self.model, self.opt_state, self.dls)
        runner = self.backend.runner(opt, mode_of(self.sparse, opt, self.dls.bs), self.dls.bs)
        # The per-rating runner summarises a long epoch's losses in its kernel and makes each step's learning
        # rate there too (no momentum: plain SGD): no per-step lrs, momenta or losses (at 20M steps an
        # epoch each would be 160 MB); the cosines then run on the kernel's threads, inside the epoch's
        # training time. Shorter epochs get the epoch's learning rates as an array.
        summarise = getattr(runner, "steps_in_kernel", False) and steps > rec.STEPS_KEPT
        in_kernel = summarise and steps > LRS_IN_KERNEL_STEPS and hasattr(steps_schedule, "step_lrs")
        # Plain SGD never reads its momentum: a long epoch then skips making the momenta (8 bytes a step)
        # and hands the runner zeros (calloc'd, so never resident where the kernel does not read them);
        # the recorder's sample of them is made at its steps.
        lean = not in_kernel and not opt.uses_momentum and steps > rec.STEPS_KEPT and hasattr(steps_schedule, "at")
        zero_moms = np.zeros(steps if lean else 0, dtype=np.float64)
        rec.setup_seconds = time.perf_counter() - t_setup
        if start_epoch == 0:  # fastai resets the smoother at each fit; a resumed fit keeps the restored one
            self._smooth_avg, self._smooth_count = 0.0, 0
        if start_epoch < n_epoch:
            self._log_header()
        for epoch in range(start_epoch, n_epoch):
            first = epoch * steps
            # The epoch's slice of the schedule is set-up, as the whole schedule was when made at once:
            # outside train_seconds (at bs 1 on 5M ratings, 0.15 s of cosines).
            t_schedule = time.perf_counter()
            keep = LossKeep(rec.kept_steps(steps, first), SMOOTH_TAIL) if summarise else None
            if in_kernel:
                ep_lrs, ep_moms = steps_schedule.step_lrs(first), np.empty(0, dtype=np.float64)
            elif lean:
                ep_lrs, ep_moms = steps_schedule(first, first + steps, with_moms=False)[0], zero_moms
            else:
                ep_lrs, ep_moms = steps_schedule(first, first + steps)
            t0 = time.perf_counter()
            rec.setup_seconds += t0 - t_schedule
            losses = self._train_epoch(runner, ep_lrs, ep_moms, epoch, n_epoch, steps, keep)
            t_train = time.perf_counter() - t0
            if isinstance(losses, EpochLosses):
                n_done, last_loss = losses.n_done, losses.last_loss
            else:
                n_done, last_loss = len(losses), (losses[-1] if len(losses) else float("nan"))
            if n_done < steps or not np.isfinite(last_loss):
                self.backend.sync()
                bad = n_done
                if in_kernel:
                    lr = _max_lr(steps_schedule, first, first + max(bad, 1))
                else:
                    lr = max(ep_lrs[:bad]) if bad else ep_lrs[0]
                decoupled = opt.decouple_wd or not isinstance(opt, Adam)  # the decay multiplies by 1 - lr * wd
                raise DivergenceError(checks.divergence_message(epoch, bad, last_loss, lr, opt.wd, decoupled))
            self.opt_state.step += steps
            if isinstance(losses, EpochLosses):
                smoothed = _smooth_tail(losses.tail, losses.n_done, self._smooth_count)
            else:
                smoothed = _smooth(losses, self._smooth_avg, self._smooth_count)
            self._smooth_avg, self._smooth_count, train_loss = smoothed
            t_valid = time.perf_counter()
            valid_loss = self._valid_loss()
            t_valid = time.perf_counter() - t_valid
            rec.values.append([train_loss, valid_loss])
            rec.add_steps(
                losses, None if in_kernel else ep_lrs, None if lean or in_kernel else ep_moms, first, steps_schedule
            )
            seconds = time.perf_counter() - t0
            rec.epoch_seconds.append(seconds)
            rec.train_seconds.append(t_train)
            rec.valid_seconds.append(t_valid)
            self._log_row(epoch, train_loss, valid_loss, seconds)
            try:
                for callback in self.after_epoch:
                    callback(self, epoch)
            except CancelFitException:  # a callback ends the fit after this epoch (early stopping)
                break
        self.backend.sync()

    def warmup(self) -> None:
        """Compile (or load from Numba's cache) the kernels this learner's fits run, before timing them."""
        self.backend.warmup(self.model, self.dls, self.opt, self.mode)

    def _log_header(self) -> None:
        if self.log is not None:
            self.log(f"{'epoch':<10}{'train_loss':<12}{'valid_loss':<12}{'time':<10}")

    def _log_row(self, epoch, train_loss, valid_loss, seconds) -> None:
        if self.log is not None:
            self.log(f"{epoch:<10}{train_loss:<12.6f}{valid_loss:<12.6f}{format_time(seconds):<10}")

    # --- progress bar for long epochs ----------------------------------------------------------
    #: ``None``: show a tqdm bar on stderr when it is a terminal, the learner logs, and an epoch has
    #: more than ``PROGRESS_MIN_ROWS`` training rows; ``True``/``False``: always/never.
    progress = None
    PROGRESS_MIN_ROWS = 1_000_000

    def _show_progress(self) -> bool:
        if self.progress is not None:
            return bool(self.progress)
        return self.log is not None and self.dls.n_train > self.PROGRESS_MIN_ROWS and sys.stderr.isatty()

    def _train_epoch(self, runner, lrs, moms, epoch: int, n_epoch: int, steps: int, keep=None):
        """One epoch of ``steps`` steps through the backend's runner: one call (``keep``: see
        ``backends.EpochRunner``); with a progress bar, a thread polls the runner's step counter while
        the epoch runs, so the bar changes nothing the epoch computes."""
        step0 = self.opt_state.step
        args = (self.rng, lrs, moms, step0) + (() if keep is None else (keep,))
        if not self._show_progress():
            return runner.train_epoch(*args)
        import threading

        from tqdm import tqdm

        done = threading.Event()
        with tqdm(total=steps, desc=f"epoch {epoch + 1}/{n_epoch}", unit="step", leave=False, file=sys.stderr) as bar:

            def poll():
                while not done.wait(0.1):
                    bar.update(int(runner.progress.sum()) - bar.n)

            watcher = threading.Thread(target=poll, daemon=True)
            watcher.start()
            try:
                losses = runner.train_epoch(*args)
            finally:
                done.set()
                watcher.join()
            bar.update((losses.n_done if isinstance(losses, EpochLosses) else len(losses)) - bar.n)
        return losses


def collab_learner(
    dls: CollabDataLoaders,
    n_factors: int = 50,
    use_nn: bool = False,
    emb_szs=None,
    layers=None,
    config=None,
    y_range=None,
    loss_func=None,
    opt_func=Adam,
    lr: float = 1e-3,
    wd: float | None = None,
    seed: int | None = None,
    sparse: bool = False,
    backend: str = "cpu",
    log=print,
    threads: int | None = None,
    per_rating_scheduler: str | None = None,
    **kwargs,
) -> Learner:
    """fastai's ``collab_learner`` for the dot-product model (``use_nn=False``).

    ``seed`` fixes the initial weights and the batch order (the split is fixed by
    ``CollabDataLoaders.from_df(..., seed=...)``).
    """
    if use_nn:
        raise ConfigError("use_nn=True (EmbeddingNN) is not implemented; mfscratch trains the dot-product model")
    if loss_func is not None:
        raise ConfigError("only the mean-squared-error loss is implemented; leave loss_func=None")
    if kwargs:
        raise ConfigError(f"unknown argument(s) to collab_learner: {', '.join(kwargs)}")
    if not isinstance(dls, CollabDataLoaders):
        raise ConfigError(f"collab_learner needs CollabDataLoaders (from_df or from_codes), got {type(dls).__name__}")
    n_factors = checks.positive_int("n_factors", n_factors)
    y_range = checks.check_y_range(y_range)
    seed = checks.check_seed(seed)
    checks.check_memory(dls.n_users, dls.n_items, n_factors)
    init_seed = np.random.SeedSequence(seed).spawn(2)[0] if seed is not None else None
    try:
        model = EmbeddingDotBias(n_factors, dls.n_users, dls.n_items, y_range=y_range, seed=init_seed)
        return Learner(
            dls,
            model,
            opt_func=opt_func,
            lr=lr,
            wd=wd,
            seed=seed,
            sparse=sparse,
            backend=backend,
            log=log,
            threads=threads,
            per_rating_scheduler=per_rating_scheduler,
        )
    except MemoryError:
        raise checks.memory_error(dls.n_users, dls.n_items, n_factors, checks.available_memory()) from None
