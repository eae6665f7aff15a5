"""The CUDA backend: numba.cuda kernels on an NVIDIA GPU (``kernels/cuda``); see docs/cuda.md.

For a whole fit the weights, optimiser moments, gradients and the train/valid arrays live on the
device: ``bind`` uploads them once, each epoch uploads only its ``order``, ``lrs`` and ``moms`` and
copies back only its losses, and ``sync`` brings weights and moments home. ``loop='device'``
(default) runs each epoch as one cooperative kernel launch; ``loop='host'`` launches two kernels per
step from Python (three in sparse mode; the fallback, also picked by ``MFSCRATCH_CUDA_LOOP=host``).
``group`` (``MFSCRATCH_CUDA_GROUP``) sets the threads per rating of the device loop's forward phase
(default: a warp, fewer when k < 32). Per-rating mode runs the sparse kernel one rating a step (the
fused per-rating kernel has no GPU twin yet).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from ..errors import ConfigError
from ..kernels.records import EpochOut, Moments, Ratings, Steps, hyper_of, split_flat, step_scalars
from .common import permutation_into, tiny_problem

__all__ = ["CudaBackend"]


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


class CudaBackend:
    """numba.cuda kernels on an NVIDIA GPU; on a NaN/inf loss the device loop stops before that
    step's update, as the CPU does; the host loop finishes the epoch (the learner raises either way)."""

    name = "cuda"
    LOOPS = ("device", "host")

    def __init__(
        self,
        loop: str | None = None,
        group: int | None = None,
        max_blocks: int | None = None,
        threads: int | None = None,
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
        self.ck, self.loop, self.group = ck, loop, group
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
            self.data = Ratings(*(cuda.to_device(np.ascontiguousarray(a)) for a in host))
            self.n_train = len(dls.train_users)
            self._valid_host = (dls.valid_users, dls.valid_items, dls.valid_ratings)
            self._valid = Ratings(*(cuda.to_device(np.ascontiguousarray(a)) for a in self._valid_host))

    def runner(self, opt, mode: str, bs: int, sized_as=None) -> _CudaRunner:
        if mode not in ("exact", "sparse", "per-rating"):
            raise ConfigError(f"unknown mode {mode!r}: use exact, sparse or per-rating")
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
        """False: the gradient's float atomics add in the order the threads arrive (the results agree
        to float rounding, not bit for bit)."""
        return False

    def warmup(self, model, dls, opt, mode: str) -> None:
        """Compile (or load from the cache) the kernels of a fit in ``mode``, on a tiny problem."""
        from ..optim import OptState

        tiny, loaders = tiny_problem(model, dls, mode)
        scratch = CudaBackend(self.loop, self.group, self.max_blocks)
        scratch.bind(tiny, OptState.zeros_like(tiny.params), loaders)
        n_steps = loaders.n_train // loaders.bs
        runner = scratch.runner(opt, mode, loaders.bs)
        runner.train_epoch(np.random.default_rng(0), np.full(n_steps, 1e-3), np.full(n_steps, 0.9), 0)
        scratch.evaluate(*scratch._valid_host)
        self.loop = scratch.loop  # a fallback found here holds for the real fit too
