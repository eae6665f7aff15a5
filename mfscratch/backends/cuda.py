"""The CUDA backend: numba.cuda kernels on an NVIDIA GPU (``kernels/cuda``); see docs/cuda.md.

For a whole fit the weights, optimiser moments, gradients and the train/valid arrays live on the
device: ``bind`` uploads them once, each epoch uploads only its ``order``, ``lrs`` and ``moms`` and
copies back only its losses, and ``sync`` brings weights and moments home. ``loop='device'``
(default) runs each epoch as one cooperative kernel launch; ``loop='host'`` launches two kernels per
step from Python (three in sparse mode; the fallback, also picked by ``MFSCRATCH_CUDA_LOOP=host``).
``group`` (``MFSCRATCH_CUDA_GROUP``) sets the threads per rating of the device loop's forward phase
(default: a warp, fewer when k < 32), and the lanes per rating of per-rating SGD.

Per-rating mode runs ``kernels/cuda/per_rating.py`` (cuMF_SGD's design): ``schedule='stratified'``
(default, ``MFSCRATCH_CUDA_SCHEDULE``; deterministic: per-rating SGD's block layout, one launch per
stratum, equal to the CPU per-rating kernel over the same layout up to float rounding) or
``'hogwild'`` (batch-Hogwild!, one launch an epoch, order not fixed); ``storage='fp32'`` (default,
``MFSCRATCH_CUDA_STORAGE``: the model's own dtype) or ``'fp16'`` (the tables stored as half floats on
the device, the arithmetic in float64 registers). ``'bf16'`` storage exists in the kernels but is not
offered (it misses the accuracy bar, docs/cuda.md): ``allow_bf16=True`` runs it, for measuring.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np

from ..errors import ConfigError
from ..kernels.records import (
    BlockLayout,
    EpochOut,
    Groups,
    Moments,
    Ratings,
    Steps,
    hyper_of,
    split_flat,
    step_scalars,
)
from .common import permutation_into, tiny_problem

__all__ = ["CudaBackend", "SCHEDULES", "OFFERED_STORAGES", "default_per_rating_groups", "default_hogwild_per_worker"]

#: Per-rating SGD's schedules on the GPU: deterministic strata (the default), or batch-Hogwild!.
SCHEDULES = ("stratified", "hogwild")
#: The table storages offered: those whose ML-100k valid MSE stays within 0.002 of fp32 (docs/cuda.md).
OFFERED_STORAGES = ("fp32", "fp16")
#: The most thread blocks a batch-Hogwild! epoch runs at once (one per run of ratings; a few per SM).
HOGWILD_WORKERS = 8192
#: The fewest ratings a batch-Hogwild! thread block trains in a run.
HOGWILD_MIN_PER_WORKER = 256


def default_per_rating_groups(n_ratings: int) -> int:
    """User (and item) groups of the stratified schedule: ``g`` with about 32 ratings a block on average
    (``n / g^2``), at most 2048: each of an epoch's ``g`` launches then runs ``g`` thread blocks. A
    starting point for tuning on a GPU (more groups: more blocks in flight, more launches)."""
    return max(1, min(2048, math.isqrt(max(int(n_ratings), 0) // 32)))


def default_hogwild_per_worker(n_ratings: int) -> int:
    """Ratings per thread block of the batch-Hogwild! schedule: the epoch over at most
    :data:`HOGWILD_WORKERS` blocks, at least :data:`HOGWILD_MIN_PER_WORKER` ratings each."""
    return max(HOGWILD_MIN_PER_WORKER, -(-int(n_ratings) // HOGWILD_WORKERS))


def _kernels():
    from ..kernels import cuda as ck

    return ck


class _CudaRunner:
    """One fit's epochs on the GPU: exact mode runs the dense epoch kernel, the others the sparse one."""

    def __init__(self, backend, opt, mode: str, bs: int):
        self.backend, self.mode, self.bs = backend, mode, bs
        self.sparse = mode != "exact"
        self.hyper = hyper_of(opt)
        self.progress = np.zeros(1, dtype=np.int64)  # set when the epoch's losses are back
        self.order = np.empty(0, dtype=np.int64)  # the last epoch's rows, in the order trained

    def train_epoch(self, rng, lrs, moms, step0: int) -> np.ndarray:
        from numba.core.errors import TypingError

        b = self.backend
        if self.order.shape[0] != b.n_train:
            self.order = np.empty(b.n_train, dtype=np.int64)
        order = permutation_into(rng, self.order)
        cuda = b.ck.cuda
        d_order, d_lrs, d_moms = (cuda.to_device(np.ascontiguousarray(a)) for a in (order, lrs, moms))
        steps = Steps(d_order, self.bs, d_lrs, d_moms, int(step0))
        losses = None
        if b.loop == "device":
            try:
                losses = self._on_device(steps)
            except TypingError:  # a bug in the kernels, not a property of this GPU
                raise
            except Exception as e:  # a cooperative launch this GPU/driver refuses: fall back, say so once
                warnings.warn(f"CUDA cooperative epoch kernel unavailable ({e}); using the host loop", stacklevel=2)
                b.loop = "host"
        if losses is None:
            losses = self._from_host(steps, lrs, moms)
        self.progress[0] = len(losses)
        bad = np.flatnonzero(~np.isfinite(losses))
        return losses[: bad[0] + 1] if bad.size else losses

    def _on_device(self, steps) -> np.ndarray:
        b, ck = self.backend, self.backend.ck
        n_steps = b.n_train // self.bs
        losses = ck.cuda.device_array(n_steps, dtype=np.float64)
        out = EpochOut(losses, b.d_progress)
        kernel = ck.train_epoch_sparse if self.sparse else ck.train_epoch_dense
        args = (
            b.params,
            b.grads,
            b.moments,
            b.shape,
            b.data,
            steps,
            self.hyper,
            b.y_range,
            out,
            b.owners,
            b.group_size(),
        )
        key = "sparse" if self.sparse else "dense"
        if key not in b.coop:
            b.coop[key] = ck.cooperative_blocks(kernel, args)
        # Enough threads for the update phase's elements, never more than can be resident at once.
        work = 2 * self.bs * (b.shape.n_factors + 1) if self.sparse else b.params.shape[0]
        b.blocks = min(b.coop[key], ck.blocks_for(work), b.max_blocks or b.coop[key])
        kernel[b.blocks, ck.THREADS](*args)
        return losses.copy_to_host()

    def _from_host(self, steps, lrs, moms) -> np.ndarray:
        b, ck = self.backend, self.backend.ck
        cuda, bs, threads = ck.cuda, self.bs, ck.THREADS
        n_steps = b.n_train // bs
        n = n_steps * bs
        dtypes = (np.int32, np.int32, b.data.ratings.dtype)
        epoch = Ratings(*(cuda.device_array(n, dtype) for dtype in dtypes))
        ck.gather_rows[ck.blocks_for(n), threads](b.data, steps.order, epoch)
        losses = cuda.to_device(np.zeros(n_steps))
        tables, grads = split_flat(b.params, b.shape), split_flat(b.grads, b.shape)
        fb_blocks, dense_blocks = ck.blocks_for(bs), ck.blocks_for(b.params.shape[0])
        lazy_blocks = ck.blocks_for(2 * bs * (b.shape.n_factors + 1))
        for s in range(n_steps):
            batch = Ratings(*(a[s * bs : (s + 1) * bs] for a in epoch))
            ck.forward_backward[fb_blocks, threads](tables, batch, b.y_range, grads, losses[s : s + 1])
            sc = step_scalars(float(lrs[s]), float(moms[s]), steps.step0 + s + 1, self.hyper)
            if self.sparse:
                ck.mark_rows[fb_blocks, threads](batch.users, batch.items, b.owners)
                ck.update_sparse[lazy_blocks, threads](
                    b.params, b.grads, b.moments, b.shape, batch.users, batch.items, b.owners, sc, self.hyper
                )
            elif self.hyper.is_adam:
                ck.adam_update_dense[dense_blocks, threads](b.params, b.grads, b.moments, sc, self.hyper)
            else:
                ck.sgd_update_dense[dense_blocks, threads](b.params, b.grads, b.moments.exp_avg, sc, self.hyper)
        return losses.copy_to_host()


class _CudaPerRatingRunner:
    """Per-rating SGD on the GPU (``kernels/cuda/per_rating.py``), stratified or batch-Hogwild!.

    Stratified: the groups, each rating's block and the layout in code order are made once a fit on
    the host with the CPU's functions (``kernels/cpu/blocks.py``); every epoch copies that layout,
    shuffles each block in place from one seed drawn from the learner's generator and uploads it, as
    the CPU runner does, so that the same seed gives the CPU's order. One group: the learner's
    permutation. Hogwild!: the learner's permutation, cut into runs of ``per_worker`` ratings.
    """

    def __init__(self, backend, opt, mode: str, bs: int):
        from ..kernels import cpu

        b = backend
        ck, cuda = b.ck, b.ck.cuda
        self.backend, self.mode, self.bs, self.wd = b, mode, bs, float(opt.wd)
        self.progress = np.zeros(1, dtype=np.int64)
        self.order = np.empty(0, dtype=np.int64)
        self.lanes = min(b.group_size(), ck.MAX_LANES)
        n = b.n_train
        bf16 = b.storage == "bf16"
        self.stratum_kernel = ck.train_stratum_per_rating_bf16 if bf16 else ck.train_stratum_per_rating
        self.hogwild_kernel = ck.train_epoch_per_rating_hogwild_bf16 if bf16 else ck.train_epoch_per_rating_hogwild
        self.widen = ck.widen_params_bf16 if bf16 else ck.widen_params
        self.table = b.params
        if b.storage != "fp32":  # the model's weights, rounded into a half buffer for this fit
            self.table = cuda.device_array(b.params.shape[0], dtype=np.uint16 if bf16 else np.float16)
            narrow = ck.narrow_params_bf16 if bf16 else ck.narrow_params
            narrow[min(ck.blocks_for(b.params.shape[0]), 1024), ck.THREADS](b.params, self.table)
        self.losses = cuda.device_array(n, dtype=np.float64)
        self.n_groups = 1
        self.per_worker = b.hogwild_per_worker or default_hogwild_per_worker(n)
        if b.schedule == "stratified":
            self.n_groups = b.per_rating_n_groups or default_per_rating_groups(n)
        g = self.n_groups
        if g == 1:
            self.block_start = cuda.to_device(np.array([0, n], dtype=np.int64))
            return
        data, shape = b.train_host, b.shape
        groups = Groups(
            cpu.balanced_groups(data.users, shape.n_users, g), cpu.balanced_groups(data.items, shape.n_items, g), g
        )
        block = np.empty(n, dtype=np.int32)
        cpu.block_index(data, groups, block)
        self._canonical = np.empty(n, dtype=np.int64)  # every rating, the blocks in code order
        starts = cpu.block_layout(np.empty(0, dtype=np.int64), block, g * g, self._canonical)
        self._starts = starts
        self.block_start = cuda.to_device(starts)
        self._shuffle = cpu.shuffle_blocks_parallel

    def _epoch_order(self, rng) -> np.ndarray:
        n = self.backend.n_train
        if self.n_groups == 1:
            if self.order.shape[0] != n:
                self.order = np.empty(n, dtype=np.int64)
            return permutation_into(rng, self.order)
        self.order = self._canonical.copy()
        self._shuffle(self.order, self._starts, int(rng.integers(2**63)))
        return self.order

    def train_epoch(self, rng, lrs, moms, step0: int) -> np.ndarray:
        cuda = self.backend.ck.cuda
        order = self._epoch_order(rng)
        self.launch(cuda.to_device(order), cuda.to_device(np.ascontiguousarray(lrs, dtype=np.float64)))
        losses = self.losses.copy_to_host()
        self.progress[0] = order.shape[0]
        bad = np.flatnonzero(~np.isfinite(losses))
        return losses[: bad[0] + 1] if bad.size else losses

    def launch(self, d_order, d_lrs) -> None:
        """The epoch's kernels over an order and learning rates already on the device: the strata one
        launch each (or the one batch-Hogwild! launch), then the copy back into the model's buffer for
        a half storage. Asynchronous: benchmarks/cuda_timing.py times it alone."""
        b, ck = self.backend, self.backend.ck
        stop = ck.cuda.to_device(np.zeros(self.n_groups + 1, dtype=np.int32))  # one flag per stratum
        args = (b.shape, b.data)
        tail = (d_lrs, self.wd, b.y_range, self.losses, stop)
        if b.schedule == "stratified":
            g = self.n_groups
            layout = BlockLayout(d_order, self.block_start, g)
            stratum = self.stratum_kernel[g, self.lanes]  # configured once: g launches follow
            for t in range(g):
                stratum(self.table, *args, layout, t, *tail)
        else:
            workers = max(1, -(-d_order.shape[0] // self.per_worker))
            self.hogwild_kernel[workers, self.lanes](self.table, *args, d_order, *tail, self.per_worker)
        if self.table is not b.params:  # evaluate and sync read the model-dtype buffer
            self.widen[min(ck.blocks_for(b.params.shape[0]), 1024), ck.THREADS](self.table, b.params)


class CudaBackend:
    """numba.cuda kernels on an NVIDIA GPU; on a NaN/inf loss the device loop stops before that
    step's update, as the CPU does; the host loop finishes the epoch (the learner raises either way)."""

    name = "cuda"
    LOOPS = ("device", "host")
    #: Per-rating SGD's user (and item) groups in the stratified schedule; None: default_per_rating_groups.
    per_rating_n_groups: int | None = None
    #: Ratings per thread block in the batch-Hogwild! schedule; None: default_hogwild_per_worker.
    hogwild_per_worker: int | None = None

    def __init__(
        self,
        loop: str | None = None,
        group: int | None = None,
        max_blocks: int | None = None,
        threads: int | None = None,
        schedule: str | None = None,
        storage: str | None = None,
        allow_bf16: bool = False,
    ):
        ck = _kernels()
        if ck.cuda is None:
            raise ConfigError(
                "backend 'cuda' needs numba-cuda, which is not installed: "
                "pip install 'mfscratch[cuda]' (or use --backend cpu)"
            )
        if not ck.HAS_CUDA:
            raise ConfigError(
                "backend 'cuda' needs an NVIDIA GPU and none was found "
                "(numba.cuda.is_available() is False); use --backend cpu"
            )
        if threads is not None:
            raise ConfigError("threads applies to the parallel backend; the cuda backend sizes its own grid")
        loop = loop or os.environ.get("MFSCRATCH_CUDA_LOOP") or "device"
        if loop not in self.LOOPS:
            raise ConfigError(f"unknown CUDA loop {loop!r} (MFSCRATCH_CUDA_LOOP): use 'device' or 'host'")
        group = group or int(os.environ.get("MFSCRATCH_CUDA_GROUP", 0)) or None
        if group is not None and (group < 1 or group & (group - 1) or ck.THREADS % group):
            raise ConfigError(
                f"threads per rating {group} (MFSCRATCH_CUDA_GROUP) must be a power of two dividing {ck.THREADS}"
            )
        schedule = schedule or os.environ.get("MFSCRATCH_CUDA_SCHEDULE") or "stratified"
        if schedule not in SCHEDULES:
            raise ConfigError(
                f"unknown per-rating schedule {schedule!r} (MFSCRATCH_CUDA_SCHEDULE): use 'stratified' or 'hogwild'"
            )
        storage = storage or os.environ.get("MFSCRATCH_CUDA_STORAGE") or "fp32"
        if storage not in ck.STORAGES:
            raise ConfigError(f"unknown table storage {storage!r} (MFSCRATCH_CUDA_STORAGE): use fp32 or fp16")
        if storage not in OFFERED_STORAGES and not allow_bf16:
            raise ConfigError(
                f"table storage {storage!r} is not offered: on ML-100k it costs up to +0.0023 valid MSE over fp32, "
                "above the 0.002 bar (docs/cuda.md); use fp16 (within +0.0003)"
            )
        self.allow_bf16 = allow_bf16
        self.ck, self.loop, self.group = ck, loop, group
        self.schedule, self.storage = schedule, storage
        # A cap on the cooperative grid (MFSCRATCH_CUDA_BLOCKS): fewer blocks make each grid barrier
        # cheaper and give each thread more elements to update; a knob for tuning on a real GPU.
        self.max_blocks = max_blocks or int(os.environ.get("MFSCRATCH_CUDA_BLOCKS", 0)) or None
        self.blocks = None  # the grid size of the last epoch launch, for reports
        self.model = None
        self.dls = None
        self.coop: dict[str, int] = {}  # epoch kernel -> most blocks a cooperative launch may use

    @classmethod
    def available(cls) -> bool:
        ck = _kernels()
        return ck.cuda is not None and ck.HAS_CUDA

    def bind(self, model, state, dls) -> None:
        cuda = self.ck.cuda
        self.model, self.state = model, state
        self.shape, self.y_range = model.shape, model.y_range_record
        self.params = cuda.to_device(model.params)
        self.grads = cuda.to_device(np.zeros_like(model.params))
        self.moments = Moments(cuda.to_device(state.exp_avg), cuda.to_device(state.exp_avg_sq))
        self.owners = self.ck.Owners(
            cuda.to_device(np.zeros(model.n_users, dtype=np.int32)),
            cuda.to_device(np.zeros(model.n_items, dtype=np.int32)),
        )
        self.d_progress = cuda.to_device(np.zeros(1, dtype=np.int64))
        if dls is not self.dls:  # the data stays put across fits on the same loaders
            self.dls = dls
            host = (dls.train_users, dls.train_items, dls.train_ratings)
            self.train_host = Ratings(*(np.ascontiguousarray(a) for a in host))  # per-rating's layout
            self.data = Ratings(*(cuda.to_device(a) for a in self.train_host))
            self.n_train = len(dls.train_users)
            self._valid_host = (dls.valid_users, dls.valid_items, dls.valid_ratings)
            self._valid = Ratings(*(cuda.to_device(np.ascontiguousarray(a)) for a in self._valid_host))

    def runner(self, opt, mode: str, bs: int, sized_as=None) -> _CudaRunner | _CudaPerRatingRunner:
        if mode not in ("exact", "sparse", "per-rating"):
            raise ConfigError(f"unknown mode {mode!r}: use exact, sparse or per-rating")
        if mode == "per-rating":
            return _CudaPerRatingRunner(self, opt, mode, bs)
        if self.storage != "fp32":
            raise ConfigError(
                f"storage {self.storage!r} applies to per-rating mode only; use storage 'fp32' with {mode}"
            )
        return _CudaRunner(self, opt, mode, bs)

    def group_size(self) -> int:
        """Threads per rating in the epoch kernels' forward phase: enough lanes for the k columns,
        at most a warp (and a block)."""
        if self.group is not None:
            return self.group
        g = 1
        while g < min(self.shape.n_factors, 32, self.ck.THREADS):
            g *= 2
        return g

    def evaluate(self, users, items, ratings) -> float:
        ck, cuda = self.ck, self.ck.cuda
        if all(a is b for a, b in zip((users, items, ratings), self._valid_host)):
            data = self._valid  # the loaders' validation rows: already on the device
        else:
            data = Ratings(*(cuda.to_device(np.ascontiguousarray(a)) for a in (users, items, ratings)))
        out = cuda.to_device(np.zeros(1))
        # Grid-stride kernel: a bounded grid keeps the per-block atomics few on big validation sets.
        blocks = min(ck.blocks_for(data.users.shape[0]), 1024)
        ck.evaluate_mse[blocks, ck.THREADS](split_flat(self.params, self.shape), data, self.y_range, out)
        return float(out.copy_to_host()[0])

    def sync(self) -> None:
        if self.model is None:
            return
        self.params.copy_to_host(self.model.params)
        self.moments.exp_avg.copy_to_host(self.state.exp_avg)
        self.moments.exp_avg_sq.copy_to_host(self.state.exp_avg_sq)

    def reproducible(self, mode: str) -> bool:
        """Per-rating SGD's stratified schedule: True (each block one thread block, in order, no atomics).
        Otherwise False: the gradient's float atomics add in the order the threads arrive, and
        batch-Hogwild! interleaves updates as the blocks run (the results agree to float rounding, not
        bit for bit)."""
        return mode == "per-rating" and self.schedule == "stratified"

    def warmup(self, model, dls, opt, mode: str) -> None:
        """Compile (or load from the cache) the kernels of a fit in ``mode``, on a tiny problem."""
        from ..optim import OptState

        tiny, loaders = tiny_problem(model, dls, mode)
        scratch = CudaBackend(
            self.loop,
            self.group,
            self.max_blocks,
            schedule=self.schedule,
            storage=self.storage,
            allow_bf16=self.allow_bf16,
        )
        scratch.bind(tiny, OptState.zeros_like(tiny.params), loaders)
        n_steps = loaders.n_train // loaders.bs
        runner = scratch.runner(opt, mode, loaders.bs)
        runner.train_epoch(np.random.default_rng(0), np.full(n_steps, 1e-3), np.full(n_steps, 0.9), 0)
        scratch.evaluate(*scratch._valid_host)
        self.loop = scratch.loop  # a fallback found here holds for the real fit too
