"""The CPU backends: Numba kernels on the host, updating ``model.params`` in place.

``cpu`` runs the serial kernels (every result reproducible bit for bit); ``parallel`` runs their
``parallel=True`` twins on the Numba threads. Each fit gets one epoch runner for its mode:

* ``exact``: the deferred-rows kernel when weight decay is decoupled or zero (``defer_rows``), else
  the dense kernel; the parallel backend splits the dense update over the threads for models of
  ``min_parallel_params`` or more;
* ``sparse``: the lazy kernel (Hogwild! on the parallel backend: not reproducible run to run);
* ``per-rating``: the fused per-rating SGD kernel, on conflict-free blocks of users x items once
  there is more than one thread or the tables outgrow the caches (:func:`per_rating_groups`).
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any

import numba
import numpy as np

from ..errors import ConfigError
from ..kernels import cpu
from ..kernels.records import BlockLayout, EpochOut, Groups, LossSummary, Moments, Ratings, StepLrs, Steps, hyper_of
from .common import EpochLosses, LossKeep, permutation_into, tiny_problem

__all__ = ["CpuBackend", "ParallelBackend", "per_rating_groups", "PER_RATING_GROUP_BYTES"]

#: Per-rating SGD on tables of more bytes than this trains cache-sized blocks (see per_rating_groups).
PER_RATING_GROUP_BYTES = 4 << 20


def per_rating_groups(table_bytes: int, n_threads: int = 1, per_thread: int = 1) -> int:
    """How many user (and item) groups per-rating SGD's epoch splits into (``kernels.cpu.blocks``).

    One per thread (``per_thread`` per thread when there are several threads), so that the threads
    train blocks that share no row; and for tables over :data:`PER_RATING_GROUP_BYTES` enough groups
    that one block's rows (a user group's and an item group's) take about that many bytes and stay in
    cache while the block trains (ML-25M's shape, 58 MB of tables: 14 groups; docs/speed.md). A
    multiple of the thread count, so that each thread gets as many blocks of a stratum. More groups
    than threads give the dynamic scheduler more blocks to hand to a thread whose partner is slowed.
    """
    n_threads = max(1, int(n_threads))
    cache_groups = -(-int(table_bytes) // PER_RATING_GROUP_BYTES)
    wanted = max(cache_groups, n_threads * (max(1, int(per_thread)) if n_threads > 1 else 1))
    return n_threads * -(-wanted // n_threads)


class _Runner:
    """What the CPU runners share: the bound arrays, the epoch's records, a reused order buffer."""

    def __init__(self, backend, opt, mode: str, bs: int, lanes: int = 1):
        self.backend, self.mode, self.bs = backend, mode, bs
        self.hyper = hyper_of(opt)
        self.progress = np.zeros(lanes, dtype=np.int64)
        self.order = np.empty(0, dtype=np.int64)  # the last epoch's rows, in the order trained

    def _permutation(self, rng) -> np.ndarray:
        """The learner's batch order: ``rng.permutation(n_train)``, in a buffer reused every epoch."""
        if self.order.shape[0] != self.backend.data.users.shape[0]:
            self.order = np.empty(self.backend.data.users.shape[0], dtype=np.int64)
        return permutation_into(rng, self.order)

    def train_epoch(self, rng, lrs, moms, step0: int, keep: LossKeep | None = None) -> Any:
        self.progress[:] = 0
        with self.backend.threads_in_use():
            if keep is None:
                return self._epoch(rng, lrs, moms, int(step0))
            return self._epoch(rng, lrs, moms, int(step0), keep)

    def _epoch(self, rng, lrs, moms, step0: int, keep: LossKeep | None = None) -> Any:
        """One epoch; ``keep``: only runners with ``steps_in_kernel`` are given one."""
        raise NotImplementedError

    def _steps(self, rng, lrs, moms, step0: int) -> tuple[Steps, EpochOut]:
        order = self._permutation(rng)
        losses = np.empty(order.shape[0] // self.bs, dtype=np.float64)
        return Steps(order, self.bs, lrs, moms, step0), EpochOut(losses, self.progress)


class _DenseRunner(_Runner):
    """Exact mode, every row every step (``kernels.cpu.dense``), with its dense gradient buffer."""

    def __init__(self, backend, opt, mode, bs, kernel):
        super().__init__(backend, opt, mode, bs)
        self.kernel = kernel
        self.grads = np.zeros_like(backend.model.params)

    def _epoch(self, rng, lrs, moms, step0):
        b = self.backend
        steps, out = self._steps(rng, lrs, moms, step0)
        n = self.kernel(b.model.params, self.grads, b.moments, b.shape, b.data, steps, self.hyper, b.y_range, out)
        return out.losses[:n]


class _DeferredRunner(_Runner):
    """Exact mode with untouched rows deferred (``kernels.cpu.deferred``): one kernel call an epoch."""

    def _epoch(self, rng, lrs, moms, step0):
        b = self.backend
        steps, out = self._steps(rng, lrs, moms, step0)
        n = cpu.train_epoch_deferred(b.model.params, b.moments, b.shape, b.data, steps, self.hyper, b.y_range, out)
        return out.losses[:n]


class _SparseRunner(_Runner):
    """Sparse mode (``kernels.cpu.sparse``): ``n_ranges`` contiguous ranges of steps, one a thread."""

    def __init__(self, backend, opt, mode, bs, kernel, n_ranges: int):
        super().__init__(backend, opt, mode, bs, lanes=n_ranges)
        self.kernel, self.n_ranges = kernel, n_ranges

    def _epoch(self, rng, lrs, moms, step0):
        b = self.backend
        steps, out = self._steps(rng, lrs, moms, step0)
        n = self.kernel(b.model.params, b.moments, b.shape, b.data, steps, self.hyper, b.y_range, out, self.n_ranges)
        return out.losses[:n]


class _PerRatingRunner(_Runner):
    """Per-rating SGD (``kernels.cpu.per_rating``) over the learner's permutation (one group), or over
    blocks of users x items, each block shuffled in place on the threads from one seed drawn from the
    learner's generator. The groups and the block layout are made once a fit; every epoch starts
    from the same layout, so the order depends on the seed alone and a resumed fit equals an
    uninterrupted one. For the dynamic scheduler's kernel and the serial one the ratings are stored
    block by block once a fit (``block_data``), and the thread that reaches a block shuffles its
    ratings itself (one parallel region an epoch, no order array); the barrier kernel gets the epoch's
    order of row numbers made first."""

    #: Takes ``records.StepLrs`` (the learning rate made in the kernel) and a ``keep`` (``LossKeep``),
    #: with which it returns an ``EpochLosses`` summary: no per-step lrs, momenta or losses (``EpochRunner``).
    steps_in_kernel = True

    def __init__(self, backend, opt, mode, bs, kernel, shuffle, n_groups: int):
        super().__init__(backend, opt, mode, bs)
        self.kernel, self.shuffle, self.wd = kernel, shuffle, float(opt.wd)
        # This module's kernels take the records; another per-rating kernel (a backend's own, such as the
        # half-storage one) gets per-step arrays and one loss a step, as before.
        self.takes_records = getattr(kernel, "func", kernel) in (
            cpu.train_epoch_per_rating,
            cpu.train_epoch_per_rating_parallel,
            cpu.train_epoch_per_rating_dynamic,
        )
        if not self.takes_records:
            self.steps_in_kernel = False
        self.losses = np.empty(0, dtype=np.float64)  # one loss a rating, reused by short epochs
        # A long epoch's summary (LossSummary): its sample and tail, and each block's sum and bad loss.
        self.sample, self.tail = np.empty(0, dtype=np.float64), np.empty(0, dtype=np.float64)
        self.shuffles_blocks = getattr(kernel, "func", None) is cpu.train_epoch_per_rating_dynamic
        data, shape = backend.data, backend.shape
        n = data.users.shape[0]
        self.sums, self.bad_losses = np.zeros(n_groups * n_groups), np.zeros(n_groups * n_groups)
        self.block_data: Ratings | None = None  # the ratings stored block by block, for the kernels that take them
        self._seed: int | None = None  # the last epoch's shuffle seed, for ``order``
        if n_groups == 1:
            self.layout = BlockLayout(np.empty(0, dtype=np.int64), np.array([0, n], dtype=np.int64), 1)
            return
        self.groups = Groups(
            cpu.balanced_groups(data.users, shape.n_users, n_groups),
            cpu.balanced_groups(data.items, shape.n_items, n_groups),
            n_groups,
        )
        rows = np.int32 if n <= np.iinfo(np.int32).max else np.int64
        if self.shuffles_blocks or kernel is cpu.train_epoch_per_rating:
            # The kernels that shuffle each block as they reach it take the ratings stored block by block
            # (a copy, 12 bytes a rating): a block's codes and ratings are then one stretch of memory, read
            # in cache as the block trains, and no order array spans the epoch (docs/speed.md, "Round 4").
            self.block_data = Ratings(np.empty_like(data.users), np.empty_like(data.items), np.empty_like(data.ratings))
            with backend.threads_in_use():  # a chunk of the ratings a thread
                block_start = cpu.block_ordered(data, self.groups, self.block_data, backend.n_threads())
            self.layout = BlockLayout(np.empty(0, dtype=rows), block_start, n_groups)
            return
        # Every rating, the blocks in code order, and the epoch's order: row numbers, int32 while they fit
        # (at 20M ratings 80 MB each instead of 160 MB; the kernels index with either).
        self._canonical, block_start = self._canonical_rows(rows)
        self.layout = BlockLayout(np.empty(n, dtype=rows), block_start, n_groups)
        self.order = self.layout.order

    def _canonical_rows(self, dtype) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, block_start)``: the training rows sorted by block, stably (``dtype`` row numbers)."""
        data, g = self.backend.data, self.groups.n_groups
        block = np.empty(data.users.shape[0], dtype=np.int32)
        cpu.block_index(data, self.groups, block)
        rows = np.empty(data.users.shape[0], dtype=dtype)
        block_start = cpu.block_layout(np.empty(0, dtype=dtype), block, g * g, rows)
        return rows, block_start

    @property
    def order(self) -> np.ndarray:
        """The last epoch's rows of the training set, in the order trained. With the ratings stored by block
        no array holds them while an epoch trains: they are made here, on request, from the layout and
        the epoch's seed (what the kernels shuffled, applied to the rows' canonical layout)."""
        if self.block_data is None or self._seed is None:
            return self._order
        rows, block_start = self._canonical_rows(np.int64)
        cpu.shuffle_blocks(rows, block_start, self._seed)
        return rows

    @order.setter
    def order(self, rows: np.ndarray) -> None:
        self._order = rows

    def _kept(self, n_steps: int, keep: LossKeep | None) -> Any:
        """Where the epoch's losses go: one a step (``keep`` None; the array the runner returns), or
        ``keep``'s sample and tail. One record type either way (the kernels compile once for it), or
        the plain array for a kernel that takes no records."""
        self.sums[:] = 0.0
        self.bad_losses[:] = 0.0
        if keep is None:
            if self.losses.shape[0] != n_steps:
                self.losses = np.empty(n_steps, dtype=np.float64)
            if not self.takes_records:
                return self.losses
            return LossSummary(np.empty(0, dtype=np.int64), self.sample[:0], self.losses, 0, self.sums, self.bad_losses)
        tail = min(int(keep.tail), n_steps)
        if self.tail.shape[0] != tail:
            self.tail = np.empty(tail, dtype=np.float64)
        if self.sample.shape[0] != keep.sample_steps.shape[0]:
            self.sample = np.empty(keep.sample_steps.shape[0], dtype=np.float64)
        sample_steps = np.ascontiguousarray(keep.sample_steps, dtype=np.int64)
        return LossSummary(sample_steps, self.sample, self.tail, n_steps - tail, self.sums, self.bad_losses)

    def _epoch(self, rng, lrs, moms, step0, keep: LossKeep | None = None):
        b = self.backend
        layout = self.layout
        if layout.n_groups == 1:
            layout = layout._replace(order=self._permutation(rng))
        if isinstance(lrs, np.ndarray) and self.takes_records:
            lrs = StepLrs(np.ascontiguousarray(lrs, dtype=np.float64), 0, 0, 0.0, 0.0, 0.0, 0.0)
        n_steps = b.data.users.shape[0]
        kept = self._kept(n_steps, keep)
        out = EpochOut(kept, self.progress)
        data = b.data if self.block_data is None else self.block_data
        args = (b.model.params, b.shape, data, layout, lrs, self.wd, b.y_range, out)
        no_rows = layout.order[:0]  # no canonical rows: the ratings are stored by block
        if layout.n_groups == 1:
            n = self.kernel(*args)
        elif self.shuffles_blocks:
            self._seed = int(rng.integers(2**63))
            n = self.kernel(*args, canonical=no_rows, seed=self._seed)
        elif self.kernel is cpu.train_epoch_per_rating:  # serial: each block shuffled just before it trains
            self._seed = int(rng.integers(2**63))
            n = cpu.train_epoch_per_rating_shuffled(*args, no_rows, self._seed)
        else:
            np.copyto(layout.order, self._canonical)
            self.shuffle(layout.order, layout.block_start, int(rng.integers(2**63)))
            n = self.kernel(*args)
        if keep is None:
            return self.losses[:n]
        return self._summary(kept, int(n), n_steps)

    def _summary(self, kept: LossSummary, n: int, n_steps: int) -> EpochLosses:
        """The :class:`EpochLosses` of an epoch that did ``n`` of its ``n_steps`` steps."""
        block_start = self.layout.block_start
        last = int(np.searchsorted(block_start, n - 1, side="right")) - 1  # the block of step n - 1
        last_loss = float(kept.bad_losses[last])
        if np.isfinite(last_loss):  # no divergence: step n - 1 is the epoch's last, in the tail
            last_loss = float(kept.tail[-1]) if n == n_steps else float("nan")
        total = 0.0
        for block_sum in kept.sums.tolist():  # in block order, as the docstring of EpochLosses says
            total += block_sum
        return EpochLosses(n, last_loss, total, kept.sample_steps, kept.sample, kept.tail)


#: ``ParallelBackend.per_rating_scheduler``'s values.
PER_RATING_SCHEDULERS = ("dynamic", "barrier", "free")


def check_per_rating_scheduler(name) -> str:
    """``name`` if it is one of :data:`PER_RATING_SCHEDULERS`, else a ConfigError saying which are."""
    if name not in PER_RATING_SCHEDULERS:
        raise ConfigError(f"per_rating_scheduler must be one of {', '.join(PER_RATING_SCHEDULERS)}, got {name!r}")
    return name


class CpuBackend:
    """Numba kernels on the host, one thread, updating ``model.params`` in place; every mode reproducible."""

    name = "cpu"
    #: True (default): exact mode with decoupled (or no) weight decay runs ``kernels.cpu.deferred``, which
    #: replays an untouched row's steps when the row is next needed: equal to the dense kernel to
    #: rounding (not bit for bit) at the end of each epoch, and faster. False: the dense kernel, bit-equal
    #: to ``reference.adam_step`` / ``sgd_step`` step by step (docs/speed.md, "Deferred rows").
    defer_rows = True
    _dense_epoch = staticmethod(cpu.train_epoch_dense)
    _sparse_epoch = staticmethod(cpu.train_epoch_sparse)
    _per_rating_epoch = staticmethod(cpu.train_epoch_per_rating)
    _shuffle_blocks = staticmethod(cpu.shuffle_blocks)
    _evaluate_mse = staticmethod(cpu.evaluate_mse)
    #: Per-rating SGD's user (and item) groups; None: :func:`per_rating_groups` of the tables' bytes and
    #: the thread count. Setting it reproduces another layout (a distributed fit's, with its W groups).
    per_rating_n_groups: int | None = None
    #: With more than one thread, at least this many groups per thread (:func:`per_rating_groups`).
    per_rating_groups_per_thread = 1

    def __init__(self, threads: int | None = None):
        if threads not in (None, 1):
            raise ConfigError(f"the cpu backend runs one thread (threads={threads}); use backend 'parallel'")
        self.threads = threads
        self.model: Any = None

    @classmethod
    def available(cls) -> bool:
        return True

    def n_threads(self) -> int:
        """The threads this backend's kernels use (1 here)."""
        return 1

    def threads_in_use(self):
        """A context in which the Numba threads are this backend's count (nothing to set here)."""
        return contextlib.nullcontext()

    def bind(self, model, state, dls) -> None:
        self.model, self.state = model, state
        self.moments = Moments(state.exp_avg, state.exp_avg_sq)
        self.shape, self.y_range = model.shape, model.y_range_record
        self.data = Ratings(
            np.ascontiguousarray(dls.train_users),
            np.ascontiguousarray(dls.train_items),
            np.ascontiguousarray(dls.train_ratings),
        )

    def _dense_kernel(self, n_params: int):
        """The exact-mode dense kernel for a buffer of ``n_params`` elements."""
        return self._dense_epoch

    def _per_rating_kernel(self, n_groups: int) -> Any:
        """The per-rating epoch kernel for ``n_groups`` groups (called with the records only)."""
        return self._per_rating_epoch

    def runner(self, opt, mode: str, bs: int, sized_as=None) -> _Runner:
        """The epoch runner of a fit in ``mode``; ``sized_as`` (a model) makes the size-dependent choices
        as for that model (the warm-up's tiny problem compiles what the real fit runs)."""
        params = (sized_as or self.model).params
        if mode == "exact":
            dense = self._dense_kernel(params.size)
            if self.defer_rows and (opt.decouple_wd or opt.wd == 0) and dense is cpu.train_epoch_dense:
                return _DeferredRunner(self, opt, mode, bs)
            return _DenseRunner(self, opt, mode, bs, dense)
        if mode == "sparse":
            return _SparseRunner(self, opt, mode, bs, self._sparse_epoch, self.n_threads())
        if mode == "per-rating":
            n_groups = self.per_rating_n_groups or per_rating_groups(
                params.nbytes, self.n_threads(), self.per_rating_groups_per_thread
            )
            kernel = self._per_rating_kernel(n_groups)
            return _PerRatingRunner(self, opt, mode, bs, kernel, self._shuffle_blocks, n_groups)
        raise ConfigError(f"unknown mode {mode!r}: use exact, sparse or per-rating")

    def evaluate(self, users, items, ratings) -> float:
        m = self.model
        data = Ratings(np.ascontiguousarray(users), np.ascontiguousarray(items), np.ascontiguousarray(ratings))
        with self.threads_in_use():
            return float(self._evaluate_mse(m.kernel_tables(), data, m.y_range_record))

    def sync(self) -> None:
        """Nothing to do: the kernels update ``model.params`` and the moments in place."""

    def reproducible(self, mode: str) -> bool:
        return True

    def _copy(self):
        """A fresh backend with this one's settings (threads, ``defer_rows``, ``min_parallel_params``)."""
        copy = type(self)(threads=self.threads)
        copy.__dict__.update(
            {
                k: v
                for k, v in vars(self).items()
                if k
                in (
                    "defer_rows",
                    "min_parallel_params",
                    "per_rating_n_groups",
                    "per_rating_scheduler",
                    "per_rating_bind_threads",
                    "per_rating_groups_per_thread",
                )
            }
        )
        return copy

    def warmup(self, model, dls, opt, mode: str) -> None:
        """Compile (or load from Numba's cache) what a fit of ``model`` on ``dls`` in ``mode`` runs,
        by running that runner for one epoch on a tiny problem of the same types, and the evaluation."""
        from ..optim import OptState

        tiny, loaders = tiny_problem(model, dls, mode)
        scratch = self._copy()
        scratch.bind(tiny, OptState.zeros_like(tiny.params), loaders)
        runner = scratch.runner(opt, mode, loaders.bs, sized_as=model)
        n_steps = loaders.n_train // loaders.bs
        runner.train_epoch(np.random.default_rng(0), np.full(n_steps, 1e-3), np.full(n_steps, 0.9), 0)
        scratch.evaluate(loaders.valid_users, loaders.valid_items, loaders.valid_ratings)


class ParallelBackend(CpuBackend):
    """The same kernels compiled with ``parallel=True``, on ``threads`` Numba threads (default: all).

    * exact mode: each step's dense update runs ``prange`` over the elements of the flat buffer,
      deterministic and equal to the serial dense kernel bit for bit; models under
      ``min_parallel_params`` parameters run the serial kernels exactly as the ``cpu`` backend;
    * sparse mode: **Hogwild!**: one contiguous range of steps per thread, run at once on the shared
      tables without locks; not reproducible run to run;
    * per-rating: stratified blocks, no Hogwild: the threads train blocks that share no row, so the
      result is deterministic and depends on the thread count only through the block layout. The
      blocks are handed out by the dynamic scheduler (``per_rating_scheduler = "dynamic"``, the
      default): a thread takes any block whose predecessors on its rows are done, with no barrier
      between strata, so a thread slowed by other work on the machine holds up only the blocks on its
      rows; ``"barrier"`` runs the strata one after another. Both give the same weights bit for bit.
      ``"free"`` hands out blocks by LIBMF's rule (any block whose user and item groups are idle, in
      any stratum): steadier when other work shares the cores, but not reproducible run to run.
    """

    name = "parallel"
    _dense_epoch = staticmethod(cpu.train_epoch_dense_parallel)
    _sparse_epoch = staticmethod(cpu.train_epoch_sparse_parallel)
    _per_rating_epoch = staticmethod(cpu.train_epoch_per_rating_parallel)
    _shuffle_blocks = staticmethod(cpu.shuffle_blocks_parallel)
    #: the same total as the serial one on any thread count (runs of rows summed in order)
    _evaluate_mse = staticmethod(cpu.evaluate_mse_parallel)
    #: Exact mode opens one parallel region per step; below this many parameters a step's update is
    #: too short to pay for the wait on a descheduled thread at each region's end (docs/speed.md), so
    #: smaller models run the serial kernels. Set it to 0 to always split the update.
    min_parallel_params = 1_000_000
    #: How per-rating SGD's blocks are handed to the threads: "dynamic" (default) or "barrier" (the
    #: same result either way), or "free" (LIBMF's rule; not reproducible) (``kernels.cpu.per_rating``).
    per_rating_scheduler = "dynamic"
    #: With as many threads as this process has cores, the dynamic and free schedulers pin each thread
    #: to one core for the epoch (its affinity restored after; Linux): another program busy on one core
    #: then slows one thread, not both (docs/speed.md, "Round 3"). False: the operating system places them.
    per_rating_bind_threads = True

    def __init__(self, threads: int | None = None, per_rating_scheduler: str | None = None):
        cores = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]
        if threads is not None and not 1 <= int(threads) <= cores:
            raise ConfigError(f"threads must be between 1 and {cores} (the cores Numba sees), got {threads}")
        self.threads = None if threads is None else int(threads)
        if per_rating_scheduler is not None:
            self.per_rating_scheduler = check_per_rating_scheduler(per_rating_scheduler)
        self.model: Any = None

    def n_threads(self) -> int:
        return self.threads or numba.get_num_threads()

    @contextlib.contextmanager
    def threads_in_use(self):
        before = numba.get_num_threads()
        numba.set_num_threads(self.n_threads())
        try:
            yield
        finally:
            numba.set_num_threads(before)

    def _dense_kernel(self, n_params: int):
        return self._dense_epoch if n_params >= self.min_parallel_params else cpu.train_epoch_dense

    def _per_rating_kernel(self, n_groups: int) -> Any:
        scheduler = check_per_rating_scheduler(self.per_rating_scheduler)
        if n_groups > 1 and scheduler in ("dynamic", "free"):
            n_workers = self.n_threads()
            return functools.partial(
                cpu.train_epoch_per_rating_dynamic,
                n_workers=n_workers,
                free=scheduler == "free",
                cpus=self._worker_cpus(n_workers),
            )
        return self._per_rating_epoch

    def _worker_cpus(self, n_workers: int) -> np.ndarray:
        """The CPUs the dynamic scheduler's threads are pinned to for an epoch, one each: this process's
        CPUs when there are exactly as many as threads (``per_rating_bind_threads``; Linux), else none
        (empty: the operating system places them, as when fewer threads than cores leave it a choice)."""
        getaffinity = getattr(os, "sched_getaffinity", None)
        if not self.per_rating_bind_threads or getaffinity is None:
            return np.empty(0, dtype=np.int64)
        allowed = sorted(getaffinity(0))
        return np.array(allowed if len(allowed) == n_workers else [], dtype=np.int64)

    def reproducible(self, mode: str) -> bool:
        return mode != "sparse" and not (mode == "per-rating" and self.per_rating_scheduler == "free")
