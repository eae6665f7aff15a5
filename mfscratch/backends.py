"""Where the training loop runs: one small interface, one class per backend.

A backend owns the arrays it trains on (on the CPU: the model's own buffer; on a GPU: device
copies) and exposes four calls the learner needs:

* ``bind(model, state, dls)``: take the weights, optimiser state and data for a fit;
* ``train_epoch(order, lrs, moms, opt, sparse, step0, flush=True) -> losses``: one epoch of steps, or
  a run of an epoch's consecutive steps, returning the per-step batch losses (a NaN/inf loss stops
  the epoch at that step: the array is cut there). ``flush=False`` says the epoch goes on in the
  next call (``step0`` advanced): the weights and moments may then be left mid-update until the
  call that ends the epoch (``flush=True``), ``evaluate`` or ``sync``;
* ``evaluate(users, items, ratings) -> mse``;
* ``sync()``: make ``model.params`` and ``state`` on the host current (a no-op on the CPU).

The learner does the orchestration (epochs, schedules, logging); the backend only runs kernels.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from .errors import ConfigError
from .kernels import cpu

__all__ = [
    "per_rating_sgd",
    "per_rating_groups",
    "CpuBackend",
    "ParallelBackend",
    "CudaBackend",
    "get_backend",
    "available_backends",
    "BACKENDS",
]


def per_rating_sgd(opt, bs: int) -> bool:
    """Whether a sparse-mode epoch runs the fused one-rating-at-a-time SGD kernel.

    Sparse mode with plain SGD (no momentum) and ``bs = 1`` is per-rating SGD, as cornac and
    LIBMF train: ``cpu.train_epoch_sgd_per_rating`` does it in one pass per rating, with no
    gradient buffer (the same algorithm as the general sparse kernel, float32 dot products).
    """
    return bs == 1 and opt.name == "sgd" and not opt.uses_momentum


#: Per-rating SGD on tables of more bytes than this trains cache-sized blocks (see per_rating_groups).
PER_RATING_GROUP_BYTES = 4 << 20


def per_rating_groups(table_bytes: int, n_threads: int = 1) -> int:
    """How many user (and item) groups the per-rating SGD epoch splits into (``cpu.block_layout``).

    One per thread, so that the threads train blocks that share no row; and for tables over
    :data:`PER_RATING_GROUP_BYTES` enough groups that one block's rows (a user group's and an item
    group's) take about that many bytes, so that they stay in cache while the block trains: at
    ML-25M's shape (58 MB of tables) 14 groups (``benchmarks/scale_ml25m.py``: 0.53 s an epoch on
    two threads, against 0.89 s with 2 groups; docs/speed.md).
    A multiple of the thread count, so that each thread gets as many blocks of a stratum.
    """
    n_threads = max(1, int(n_threads))
    cache_groups = -(-int(table_bytes) // PER_RATING_GROUP_BYTES)
    return n_threads * max(1, -(-cache_groups // n_threads)) if cache_groups > 1 else n_threads


class CpuBackend:
    """Numba kernels on the host, updating ``model.params`` in place."""

    name = "cpu"
    #: The compiled kernels this backend runs (the parallel backend swaps in their prange twins).
    _dense_epoch = staticmethod(cpu.train_epoch_dense)
    _sparse_epoch = staticmethod(cpu.train_epoch_sparse)
    _per_rating_epoch = staticmethod(cpu.train_epoch_sgd_per_rating)
    _shuffle_blocks = staticmethod(cpu.shuffle_blocks)

    #: True (default): exact mode with decoupled (or no) weight decay runs ``cpu.train_epoch_deferred``,
    #: which applies an untouched row's steps when the row is next needed: 1.4x faster on ML-100k,
    #: equal to the dense kernel to rounding (not bit for bit) at the end of each epoch, and the same
    #: floats whether an epoch runs as one call or as many (the learner's progress bar): the rows'
    #: deferred state is kept here between the calls. False: the dense kernel, bit-equal to
    #: ``reference.adam_step`` / ``sgd_step`` step by step (docs/speed.md, "Deferred rows").
    defer_rows = True

    def _n_chunks(self) -> int:
        """How many chunks of steps the sparse kernel runs at once: 1 here (serial, deterministic)."""
        return 1

    def __init__(self):
        self.model = None
        self._pending = None  # a deferred-rows epoch left open by a train_epoch(..., flush=False)

    def _dense_kernel(self, n_params: int):
        """The exact-mode epoch kernel for a buffer of ``n_params`` elements."""
        return self._dense_epoch

    def bind(self, model, state, dls) -> None:
        self._flush_deferred()  # rows still deferred belong to the model bound so far
        self.model, self.state, self.dls = model, state, dls
        self.grads = None  # the dense gradient buffer, made on first use (sparse mode needs none)
        self._blocks = None  # per-rating SGD's blocks (see _block_layout), made on first use
        self._canonical = None  # epoch_order's starting layout: every rating, blocks in code order
        self._done = None  # the deferred kernel's per-row step counts and replay scalars, made on first use
        self._train = (
            np.ascontiguousarray(dls.train_users),
            np.ascontiguousarray(dls.train_items),
            np.ascontiguousarray(dls.train_ratings),
        )

    def epoch_kind(self, opt, sparse: bool, bs: int, n_params: int) -> str:
        """Which epoch kernel :meth:`train_epoch` runs: ``per_rating``, ``sparse``, ``deferred`` or ``dense``."""
        if sparse:
            return "per_rating" if per_rating_sgd(opt, bs) else "sparse"
        # Exact mode without L2 decay: untouched rows have g = 0, so their steps can be deferred
        # (same result to rounding; see cpu.train_epoch_deferred and docs/speed.md).
        if (
            self.defer_rows
            and (opt.decouple_wd or opt.wd == 0)
            and self._dense_kernel(n_params) is cpu.train_epoch_dense
        ):
            return "deferred"
        return "dense"

    def train_epoch(self, order, lrs, moms, opt, sparse: bool, step0: int, flush: bool = True) -> np.ndarray:
        m = self.model
        kind = self.epoch_kind(opt, sparse, self.dls.bs, m.params.size)
        if kind == "deferred":
            return self._train_deferred(order, lrs, moms, opt, step0, flush)
        self._flush_deferred()
        users, items, ratings = self._train
        losses = np.empty(order.shape[0] // self.dls.bs, dtype=np.float64)
        common = (
            m.n_users,
            m.n_items,
            m.n_factors,
            users,
            items,
            ratings,
            order,
            self.dls.bs,
            lrs,
            moms,
            step0,
            opt.name == "adam",
            opt.uses_momentum,
            opt.sqr_mom,
            opt.eps,
            opt.wd,
            opt.decouple_wd,
            *m.range_args,
            losses,
        )
        if kind == "per_rating":
            n_groups = per_rating_groups(m.params.nbytes, self._n_chunks())
            block_start = np.array([0, order.shape[0]])
            if n_groups > 1 and self._blocks is not None and order is self._blocks[3]:
                block_start = self._blocks[2]  # epoch_order's layout: already in blocks
            elif n_groups > 1:
                order, block_start = self._block_layout(order, n_groups)
            n_done = self._per_rating_epoch(
                m.params,
                m.n_users,
                m.n_items,
                m.n_factors,
                users,
                items,
                ratings,
                order,
                block_start,
                n_groups,
                lrs,
                opt.wd,
                opt.decouple_wd,
                *m.range_args,
                losses,
            )
        elif kind == "sparse":
            n_done = self._sparse_epoch(m.params, self.state.exp_avg, self.state.exp_avg_sq, *common, self._n_chunks())
        else:
            if self.grads is None or self.grads.shape != m.params.shape or self.grads.dtype != m.params.dtype:
                self.grads = np.zeros_like(m.params)
            n_done = self._dense_kernel(m.params.size)(
                m.params, self.grads, self.state.exp_avg, self.state.exp_avg_sq, *common
            )
        return losses[:n_done]

    def epoch_order(self, rng, opt, sparse: bool):
        """The epoch's order of the training rows when this backend picks it, else ``None``.

        ``None`` (the default) lets the learner draw ``rng.permutation(n_train)``. Per-rating SGD
        on blocks (the parallel backend; the serial one too once the tables pass
        :data:`PER_RATING_GROUP_BYTES`) picks it: the ratings in their blocks, each block shuffled
        in place on the threads from one seed drawn from ``rng``. The blocks' orders are uniformly
        random and independent, as in the block layout of a fresh permutation, but no 80k-entry
        permutation and no counting sort are made each epoch (together 1.3 ms of ML-100k's 3.3 ms
        parallel epoch). The learner hands the array back to :meth:`train_epoch`.
        """
        if not (sparse and per_rating_sgd(opt, self.dls.bs)):
            return None
        n_groups = per_rating_groups(self.model.params.nbytes, self._n_chunks())
        if n_groups == 1:
            return None
        if self._blocks is None or self._blocks[0] != n_groups or self._canonical is None:
            blocked, _ = self._block_layout(np.empty(0, dtype=np.int64), n_groups)  # all ratings, in code order
            self._canonical = blocked.copy()
        _, _, block_start, blocked = self._blocks
        # From the same start every epoch: the epoch's order then depends on the seed alone, so a fit
        # resumed from a checkpoint (a fresh backend) draws the same orders as one never stopped.
        np.copyto(blocked, self._canonical)
        self._shuffle_blocks(blocked, block_start, int(rng.integers(2**63)))
        return blocked

    def _block_layout(self, order, n_groups: int):
        """``(blocked, block_start)``: ``order`` in per-rating SGD's blocks (``cpu.block_layout``).

        The groups and each rating's block are made once a fit (the training set does not change);
        ``self._blocks`` keeps them with the full layout's ``block_start`` and a layout buffer.
        """
        if self._blocks is None or self._blocks[0] != n_groups:
            users, items, _ = self._train
            user_group = cpu.balanced_groups(users, self.model.n_users, n_groups)
            item_group = cpu.balanced_groups(items, self.model.n_items, n_groups)
            block = np.empty(users.shape[0], dtype=np.int32)
            block_start = cpu.block_index(users, items, user_group, item_group, n_groups, block)
            self._blocks = (n_groups, block, block_start, np.empty(users.shape[0], dtype=np.int64))
            self._canonical = None
        _, block, _, buffer = self._blocks
        size = order.shape[0] or block.shape[0]  # an empty order stands for every rating
        # A piece of epoch_order's layout (the progress bar's chunks) lives in the buffer itself.
        blocked = np.empty(size, dtype=np.int64) if np.may_share_memory(order, buffer) else buffer[:size]
        return blocked, cpu.block_layout(order, block, n_groups * n_groups, blocked)

    def _train_deferred(self, order, lrs, moms, opt, step0: int, flush: bool) -> np.ndarray:
        """Exact-mode steps through ``cpu.train_epoch_deferred``, its deferred rows kept across calls.

        The first call of an epoch zeroes the per-row step counts and starts counting steps from
        its ``step0``; a call that continues an open epoch (``step0`` where the last one stopped,
        the same optimiser) carries on from them. Anything else settles the open epoch first.
        """
        m, bs = self.model, self.dls.bs
        pending = self._pending
        if pending is not None and (step0 != pending["next_step"] or opt != pending["opt"]):
            self._flush_deferred()
            pending = None
        if pending is None:
            if self._done is None:
                self._done = (
                    np.zeros(m.n_users, dtype=np.int64),
                    np.zeros(m.n_items, dtype=np.int64),
                    np.zeros((4, 0)),
                )
            else:
                self._done[0][:] = 0
                self._done[1][:] = 0
            step_base = step0
        else:
            step_base = pending["step_base"]
        n_steps = order.shape[0] // bs
        done_u, done_i, replay = self._done
        need = step0 - step_base + n_steps
        if replay.shape[1] < need:  # room for this call's replay scalars, grown geometrically
            grown = np.empty((4, max(need, 2 * replay.shape[1])))
            grown[:, : replay.shape[1]] = replay
            replay = grown
            self._done = (done_u, done_i, replay)
        users, items, ratings = self._train
        losses = np.empty(n_steps, dtype=np.float64)
        n_done = cpu.train_epoch_deferred(
            m.params,
            self.state.exp_avg,
            self.state.exp_avg_sq,
            m.n_users,
            m.n_items,
            m.n_factors,
            users,
            items,
            ratings,
            order,
            bs,
            lrs,
            moms,
            step0,
            opt.name == "adam",
            opt.uses_momentum,
            opt.sqr_mom,
            opt.eps,
            opt.wd,
            opt.decouple_wd,
            *m.range_args,
            losses,
            done_u,
            done_i,
            replay,
            step_base,
            bool(flush),
        )
        diverged = n_done < n_steps or (n_done > 0 and not np.isfinite(losses[n_done - 1]))
        # The kernel flushed at the end or at a divergence stop; otherwise rows stay deferred.
        self._pending = None if flush or diverged else dict(step_base=step_base, next_step=step0 + n_steps, opt=opt)
        return losses[:n_done]

    def _flush_deferred(self) -> None:
        """Bring every row of an open deferred-rows epoch up to its last step (a call with no steps)."""
        pending = self._pending
        if pending is not None:  # continues the open epoch with no steps, and flushes
            empty = np.empty(0)
            self._train_deferred(np.empty(0, dtype=np.int64), empty, empty, pending["opt"], pending["next_step"], True)

    def warmup(self, dtype=np.float32, kinds=None) -> None:
        """Compile (or load from the cache) the kernels of the epoch ``kinds`` (:meth:`epoch_kind`;
        ``None``: every kernel a fit may use) and the evaluation, on a tiny problem.

        ``Learner.warmup`` names only the kind its fit runs: a first run in a fresh environment then
        compiles one epoch kernel, not all of them (the deferred kernel alone takes 9 s).
        """
        kinds = {"dense", "deferred", "sparse", "per_rating"} if kinds is None else set(kinds)
        params = np.zeros((2 + 2) * (2 + 1), dtype=dtype)  # 2 users, 2 items, k = 2
        z = np.zeros_like(params)
        users = np.array([0, 1], dtype=np.int32)
        ratings = np.array([1.0, 2.0], dtype=np.float32)
        order = np.arange(2, dtype=np.int64)
        lrs = np.full(1, 1e-3)
        losses = np.empty(1)
        # Numba compiles once per argument *types*, so one call of each kernel is enough. The
        # argument types must be those train_epoch passes: int32 codes, int64 order, float64 schedule.
        common = (
            2,
            2,
            2,
            users,
            users,
            ratings,
            order,
            2,
            lrs,
            lrs,
            0,
            True,
            True,
            0.99,
            1e-5,
            0.0,
            True,
            0.0,
            1.0,
            True,
            losses,
        )
        if "dense" in kinds:
            for dense_epoch in {self._dense_kernel(0), self._dense_epoch}:  # small- and large-model kernels
                dense_epoch(params, z, z.copy(), z.copy(), *common)
        if "sparse" in kinds:
            self._sparse_epoch(params, z.copy(), z.copy(), *common, 1)
        if "deferred" in kinds and self.defer_rows:
            cpu.train_epoch_deferred(
                params,
                z.copy(),
                z.copy(),
                *common,
                np.zeros(2, dtype=np.int64),
                np.zeros(2, dtype=np.int64),
                np.zeros((4, 1)),
                0,
                True,
            )
        if "per_rating" in kinds:
            two = np.full(2, 1e-3)  # the per-rating kernel takes one lr and one loss per rating
            groups = cpu.balanced_groups(users, 2, 2)
            block = np.empty(2, dtype=np.int32)
            cpu.block_index(users, users, groups, groups, 2, block)
            blocked = np.empty_like(order)
            block_start = cpu.block_layout(order, block, 4, blocked)
            self._shuffle_blocks(blocked, block_start, 0)
            self._per_rating_epoch(
                params,
                2,
                2,
                2,
                users,
                users,
                ratings,
                blocked,
                block_start,
                2,
                two,
                0.0,
                True,
                0.0,
                1.0,
                True,
                np.empty(2),
            )
        cpu.evaluate_mse(*cpu.split_flat(params, 2, 2, 2), users, users, ratings, 0.0, 1.0, True)

    def evaluate(self, users, items, ratings) -> float:
        self._flush_deferred()
        m = self.model
        return float(cpu.evaluate_mse(*m.kernel_tables(), users, items, ratings, *m.range_args))

    def sync(self) -> None:
        self._flush_deferred()


class ParallelBackend(CpuBackend):
    """The same kernels compiled with ``parallel=True``: both modes use every Numba thread.

    * exact mode: each step's dense optimiser update runs ``prange`` over the elements of the flat
      buffer. Elements are independent, so this is deterministic and equal to the serial dense
      kernel (bit for bit: the same operations on the same floats; to rounding against the serial
      backend's default deferred rows); the batch maths stays serial. Models under
      ``min_parallel_params`` parameters use the serial kernels (deferred rows, unless
      ``defer_rows`` is off), exactly as the serial backend.
    * sparse mode: **Hogwild!**: the epoch's steps are cut into one contiguous chunk per thread and
      the chunks run at once on the shared tables without locks. Not reproducible run to run.
    * sparse per-rating SGD (``bs = 1``, SGD without momentum; see :func:`per_rating_sgd`):
      stratified blocks, no Hogwild: users and items are split into ``g`` groups (a multiple of
      the thread count, :func:`per_rating_groups`) and the threads train blocks that share no row,
      so the result is deterministic, but the ratings run block by block rather than in the
      serial order (``cpu.block_layout``, ``cpu.train_epoch_sgd_per_rating``).

    ``numba.set_num_threads`` (or ``NUMBA_NUM_THREADS``) sets the number of threads.
    """

    name = "parallel"
    _dense_epoch = staticmethod(cpu.train_epoch_dense_parallel)
    _sparse_epoch = staticmethod(cpu.train_epoch_sparse_parallel)
    _per_rating_epoch = staticmethod(cpu.train_epoch_sgd_per_rating_parallel)
    _shuffle_blocks = staticmethod(cpu.shuffle_blocks_parallel)
    #: Exact mode opens one parallel region per step. Below this many parameters a step's update
    #: takes tens of microseconds, and on a shared machine the wait for a descheduled thread at
    #: each region's end costs more than the second core saves (measured on ML-100k's 133k
    #: parameters: 0.055 s an epoch when idle, 1.6 s under load, against 0.075 s serial), so
    #: smaller models run the serial dense kernel. Set it to 0 to always split the update.
    min_parallel_params = 1_000_000

    def _dense_kernel(self, n_params: int):
        return self._dense_epoch if n_params >= self.min_parallel_params else cpu.train_epoch_dense

    def _n_chunks(self) -> int:
        import numba

        return numba.get_num_threads()


class CudaBackend:
    """numba.cuda kernels on an NVIDIA GPU (``kernels/cuda.py``); see ``docs/cuda.md``.

    For a whole fit the weights, optimiser moments, gradients and the train/valid arrays live on the
    device: ``bind`` uploads them once, each epoch uploads only its ``order``, ``lrs`` and ``moms``
    and copies back only its losses, and ``sync`` brings weights and moments home.
    ``loop='device'`` (default) runs each epoch as one cooperative kernel launch; ``loop='host'``
    launches two kernels per step from Python (three in sparse mode; the fallback, also picked by
    ``MFSCRATCH_CUDA_LOOP=host``). ``group`` (``MFSCRATCH_CUDA_GROUP``) sets the threads per rating
    of the device loop's forward phase (default: a warp, fewer when k < 32). On a NaN/inf loss the
    device loop stops before that step's update, as the CPU does; the host loop finishes the epoch
    (the learner raises either way).
    """

    name = "cuda"
    LOOPS = ("device", "host")

    def __init__(self, loop: str | None = None, group: int | None = None, max_blocks: int | None = None):
        from .kernels import cuda as ck

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
        self._coop = {}  # (kernel name) -> most blocks a cooperative launch may use

    # --- placement --------------------------------------------------------------------------
    def _tables(self, flat):
        """Device views of the four tables in a flat device buffer (biases 1-D), like ``cpu.split_flat``."""
        m = self.model
        a = m.n_users * m.n_factors
        b = a + m.n_items * m.n_factors
        c = b + m.n_users
        return (
            flat[:a].reshape(m.n_users, m.n_factors),
            flat[a:b].reshape(m.n_items, m.n_factors),
            flat[b:c],
            flat[c : c + m.n_items],
        )

    def bind(self, model, state, dls) -> None:
        cuda = self.ck.cuda
        self.model, self.state = model, state
        self.params = cuda.to_device(model.params)
        self.grads = cuda.to_device(np.zeros_like(model.params))
        self.exp_avg = cuda.to_device(state.exp_avg)
        self.exp_avg_sq = cuda.to_device(state.exp_avg_sq)
        self.user_owner = cuda.to_device(np.zeros(model.n_users, dtype=np.int32))
        self.item_owner = cuda.to_device(np.zeros(model.n_items, dtype=np.int32))
        if dls is not self.dls:  # the data stays put across fits on the same loaders
            self.dls = dls
            self._train = tuple(
                cuda.to_device(np.ascontiguousarray(a)) for a in (dls.train_users, dls.train_items, dls.train_ratings)
            )
            self._valid_host = (dls.valid_users, dls.valid_items, dls.valid_ratings)
            self._valid = tuple(cuda.to_device(np.ascontiguousarray(a)) for a in self._valid_host)

    # --- training ---------------------------------------------------------------------------
    def train_epoch(self, order, lrs, moms, opt, sparse: bool, step0: int, flush: bool = True) -> np.ndarray:
        # ``flush`` is for the CPU backends' deferred rows: every call here leaves the state settled.
        from numba.core.errors import TypingError

        cuda = self.ck.cuda
        bs = self.dls.bs
        n_steps = order.shape[0] // bs
        d_order, d_lrs, d_moms = (cuda.to_device(np.ascontiguousarray(a)) for a in (order, lrs, moms))
        hyper = (
            opt.name == "adam",
            opt.uses_momentum,
            float(opt.sqr_mom),
            float(opt.eps),
            float(opt.wd),
            bool(opt.decouple_wd),
        )
        if self.loop == "device":
            try:
                losses = self._epoch_on_device(d_order, d_lrs, d_moms, n_steps, hyper, sparse, step0)
            except TypingError:  # a bug in the kernels, not a property of this GPU
                raise
            except Exception as e:  # a cooperative launch this GPU/driver refuses: fall back, say so once
                warnings.warn(f"CUDA cooperative epoch kernel unavailable ({e}); using the host loop", stacklevel=2)
                self.loop = "host"
        if self.loop == "host":
            losses = self._epoch_from_host(d_order, lrs, moms, n_steps, hyper, sparse, step0)
        bad = np.flatnonzero(~np.isfinite(losses))
        return losses[: bad[0] + 1] if bad.size else losses

    def _epoch_on_device(self, d_order, d_lrs, d_moms, n_steps, hyper, sparse, step0):
        ck, m, bs = self.ck, self.model, self.dls.bs
        losses = ck.cuda.device_array(n_steps, dtype=np.float64)
        kernel = ck.train_epoch_sparse if sparse else ck.train_epoch_dense
        args = (
            self.params,
            self.grads,
            self.exp_avg,
            self.exp_avg_sq,
            m.n_users,
            m.n_items,
            m.n_factors,
            *self._train,
            d_order,
            bs,
            d_lrs,
            d_moms,
            int(step0),
            *hyper,
            *m.range_args,
            losses,
            self.user_owner,
            self.item_owner,
            self._group(),
        )
        key = "sparse" if sparse else "dense"
        if key not in self._coop:
            self._coop[key] = ck.cooperative_blocks(kernel, args)
        # Enough threads for the update phase's elements, never more than can be resident at once.
        work = 2 * bs * (m.n_factors + 1) if sparse else m.params.shape[0]
        self.blocks = min(self._coop[key], ck.blocks_for(work), self.max_blocks or self._coop[key])
        kernel[self.blocks, ck.THREADS](*args)
        return losses.copy_to_host()

    def _group(self) -> int:
        """Threads per rating in the epoch kernels' forward phase: enough lanes for the k columns,
        at most a warp (and a block)."""
        if self.group is not None:
            return self.group
        g = 1
        while g < min(self.model.n_factors, 32, self.ck.THREADS):
            g *= 2
        return g

    def _epoch_from_host(self, d_order, lrs, moms, n_steps, hyper, sparse, step0):
        ck, cuda, m, bs = self.ck, self.ck.cuda, self.model, self.dls.bs
        is_adam, use_mom, sqr_mom, eps, wd, decouple_wd = hyper
        n = n_steps * bs
        ep = (
            cuda.device_array(n, np.int32),
            cuda.device_array(n, np.int32),
            cuda.device_array(n, self._train[2].dtype),
        )
        T = ck.THREADS
        ck.gather_rows[ck.blocks_for(n), T](*self._train, d_order, *ep)
        losses = cuda.to_device(np.zeros(n_steps))
        P, G = self._tables(self.params), self._tables(self.grads)
        lo, hi, has_range = m.range_args
        fb_blocks, upd_blocks = ck.blocks_for(bs), ck.blocks_for(self.params.shape[0])
        lazy_blocks = ck.blocks_for(2 * bs * (m.n_factors + 1))
        for s in range(n_steps):
            bu, bi, br = (a[s * bs : (s + 1) * bs] for a in ep)
            ck.forward_backward[fb_blocks, T](*P, bu, bi, br, lo, hi, has_range, *G, losses[s : s + 1])
            lr, mom, step = float(lrs[s]), float(moms[s]), int(step0) + s + 1
            if sparse:
                ck.mark_rows[fb_blocks, T](bu, bi, self.user_owner, self.item_owner)
                if is_adam:
                    ck.adam_update_sparse[lazy_blocks, T](
                        self.params,
                        self.grads,
                        self.exp_avg,
                        self.exp_avg_sq,
                        m.n_users,
                        m.n_items,
                        m.n_factors,
                        bu,
                        bi,
                        self.user_owner,
                        self.item_owner,
                        lr,
                        mom,
                        sqr_mom,
                        eps,
                        wd,
                        decouple_wd,
                        step,
                    )
                else:
                    ck.sgd_update_sparse[lazy_blocks, T](
                        self.params,
                        self.grads,
                        self.exp_avg,
                        m.n_users,
                        m.n_items,
                        m.n_factors,
                        bu,
                        bi,
                        self.user_owner,
                        self.item_owner,
                        lr,
                        mom,
                        wd,
                        decouple_wd,
                        use_mom,
                    )
            elif is_adam:
                ck.adam_update_dense[upd_blocks, T](
                    self.params, self.grads, self.exp_avg, self.exp_avg_sq, lr, mom, sqr_mom, eps, wd, decouple_wd, step
                )
            else:
                ck.sgd_update_dense[upd_blocks, T](
                    self.params, self.grads, self.exp_avg, lr, mom, wd, decouple_wd, use_mom
                )
        return losses.copy_to_host()

    # --- evaluation and scoring ---------------------------------------------------------------
    def evaluate(self, users, items, ratings) -> float:
        ck, cuda = self.ck, self.ck.cuda
        if all(a is b for a, b in zip((users, items, ratings), self._valid_host)):
            d = self._valid  # the loaders' validation rows: already on the device
        else:
            d = tuple(cuda.to_device(np.ascontiguousarray(a)) for a in (users, items, ratings))
        out = cuda.to_device(np.zeros(1))
        # Grid-stride kernel: a bounded grid keeps the per-block atomics few on big validation sets.
        blocks = min(ck.blocks_for(d[0].shape[0]), 1024)
        ck.evaluate_mse[blocks, ck.THREADS](*self._tables(self.params), *d, *self.model.range_args, out)
        return float(out.copy_to_host()[0])

    def score_items(self, user: int) -> np.ndarray:
        """Predictions for ``user`` (a code) against every item, computed on the device (for top-N)."""
        ck, m = self.ck, self.model
        out = ck.cuda.device_array(m.n_items, dtype=m.params.dtype)
        ck.score_items[ck.blocks_for(m.n_items), ck.THREADS](*self._tables(self.params), int(user), *m.range_args, out)
        return out.copy_to_host()

    def epoch_order(self, rng, opt, sparse: bool):
        """``None``: the learner's permutation orders every epoch on the GPU."""
        return None

    def sync(self) -> None:
        if self.model is None:
            return
        self.params.copy_to_host(self.model.params)
        self.exp_avg.copy_to_host(self.state.exp_avg)
        self.exp_avg_sq.copy_to_host(self.state.exp_avg_sq)

    def epoch_kind(self, opt, sparse: bool, bs: int, n_params: int) -> str:
        """``sparse`` or ``dense``: the two epoch kernels of this backend."""
        return "sparse" if sparse else "dense"

    def warmup(self, dtype=np.float32, kinds=None) -> None:
        """Compile (or load from the cache) the kernels of the epoch ``kinds`` (``None``: both), on a tiny problem."""
        from types import SimpleNamespace

        from .model import EmbeddingDotBias
        from .optim import Adam, OptState

        model = EmbeddingDotBias(2, 2, 2, y_range=(0.0, 1.0), seed=0, dtype=dtype)
        codes = np.array([0, 1], dtype=np.int32)
        ratings = np.array([0.5, 1.0], dtype=np.float32)
        dls = SimpleNamespace(
            bs=2,
            train_users=codes,
            train_items=codes,
            train_ratings=ratings,
            valid_users=codes,
            valid_items=codes,
            valid_ratings=ratings,
        )
        scratch = CudaBackend(self.loop, self.group, self.max_blocks)
        scratch.bind(model, OptState.zeros_like(model.params), dls)
        one = np.full(1, 1e-3)
        for sparse in (False, True):
            if kinds is None or ("sparse" if sparse else "dense") in kinds:
                scratch.train_epoch(np.arange(2, dtype=np.int64), one, one, Adam(), sparse, 0)
        scratch.evaluate(*scratch._valid_host)
        self.loop = scratch.loop  # a fallback found here holds for the real fit too


BACKENDS = {"cpu": CpuBackend, "parallel": ParallelBackend, "cuda": CudaBackend}


def available_backends() -> list[str]:
    """The registered backends that can run on this machine (``cuda`` needs numba-cuda and a GPU)."""
    from .kernels import cuda as ck

    return [name for name in BACKENDS if name != "cuda" or (ck.cuda is not None and ck.HAS_CUDA)]


def get_backend(name: str):
    """A fresh backend object by name (``'cpu'``, ``'parallel'``, ``'cuda'``)."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}")
    return BACKENDS[name]()
