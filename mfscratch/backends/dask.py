"""The ``dask`` backend: a learner's per-rating SGD on a Dask cluster, by distributed stratified SGD.

``collab_learner(dls, backend="dask", opt_func=SGD, sparse=True, ...)`` with a ``distributed.Client``
created beforehand (Dask's default client; or ``learn.backend.client = client``) trains per-rating
SGD on the cluster's workers with :class:`mfscratch.distributed.DsgdTrainer`'s tasks: ``bind`` sends
each worker a stretch of the learner's training rows once, the runner's epoch is ``g`` strata of
conflict-free blocks, one task per worker and stratum, and ``sync`` gathers the weights into
``model.params``. The initial weights are the learner's own (``collab_learner``'s for its seed), each
epoch's block-shuffle seed is drawn from the learner's generator as the parallel backend draws it,
and the block layout is the parallel backend's for as many threads as workers, so the weights equal
the parallel backend's (``threads=W``) bit for bit, and a checkpoint resumes as on the other backends.

What the :class:`~mfscratch.backends.Backend` protocol cannot carry here, and why:

* **the data**: the protocol binds loaders that sit on the client, so here the training rows pass
  through the client once. Ratings that should never sit on one machine are read on the workers:
  ``mfscratch.distributed.read_ratings`` and ``DsgdTrainer`` (``mfscratch train --backend dask``);
* **exact mode** updates every row of the tables at every step, so every worker would need the
  whole tables at every step: refused;
* **sparse mode** (lazy Adam/SGD) runs on a cluster in batches within each worker's blocks of a
  stratum, so an epoch has fewer steps than the learner's ``n_train // bs`` and the batches are not
  the learner's: refused here, trained by ``DsgdTrainer`` (the conformance suite runs per-rating only);
* ``evaluate`` gathers the weights (``sync``) and computes the validation error on the client.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..kernels import cpu
from ..kernels.records import Ratings
from .cpu import per_rating_groups

__all__ = ["DaskBackend"]

INSTALL = "pip install 'mfscratch[dask]'"
EXACT_REFUSED = (
    "backend 'dask' does not train exact mode: every step updates every row of the tables, so every worker "
    "would need the whole tables at every step; use sparse=True with SGD and bs=1 (per-rating SGD)"
)
SPARSE_REFUSED = (
    "backend 'dask' trains a learner's per-rating SGD only (SGD, bs=1): lazy Adam/SGD on a cluster batch "
    "within each worker's blocks, not the learner's batches; train them with mfscratch.distributed.DsgdTrainer"
)


class _DsgdRunner:
    """One fit's epochs on the cluster; ``order`` and the losses are the trained rows in stratum-major,
    worker-by-worker order, the order in which a serial run gives the same floats."""

    mode = "per-rating"

    def __init__(self, backend: DaskBackend, trainer, groups, m: int):
        from ..distributed import adapter

        self.backend, self.trainer = backend, trainer
        self.progress = np.zeros(1, dtype=np.int64)
        self.order = np.empty(0, dtype=np.int64)
        data = backend.data
        g, W = trainer.n_groups, len(trainer.workers)
        owner = groups.user_group[data.users] // m
        self.rows, self.block_starts = [], []
        for w in range(W):
            rows = np.flatnonzero(owner == w)
            canonical, block_start = adapter.block_layout(
                data.users[rows], data.items[rows], groups.user_group, groups.item_group, g
            )
            self.rows.append(rows[canonical])
            self.block_starts.append(block_start)
        self._epochs = 0

    def _epoch_order(self, seed: int) -> list:
        """``[t][w]``: the training rows each worker trains in each stratum, in the order it trains them."""
        from ..distributed import adapter

        tr = self.trainer
        g, W = tr.n_groups, len(tr.workers)
        m = g // W
        out = []
        for t in range(g):
            stratum = []
            for w in range(W):
                first = t * g + w * m
                bs = self.block_starts[w]
                segment = self.rows[w][bs[first] : bs[first + m]]
                stratum.append(segment[adapter.stratum_order(bs, first, first + m, seed)])
            out.append(stratum)
        return out

    def train_epoch(self, rng, lrs, moms, step0: int) -> np.ndarray:
        from ..distributed import adapter, worker

        tr = self.trainer
        self.progress[:] = 0
        seed = adapter.epoch_seed(rng)
        lrs = np.ascontiguousarray(lrs, dtype=np.float64)
        moms = np.ascontiguousarray(moms, dtype=np.float64)
        if lrs.shape[0] == 1:  # one value for every step
            lrs, moms = np.full(tr.steps_per_epoch, lrs[0]), np.full(tr.steps_per_epoch, moms[0])
        jobs = tr._jobs(self._epochs, seed, ("given", lrs, moms), self.backend.opt)
        strata = tr._submit_epoch(f"b{self._epochs}-{id(self)}", jobs, halt=True)
        self._epochs += 1
        self.backend._dirty = True
        futures = [tr.client.submit(worker.stratum_losses, f) for stratum in strata for f in stratum]
        losses = tr._gather(futures, f"epoch {self._epochs - 1}")
        orders = [rows for stratum in self._epoch_order(seed) for rows in stratum]
        self.order = np.concatenate(orders) if orders else np.empty(0, dtype=np.int64)
        done = []
        for got, rows in zip(losses, orders):
            done.append(got)
            if got.shape[0] < rows.shape[0] or (got.shape[0] and not np.isfinite(got[-1])):
                break  # a worker diverged: the epoch ends at its non-finite loss
        out = np.concatenate(done) if done else np.empty(0, dtype=np.float64)
        self.progress[0] = out.shape[0]
        return out


class DaskBackend:
    """Per-rating SGD on a Dask cluster (see the module docstring); ``client``: a ``distributed.Client``
    (default: Dask's default client, the last one created in this process)."""

    name = "dask"
    #: The modes this backend trains through the learner (the others are refused with the reason).
    modes = ("per-rating",)
    #: User (and item) groups; None: the parallel backend's choice for as many threads as workers.
    per_rating_n_groups: int | None = None
    #: Seconds one epoch (or one gathering) may take on the cluster before the fit stops with an error.
    timeout = 600.0

    def __init__(self, threads: int | None = None, client=None):
        if not self.installed():
            raise ConfigError(f"backend 'dask' needs dask and distributed, which are not installed: {INSTALL}")
        if threads is not None:
            raise ConfigError(
                f"backend 'dask' runs one thread per worker process (threads={threads}); size the cluster instead"
            )
        self.threads = None
        self.client = client
        self.model: Any = None
        self._trainer: Any = None
        self._dirty = False
        self._scattered: Any = None

    @staticmethod
    def installed() -> bool:
        """Whether dask and distributed are installed."""
        try:
            return all(importlib.util.find_spec(name) is not None for name in ("dask", "distributed"))
        except ValueError:  # a module set to None in sys.modules (how tests hide a package)
            return False

    @classmethod
    def available(cls) -> bool:
        """Whether this process has a cluster to train on: dask installed and a ``distributed.Client``
        made (Dask's default client). Never imports dask itself: without a client it has not been."""
        if not cls.installed() or "distributed" not in sys.modules:
            return False
        from distributed import default_client

        try:
            default_client()
        except ValueError:
            return False
        return True

    def n_threads(self) -> int:
        return 1

    def _client(self):
        if self.client is None:
            from distributed import default_client

            try:
                self.client = default_client()
            except ValueError:
                raise ConfigError(
                    "backend 'dask' trains on a Dask cluster and finds no client: create one first, "
                    "distributed.Client('tcp://SCHEDULER:8786') or Client(LocalCluster()), or set learn.backend.client"
                ) from None
        return self.client

    def bind(self, model, state, dls) -> None:
        self.sync()  # weights a previous fit left on the cluster
        self.model, self.state, self.y_range = model, state, model.y_range_record
        self.data = Ratings(
            np.ascontiguousarray(dls.train_users),
            np.ascontiguousarray(dls.train_items),
            np.ascontiguousarray(dls.train_ratings),
        )
        self._trainer, self._dirty = None, False

    def runner(self, opt, mode: str, bs: int) -> _DsgdRunner:
        if mode == "exact":
            raise ConfigError(EXACT_REFUSED)
        if mode != "per-rating":
            raise ConfigError(SPARSE_REFUSED)
        from ..distributed import DsgdTrainer, layout
        from ..distributed.data import scatter_ratings

        client, m_ = self._client(), self.model
        workers = sorted(client.scheduler_info()["workers"])
        if not workers:
            raise ConfigError("the Dask cluster has no workers; start some (dask worker SCHEDULER_ADDRESS)")
        held = self._scattered
        if held is None or held[1] != workers or any(a is not b for a, b in zip(held[0], self.data)):
            d = self.data  # the rows go to the workers once per loaders and cluster, not once per fit
            ratings = scatter_ratings(
                client, d.users, d.items, d.ratings, m_.n_users, m_.n_items, workers, self.timeout
            )
            self._scattered = (tuple(d), workers, ratings)
        ratings = self._scattered[2]
        g = self.per_rating_n_groups or per_rating_groups(m_.params.nbytes, len(workers))
        self.opt = opt
        trainer = DsgdTrainer(
            ratings,
            n_factors=m_.n_factors,
            y_range=m_.y_range,
            opt_func=opt,
            bs=bs,
            sparse=True,
            n_groups=g,
            workers=workers,
            timeout=self.timeout,
            log=None,
            params=m_.params,
        )
        self._trainer = trainer
        counts = (
            np.bincount(self.data.users, minlength=m_.n_users),
            np.bincount(self.data.items, minlength=m_.n_items),
        )
        return _DsgdRunner(
            self, trainer, layout.make_groups(counts, trainer.n_groups), trainer.n_groups // len(workers)
        )

    def evaluate(self, users, items, ratings) -> float:
        """The validation error on the client, under the weights gathered from the cluster."""
        self.sync()
        m = self.model
        data = Ratings(np.ascontiguousarray(users), np.ascontiguousarray(items), np.ascontiguousarray(ratings))
        return float(cpu.evaluate_mse(m.kernel_tables(), data, m.y_range_record))

    def sync(self) -> None:
        """Gather the weights from the workers into ``model.params`` (per-rating SGD has no moments)."""
        if self._trainer is not None and self._dirty:
            self.model.params[...] = self._trainer.weights()[0]
            self._dirty = False

    def reproducible(self, mode: str) -> bool:
        return True

    def warmup(self, model, dls, opt, mode: str) -> None:
        """Compile the per-rating kernels on every worker (Numba's cache makes a second start quick)."""
        if mode != "per-rating":
            return
        self._client().run(_warm_worker, model.dtype, dls.train_users.dtype, dls.train_ratings.dtype)


def _warm_worker(dtype, code_dtype, rating_dtype) -> None:
    """On a worker: one tiny stratum through the kernels a per-rating task runs."""
    from ..distributed import adapter

    users = np.array([0, 1], dtype=code_dtype)
    items = np.array([1, 0], dtype=code_dtype)
    ratings = np.array([1.0, 2.0], dtype=rating_dtype)
    one_group = np.zeros(2, dtype=np.int32)
    _, block_start = adapter.block_layout(users, items, one_group, one_group, 1)
    order = adapter.stratum_order(block_start, 0, 1, 1)
    params = np.zeros(2 * 2 * 3, dtype=dtype)
    codes = users.astype(np.int32), items.astype(np.int32)
    adapter.train_per_rating(params, 2, 2, 2, *codes, ratings, order, np.full(2, 1e-3), 0.0, False, (0.0, 5.5, True))
