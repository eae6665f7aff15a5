"""Where the training loop runs: one small interface, one class per backend.

A backend owns the arrays it trains on (on the CPU: the model's own buffer; on a GPU: device
copies) and exposes four calls the learner needs:

* ``bind(model, state, dls)``: take the weights, optimiser state and data for a fit;
* ``train_epoch(order, lrs, moms, opt, sparse, step0) -> losses``: one epoch of steps, returning the
  per-step batch losses (a NaN/inf loss stops the epoch at that step: the array is cut there);
* ``evaluate(users, items, ratings) -> mse``;
* ``sync()``: make ``model.params`` and ``state`` on the host current (a no-op on the CPU).

The learner does the orchestration (epochs, schedules, logging); the backend only runs kernels.
"""
from __future__ import annotations

import numpy as np

from .errors import ConfigError
from .kernels import cpu

__all__ = ["CpuBackend", "ParallelBackend", "get_backend", "BACKENDS"]


class CpuBackend:
    """Numba kernels on the host, updating ``model.params`` in place."""

    name = "cpu"
    #: The compiled kernels this backend runs (the parallel backend swaps in their prange twins).
    _dense_epoch = staticmethod(cpu.train_epoch_dense)
    _sparse_epoch = staticmethod(cpu.train_epoch_sparse)

    def _n_chunks(self) -> int:
        """How many chunks of steps the sparse kernel runs at once: 1 here (serial, deterministic)."""
        return 1

    def __init__(self):
        self.model = None

    def _dense_kernel(self, n_params: int):
        """The exact-mode epoch kernel for a buffer of ``n_params`` elements."""
        return self._dense_epoch

    def bind(self, model, state, dls) -> None:
        self.model, self.state, self.dls = model, state, dls
        self.grads = None  # the dense gradient buffer, made on first use (sparse mode needs none)
        self._train = (np.ascontiguousarray(dls.train_users), np.ascontiguousarray(dls.train_items),
                       np.ascontiguousarray(dls.train_ratings))

    def train_epoch(self, order, lrs, moms, opt, sparse: bool, step0: int) -> np.ndarray:
        m = self.model
        users, items, ratings = self._train
        losses = np.empty(order.shape[0] // self.dls.bs, dtype=np.float64)
        common = (m.n_users, m.n_items, m.n_factors, users, items, ratings, order, self.dls.bs, lrs, moms, step0,
                  opt.name == "adam", opt.uses_momentum, opt.sqr_mom, opt.eps, opt.wd, opt.decouple_wd,
                  *m.range_args, losses)
        if sparse:
            n_done = self._sparse_epoch(m.params, self.state.exp_avg, self.state.exp_avg_sq, *common,
                                        self._n_chunks())
        else:
            if self.grads is None or self.grads.shape != m.params.shape or self.grads.dtype != m.params.dtype:
                self.grads = np.zeros_like(m.params)
            n_done = self._dense_kernel(m.params.size)(m.params, self.grads, self.state.exp_avg,
                                                       self.state.exp_avg_sq, *common)
        return losses[:n_done]

    def warmup(self, dtype=np.float32) -> None:
        """Compile (or load from the cache) every kernel a fit uses, on a tiny problem."""
        params = np.zeros((2 + 2) * (2 + 1), dtype=dtype)  # 2 users, 2 items, k = 2
        z = np.zeros_like(params)
        users = np.array([0, 1], dtype=np.int32)
        ratings = np.array([1.0, 2.0], dtype=np.float32)
        order = np.arange(2, dtype=np.int64)
        lrs = np.full(1, 1e-3)
        losses = np.empty(1)
        # Numba compiles once per argument *types*, so one call of each kernel is enough. The
        # argument types must be those train_epoch passes: int32 codes, int64 order, float64 schedule.
        common = (2, 2, 2, users, users, ratings, order, 2, lrs, lrs, 0, True, True, 0.99, 1e-5, 0.0, True,
                  0.0, 1.0, True, losses)
        for dense_epoch in {self._dense_kernel(0), self._dense_epoch}:  # small- and large-model kernels
            dense_epoch(params, z, z.copy(), z.copy(), *common)
        self._sparse_epoch(params, z.copy(), z.copy(), *common, 1)
        cpu.evaluate_mse(*cpu.split_flat(params, 2, 2, 2), users, users, ratings, 0.0, 1.0, True)

    def evaluate(self, users, items, ratings) -> float:
        m = self.model
        return float(cpu.evaluate_mse(*m.kernel_tables(), users, items, ratings, *m.range_args))

    def sync(self) -> None:
        pass


class ParallelBackend(CpuBackend):
    """The same kernels compiled with ``parallel=True``: both modes use every Numba thread.

    * exact mode: each step's dense optimiser update runs ``prange`` over the elements of the flat
      buffer. Elements are independent, so this is deterministic and equal to the serial backend
      (bit for bit: the same operations on the same floats); the batch maths stays serial.
      Models under ``min_parallel_params`` parameters use the serial kernel (see there).
    * sparse mode: **Hogwild!**: the epoch's steps are cut into one contiguous chunk per thread and
      the chunks run at once on the shared tables without locks. Not reproducible run to run.

    ``numba.set_num_threads`` (or ``NUMBA_NUM_THREADS``) sets the number of threads.
    """

    name = "parallel"
    _dense_epoch = staticmethod(cpu.train_epoch_dense_parallel)
    _sparse_epoch = staticmethod(cpu.train_epoch_sparse_parallel)
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


BACKENDS = {"cpu": CpuBackend, "parallel": ParallelBackend}


def get_backend(name: str):
    """A fresh backend object by name (``'cpu'``, ``'parallel'``)."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}")
    return BACKENDS[name]()
