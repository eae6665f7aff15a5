"""Distributed stratified SGD (DSGD; Gemulla, Nijkamp, Haas, Sismanis, KDD 2011) on a Dask cluster.

:class:`DsgdTrainer` trains the biased dot-product model on :class:`~.data.ClusterRatings`. Users and
items are cut into ``g`` balanced groups, ``g`` a multiple of the ``W`` workers; worker ``w`` owns
user groups ``w*m .. (w+1)*m - 1`` with their ratings and user rows for the whole fit. An epoch is
``g`` sub-epochs (strata): in stratum ``t`` every worker trains its blocks ``(c, (c + t) % g)``, which
share no user and no item with any other worker's, with the single-machine kernels; then each
worker hands one item group (its rows and their optimiser moments) to the previous worker. Dask
moves it: a sub-epoch's task takes the futures of the rows it needs, and the scheduler fetches them.

Per-rating SGD (plain SGD, ``bs = 1``) runs the fused per-rating kernel: given the seed, ``g`` and the
training rows, the weights equal, bit for bit, those of the local parallel backend on the same
rows and groups (each block shuffled from the same per-epoch seed, the same schedule step by step).
Lazy (sparse) Adam and SGD run the sparse kernel on each worker's blocks of a stratum, in batches
of ``bs``; their moments travel with their rows. Exact mode updates every row at every step, so
every worker would need every row at every step: it is refused.

Faults: every task is a pure function of its inputs, so when a worker dies Dask recomputes what it
held (its ratings from the files, its tables from the last results still in memory) on the workers
left, and the fit ends with the weights an undisturbed fit would have had.
"""

from __future__ import annotations

import dataclasses
import operator
import time
import uuid

import numpy as np

from .. import validate as checks
from ..errors import ConfigError, DivergenceError
from ..model import EmbeddingDotBias
from ..optim import SGD, resolve_opt
from . import adapter, layout, worker
from .data import ClusterRatings, gather

__all__ = ["DsgdTrainer"]


def _bytes_sent(dask_worker) -> int:
    """Bytes this worker has sent to other workers (run on each worker by ``Client.run``)."""
    return int(dask_worker.transfer_outgoing_bytes_total)


class DsgdTrainer:
    """DSGD on the workers of ``ratings.client``; ``fit_one_cycle`` and ``fit`` as the learner's.

    ``opt_func``, ``wd``, ``seed``, ``y_range`` and ``n_factors`` mean what they mean for
    ``collab_learner`` (``y_range=None``: no output range). ``bs = 1`` with plain SGD is per-rating
    SGD; other settings train lazy Adam/SGD. ``n_groups``: user and item groups (a multiple of the
    workers; default: what the local parallel backend picks for as many threads as workers).
    ``workers``: the worker addresses to train on (default: every worker, sorted); worker ``w``
    owns the ``w``-th stretch of user groups. ``timeout``: seconds an epoch may take on the cluster.
    Initial weights are fastai's, drawn in chunks of rows from streams of the seed
    (``adapter.init_rows``), so they do not depend on the layout.

    ``values`` holds ``[train_loss, valid_loss]`` per epoch (the train loss is the epoch's mean
    step loss); ``epoch_seconds`` and ``bytes_sent`` (bytes the workers sent each other, as Dask
    counts them) one number per epoch. ``epoch_started`` and ``after_epoch`` are lists of
    callables ``cb(trainer, epoch)``, run once an epoch's tasks are on the cluster and once it ends.
    """

    def __init__(
        self,
        ratings: ClusterRatings,
        n_factors: int = 50,
        y_range=None,
        opt_func=SGD,
        bs: int = 1,
        wd: float | None = None,
        seed: int | None = None,
        sparse: bool = True,
        n_groups: int | None = None,
        workers=None,
        timeout: float = 600.0,
        log=print,
    ):
        if not sparse:
            raise ConfigError(
                "exact mode updates every row of the tables at every step, so every worker would need the "
                "whole tables at every step; a cluster trains sparse modes only: sparse=True (per-rating SGD "
                "with SGD and bs=1, else lazy Adam or SGD)"
            )
        self.ratings, self.client = ratings, ratings.client
        self.opt = resolve_opt(opt_func)
        self.wd = None if wd is None else checks.nonneg_float("wd", wd)
        self.bs = checks.positive_int("bs", bs)
        self.n_factors = checks.positive_int("n_factors", n_factors)
        self.y_range = checks.check_y_range(y_range)
        self.per_rating = adapter.uses_per_rating_kernel(self.opt, self.bs)
        self.timeout, self.log = float(timeout), log
        self.workers = sorted(workers if workers is not None else self.client.scheduler_info()["workers"])
        W = len(self.workers)
        if W < 1:
            raise ConfigError("the cluster has no workers; start some (dask worker ADDRESS) or pass workers=")
        g = n_groups or adapter.default_groups(ratings.n_users, ratings.n_items, self.n_factors, W)
        if int(g) != g or g < W or g % W:
            raise ConfigError(f"n_groups must be a positive multiple of the {W} workers, got {n_groups!r}")
        self.n_groups = int(g)
        init_seeds, self.rng = adapter.fit_generators(seed)
        self.values: list = []
        self.epoch_seconds: list = []
        self.bytes_sent: list = []
        self.epoch_started: list = []
        self.after_epoch: list = []
        self.opt_step = 0  # optimiser steps taken (Adam's bias correction), across fits
        self._token = uuid.uuid4().hex[:12]
        self._fresh = True  # no stratum trained yet: the first one moves no item rows
        self._layout(init_seeds)

    # --- set-up -----------------------------------------------------------------------------
    def _submit(self, fn, *args, key: str, w: int | None = None):
        """A task named ``key``; with ``w``, preferably on worker ``w`` (any worker if it is gone)."""
        where = {} if w is None else dict(workers=[self.workers[w]], allow_other_workers=True)
        return self.client.submit(fn, *args, key=f"mf-{key}-{self._token}", **where)

    def _layout(self, init_seeds) -> None:
        """Groups from the gathered counts, each file's rows moved to their owners, and the initial tables."""
        W, g = len(self.workers), self.n_groups
        groups = self._submit(layout.make_groups, self.ratings.counts, g, key="groups")
        split = [
            self._submit(layout.split_by_owner, part, groups, W, key=f"split-{i}")
            for i, part in enumerate(self.ratings.partitions)
        ]
        self.data = [
            self._submit(
                layout.owner_data,
                w,
                groups,
                W,
                *[self._submit(operator.getitem, s, w, key=f"piece-{i}-{w}") for i, s in enumerate(split)],
                key=f"data-{w}",
                w=w,
            )
            for w in range(W)
        ]
        sizes = self._gather([self.client.submit(layout.OwnerData.stratum_sizes, d) for d in self.data], "the layout")
        self.stratum_sizes = np.array(sizes, dtype=np.int64).T  # [t, w]: training ratings of worker w in stratum t
        lazy = not self.per_rating
        moving = 1 + (lazy and self.opt.uses_momentum) + (lazy and self.opt.name == "adam")
        self.tables = [
            self._submit(
                worker.init_tables,
                self.data[w],
                self.n_factors,
                3 if lazy else 1,
                moving,
                init_seeds,
                key=f"init-{w}",
                w=w,
            )
            for w in range(W)
        ]

    @property
    def steps_per_epoch(self) -> int:
        """Optimiser steps an epoch: each worker's ratings of a stratum in batches of ``bs`` (the rest dropped)."""
        return int((self.stratum_sizes // self.bs).sum())

    # --- training ---------------------------------------------------------------------------
    def fit_one_cycle(
        self,
        n_epoch: int,
        lr_max: float = 1e-3,
        div: float = 25.0,
        div_final: float = 1e5,
        pct_start: float = 0.25,
        wd: float | None = None,
        moms=None,
    ) -> None:
        """fastai's one-cycle, as ``Learner.fit_one_cycle``."""
        checks.check_fit(n_epoch, lr_max, wd)
        checks.check_one_cycle(div, div_final, pct_start, moms)
        moms = tuple(moms or (0.95, 0.85, 0.95))
        total = n_epoch * self.steps_per_epoch
        self._fit(n_epoch, ("one_cycle", total, lr_max, div, div_final, pct_start, moms), wd)

    def fit(self, n_epoch: int, lr: float = 1e-3, wd: float | None = None) -> None:
        """A constant learning rate and the optimiser's own momentum, as ``Learner.fit``."""
        checks.check_fit(n_epoch, lr, wd)
        self._fit(n_epoch, ("constant", n_epoch * self.steps_per_epoch, lr, self.opt.mom), wd)

    @property
    def range_args(self) -> tuple:
        """``(lo, hi, has_range)`` as the kernels take them."""
        return (0.0, 1.0, False) if self.y_range is None else (*self.y_range, True)

    def _jobs(self, epoch: int, seed: int, spec: tuple, opt) -> list:
        """``[t][w]``: each worker's job in each stratum, its steps placed stratum by stratum, worker by worker.

        A job's first step in the fit's schedule is ``epoch * steps_per_epoch`` plus the steps before it;
        its optimiser step count continues from the steps of earlier fits (``opt_step``), as the learner's.
        """
        steps = self.stratum_sizes // self.bs
        before = np.concatenate([[0], np.cumsum(steps.ravel())[:-1]]).reshape(steps.shape)
        first = epoch * self.steps_per_epoch + before
        return [
            [
                worker.StratumJob(
                    epoch,
                    t,
                    seed,
                    int(first[t, w]),
                    self.opt_step + int(before[t, w]),
                    spec,
                    opt,
                    self.bs,
                    self.per_rating,
                    self.range_args,
                )
                for w in range(steps.shape[1])
            ]
            for t in range(steps.shape[0])
        ]

    def _fit(self, n_epoch: int, spec: tuple, wd: float | None) -> None:
        wd = self.wd if wd is None else wd
        opt = dataclasses.replace(self.opt) if wd is None else dataclasses.replace(self.opt, wd=float(wd))
        if self.log is not None:
            self.log(f"{'epoch':<10}{'train_loss':<12}{'valid_loss':<12}{'time':<10}")
        self._fit_id = getattr(self, "_fit_id", -1) + 1
        W = len(self.workers)
        for epoch in range(n_epoch):
            t0, sent0 = time.perf_counter(), self._sent()
            jobs = self._jobs(epoch, adapter.epoch_seed(self.rng), spec, opt)
            for t, stratum in enumerate(jobs):
                name = f"{self._fit_id}-{epoch}-{t}"
                moved = None
                if not self._fresh:
                    moved = [
                        self._submit(worker.outgoing_rows, self.tables[w], self.data[w], key=f"out-{name}-{w}", w=w)
                        for w in range(W)
                    ]
                self.tables = [
                    self._submit(
                        worker.train_stratum,
                        self.tables[w],
                        None if moved is None else moved[(w + 1) % W],
                        self.data[w],
                        stratum[w],
                        key=f"train-{name}-{w}",
                        w=w,
                    )
                    for w in range(W)
                ]
                self._fresh = False
            for callback in self.epoch_started:
                callback(self, epoch)
            train_loss, valid_loss = self._epoch_end(epoch)
            self.opt_step += self.steps_per_epoch
            seconds = time.perf_counter() - t0
            self.values.append([train_loss, valid_loss])
            self.epoch_seconds.append(seconds)
            self.bytes_sent.append(self._sent_since(sent0))
            if self.log is not None:
                from ..learner import format_time

                self.log(f"{epoch:<10}{train_loss:<12.6f}{valid_loss:<12.6f}{format_time(seconds):<10}")
            for callback in self.after_epoch:
                callback(self, epoch)

    def _epoch_end(self, epoch: int) -> tuple[float, float]:
        """Wait for the epoch; its mean step loss and the validation MSE under the epoch's final weights."""
        W, name = len(self.workers), f"{self._fit_id}-{epoch}"
        losses = [self._submit(worker.epoch_loss, self.tables[w], key=f"loss-{name}-{w}", w=w) for w in range(W)]
        held = [
            self._submit(worker.item_rows, self.tables[w], self.data[w], key=f"items-{name}-{w}", w=w) for w in range(W)
        ]
        errors = [
            self._submit(
                worker.squared_error,
                self.tables[w],
                self.data[w],
                self.ratings.n_items,
                self.range_args,
                *held,
                key=f"valid-{name}-{w}",
                w=w,
            )
            for w in range(W)
        ]
        results = self._gather(losses + errors, f"epoch {epoch}")
        losses, errors = results[:W], results[W:]
        total, count = sum(x[0] for x in losses), sum(x[1] for x in losses)
        if any(x[2] for x in losses) or not np.isfinite(total):
            raise DivergenceError(
                f"training diverged at epoch {epoch} (a step loss became NaN or infinite); "
                "the learning rate is probably too high: lower it"
            )
        n_valid = sum(e[1] for e in errors)
        return total / max(count, 1), (sum(e[0] for e in errors) / n_valid if n_valid else float("nan"))

    def _gather(self, futures: list, what: str) -> list:
        return gather(self.client, futures, self.timeout, what)

    def _sent(self) -> dict:
        return self.client.run(_bytes_sent)

    def _sent_since(self, before: dict) -> int:
        """Bytes sent between workers since ``before``, over the workers alive then and now."""
        now = self._sent()
        return sum(max(0, now[a] - before[a]) for a in now if a in before)

    # --- results ----------------------------------------------------------------------------
    def model(self) -> EmbeddingDotBias:
        """The current weights, gathered to the client as an :class:`EmbeddingDotBias`."""
        n_users, n_items, k = self.ratings.n_users, self.ratings.n_items, self.n_factors
        submit, pairs = self.client.submit, list(zip(self.tables, self.data))
        users = self._gather([submit(worker.user_rows, t, d) for t, d in pairs], "gathering the user rows")
        items = self._gather([submit(worker.item_rows, t, d) for t, d in pairs], "gathering the item rows")
        starts = self._gather([submit(lambda d: d.item_start, self.data[0])], "gathering the groups")[0]
        dtype = users[0][1].dtype
        u_weight, u_bias = np.zeros((n_users, k), dtype=dtype), np.zeros(n_users, dtype=dtype)
        i_weight, i_bias = np.zeros((n_items, k), dtype=dtype), np.zeros(n_items, dtype=dtype)
        for first, weights, bias in users:
            u_weight[first : first + len(bias)], u_bias[first : first + len(bias)] = weights, bias
        for held in items:
            for d, rows in held:
                codes = slice(int(starts[d]), int(starts[d + 1]))
                i_weight[codes], i_bias[codes] = rows[:, :k], rows[:, k]
        params = np.concatenate([u_weight.ravel(), i_weight.ravel(), u_bias, i_bias])
        return EmbeddingDotBias(k, n_users, n_items, y_range=self.y_range, params=params)

    def save(self, path):
        """Write the gathered model and the vocabularies to ``path`` (``mfscratch.save_model``)."""
        from ..io import save_model

        r = self.ratings
        return save_model(path, self.model(), r.classes(), r.user_name, r.item_name)

    def training_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The training rows (global codes) gathered to the client, worker by worker, each in block order:
        the rows a local run needs to reproduce this fit (small data and tests only)."""
        rows = self._gather([self.client.submit(layout.OwnerData.global_rows, d) for d in self.data], "gathering")
        return tuple(np.concatenate([r[a] for r in rows]) for a in range(3))  # type: ignore[return-value]

    def valid_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The validation rows (global codes) gathered to the client (small data and tests only)."""
        rows = self._gather([self.client.submit(layout.OwnerData.valid_rows, d) for d in self.data], "gathering")
        return tuple(np.concatenate([r[a] for r in rows]) for a in range(3))  # type: ignore[return-value]

    def __repr__(self) -> str:
        mode = "per-rating SGD" if self.per_rating else f"lazy {self.opt.name}"
        return f"DsgdTrainer({mode}, k={self.n_factors}, {len(self.workers)} workers, {self.n_groups} groups)"
