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
    (``adapter.init_rows``), so they do not depend on the layout; they are not the numbers
    ``collab_learner`` draws for the same seed (it draws each whole table from one stream, which a
    worker holding a part of the tables cannot do without drawing all of it). ``params``: start
    from these flat weights instead (``model.params`` of a local model, e.g. ``collab_learner``'s
    for the same seed); :meth:`set_weights` does the same later, with the optimiser's moments.

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
        params: np.ndarray | None = None,
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
        self.fit_args: dict | None = None  # the current fit's arguments (a checkpoint resumes it)
        self._token = uuid.uuid4().hex[:12]
        self._fresh = True  # no stratum trained yet: the first one moves no item rows
        self._starts: tuple | None = None
        self._layout(init_seeds)
        if params is not None:
            self.set_weights(params)

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
        moving = self.tables_moving
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
    def tables_moving(self) -> int:
        """How many buffers travel with the item rows: 1 (weights), 2 (+ ``exp_avg``), 3 (+ ``exp_avg_sq``)."""
        lazy = not self.per_rating
        return 1 + int(lazy and self.opt.uses_momentum) + int(lazy and self.opt.name == "adam")

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
        start_epoch: int = 0,
    ) -> None:
        """fastai's one-cycle, as ``Learner.fit_one_cycle``; ``start_epoch`` skips the epochs a restored
        checkpoint already trained (``mfscratch.distributed.resume``)."""
        checks.check_fit(n_epoch, lr_max, wd)
        self.fit_args = checks.one_cycle_fit_args(n_epoch, lr_max, div, div_final, pct_start, wd, moms)
        moms = tuple(moms or (0.95, 0.85, 0.95))
        total = n_epoch * self.steps_per_epoch
        self._fit(n_epoch, ("one_cycle", total, lr_max, div, div_final, pct_start, moms), wd, start_epoch)

    def fit(self, n_epoch: int, lr: float = 1e-3, wd: float | None = None, start_epoch: int = 0) -> None:
        """A constant learning rate and the optimiser's own momentum, as ``Learner.fit``."""
        checks.check_fit(n_epoch, lr, wd)
        self.fit_args = dict(method="fit", n_epoch=n_epoch, lr=lr, wd=wd)
        self._fit(n_epoch, ("constant", n_epoch * self.steps_per_epoch, lr, self.opt.mom), wd, start_epoch)

    @property
    def range_args(self) -> tuple:
        """``(lo, hi, has_range)`` as the kernels take them."""
        return (0.0, 1.0, False) if self.y_range is None else (*self.y_range, True)

    def _jobs(self, epoch: int, seed: int, spec: tuple, opt) -> list:
        """``[t][w]``: each worker's job in each stratum, its steps placed stratum by stratum, worker by worker.

        ``spec``: the fit's schedule, or ``("given", lrs, moms)``: this epoch's step values, each job
        sent its slice, its step losses kept (the ``dask`` backend's runner). A job's first step in the
        fit's schedule is ``epoch * steps_per_epoch`` plus the steps before it; its optimiser step
        count continues from the steps of earlier fits (``opt_step``), as the learner's.
        """
        steps = self.stratum_sizes // self.bs
        before = np.concatenate([[0], np.cumsum(steps.ravel())[:-1]]).reshape(steps.shape)
        given = spec[0] == "given"  # ("given", lrs, moms): this epoch's steps; each job gets its slice
        first = (0 if given else epoch * self.steps_per_epoch) + before

        def job_spec(t: int, w: int) -> tuple:
            if not given:
                return spec
            a, b = int(first[t, w]), int(first[t, w] + steps[t, w])
            return ("given", a, spec[1][a:b], spec[2][a:b])

        return [
            [
                worker.StratumJob(
                    epoch,
                    t,
                    seed,
                    int(first[t, w]),
                    self.opt_step + int(before[t, w]),
                    job_spec(t, w),
                    opt,
                    self.bs,
                    self.per_rating,
                    self.range_args,
                    keep_losses=given,
                )
                for w in range(steps.shape[1])
            ]
            for t in range(steps.shape[0])
        ]

    def _fit(self, n_epoch: int, spec: tuple, wd: float | None, start_epoch: int = 0) -> None:
        wd = self.wd if wd is None else wd
        opt = dataclasses.replace(self.opt) if wd is None else dataclasses.replace(self.opt, wd=float(wd))
        if self.log is not None:
            self.log(f"{'epoch':<10}{'train_loss':<12}{'valid_loss':<12}{'time':<10}")
        self._fit_id = getattr(self, "_fit_id", -1) + 1
        for epoch in range(start_epoch, n_epoch):
            t0, sent0 = time.perf_counter(), self._sent()
            jobs = self._jobs(epoch, adapter.epoch_seed(self.rng), spec, opt)
            self._submit_epoch(f"{self._fit_id}-{epoch}", jobs)
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

    def _submit_epoch(self, name: str, jobs: list, halt: bool = False) -> list:
        """Submit an epoch's strata (``jobs[t][w]``); returns ``[t][w]``, each stratum's tables futures.

        ``halt``: each stratum also waits for every worker's divergence flag of the previous one and
        trains nothing once a worker has diverged (as the parallel backend's kernel stops).
        """
        W, strata = len(self.workers), []
        for t, stratum in enumerate(jobs):
            key = f"{name}-{t}"
            moved = None
            if not self._fresh:
                moved = [
                    self._submit(worker.outgoing_rows, self.tables[w], self.data[w], key=f"out-{key}-{w}", w=w)
                    for w in range(W)
                ]
            flags = []
            if halt and not self._fresh:
                flags = [self._submit(worker.diverged, self.tables[w], key=f"halt-{key}-{w}", w=w) for w in range(W)]
            self.tables = [
                self._submit(
                    worker.train_stratum,
                    self.tables[w],
                    None if moved is None else moved[(w + 1) % W],
                    self.data[w],
                    stratum[w],
                    *flags,
                    key=f"train-{key}-{w}",
                    w=w,
                )
                for w in range(W)
            ]
            strata.append(self.tables)
            self._fresh = False
        return strata

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
    def _group_starts(self) -> tuple[list, np.ndarray]:
        """``(spans, item_start)``: each worker's user codes ``(first, count)`` and where each item group's
        codes start (``g + 1`` numbers); gathered once."""
        if self._starts is None:
            spans = [self.client.submit(lambda d: (d.u_lo, d.n_users), d) for d in self.data]
            starts = self.client.submit(lambda d: d.item_start, self.data[0])
            *spans, item_start = self._gather([*spans, starts], "gathering the groups")
            self._starts = (spans, np.asarray(item_start, dtype=np.int64))
        return self._starts

    def weights(self) -> tuple[np.ndarray, ...]:
        """Every buffer the workers hold (the weights; lazy Adam/SGD: then ``exp_avg``, ``exp_avg_sq``),
        gathered to the client as flat arrays in the model's layout (zeros for a moment never used)."""
        n_users, n_items, k = self.ratings.n_users, self.ratings.n_items, self.n_factors
        pieces = self._gather(
            [self.client.submit(worker.all_rows, t, d) for t, d in zip(self.tables, self.data)], "gathering the tables"
        )
        _, item_start = self._group_starts()
        dtype, n_buffers = pieces[0][1][0].dtype, len(pieces[0][1])
        flats = []
        for b in range(n_buffers):
            flat = np.zeros((n_users + n_items) * (k + 1), dtype=dtype)
            u_weight, i_weight, u_bias, i_bias = adapter.split_tables(flat, n_users, n_items, k)
            for first, users, items in pieces:
                rows = slice(first, first + users[b].shape[0])
                u_weight[rows], u_bias[rows] = users[b][:, :k], users[b][:, k]
                for d, held in items:
                    codes = slice(int(item_start[d]), int(item_start[d + 1]))
                    i_weight[codes], i_bias[codes] = held[b][:, :k], held[b][:, k]
            flats.append(flat)
        while len(flats) < 3:
            flats.append(np.zeros_like(flats[0]))
        return tuple(flats)

    def set_weights(self, params: np.ndarray, exp_avg: np.ndarray | None = None, exp_avg_sq: np.ndarray | None = None):
        """Put flat weights (and, for lazy Adam/SGD, moments) in the model's layout onto the workers.

        Each worker is sent only its user rows and the item groups it holds at the start of an epoch;
        the next stratum trained is an epoch's first (the checkpoint of a finished epoch resumes so).
        """
        n_users, n_items, k, W = self.ratings.n_users, self.ratings.n_items, self.n_factors, len(self.workers)
        size = (n_users + n_items) * (k + 1)
        buffers = [params] + ([exp_avg, exp_avg_sq] if not self.per_rating else [])
        for b, flat in enumerate(buffers):
            if flat is None:
                buffers[b] = np.zeros_like(params)
            elif np.shape(flat) != (size,):
                raise ConfigError(f"weights of {np.shape(flat)} elements do not fit this fit's {size}-element tables")
        tables = [adapter.split_tables(np.asarray(f), n_users, n_items, k) for f in buffers]
        spans, item_start = self._group_starts()
        g, m = self.n_groups, self.n_groups // W
        self.tables = []
        for w in range(W):
            us = slice(spans[w][0], spans[w][0] + spans[w][1])
            codes = np.concatenate(
                [np.arange(item_start[d], item_start[d + 1]) for d in ((w * m + j) % g for j in range(m))]
            )
            users = tuple(np.column_stack([t[0][us], t[2][us]]) for t in tables)
            items = tuple(np.column_stack([t[1][codes], t[3][codes]]) for t in tables)
            rows = self.client.scatter([(users, items)], workers=[self.workers[w]], hash=False)[0]
            self.tables.append(
                self._submit(
                    worker.tables_from_rows,
                    self.data[w],
                    k,
                    self.tables_moving,
                    rows,
                    key=f"set-{uuid.uuid4().hex[:8]}-{w}",
                    w=w,
                )
            )
        self._fresh = True

    def model(self) -> EmbeddingDotBias:
        """The current weights, gathered to the client as an :class:`EmbeddingDotBias`."""
        k, r = self.n_factors, self.ratings
        return EmbeddingDotBias(k, r.n_users, r.n_items, y_range=self.y_range, params=self.weights()[0])

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

    def reference_learner(self, backend: str = "parallel"):
        """A local :class:`~mfscratch.learner.Learner` that trains what this trainer trains next: this fit's
        split (the training rows in block order, the validation rows), its block layout (``n_groups``
        on the local backend's ``per_rating_n_groups``), its current weights and its epoch-seed
        generator's state. Per-rating SGD on ``backend="parallel"`` (or ``"cpu"``) then gives these
        weights bit for bit; lazy Adam/SGD batch differently (close, not equal). Small data and tests only:
        it gathers every rating to the client."""
        from ..data import CollabDataLoaders
        from ..learner import Learner

        r = self.ratings
        train, valid = self.training_rows(), self.valid_rows()
        users, items, ratings = (np.concatenate([a, b]) for a, b in zip(train, valid))
        n = train[0].shape[0]
        rows = (users, items, ratings, np.arange(n), np.arange(n, users.shape[0]))
        dls = CollabDataLoaders(*rows, r.classes(), r.user_name, r.item_name, r.rating_name, bs=self.bs)
        model = EmbeddingDotBias(self.n_factors, r.n_users, r.n_items, y_range=self.y_range, params=self.weights()[0])
        learn = Learner(dls, model, opt_func=self.opt, wd=self.wd, sparse=True, backend=backend, log=None)
        learn.rng.bit_generator.state = self.rng.bit_generator.state
        learn.opt_state.step = self.opt_step
        learn.backend.per_rating_n_groups = self.n_groups  # type: ignore[attr-defined]
        return learn

    def valid_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The validation rows (global codes) gathered to the client (small data and tests only)."""
        rows = self._gather([self.client.submit(layout.OwnerData.valid_rows, d) for d in self.data], "gathering")
        return tuple(np.concatenate([r[a] for r in rows]) for a in range(3))  # type: ignore[return-value]

    def __repr__(self) -> str:
        mode = "per-rating SGD" if self.per_rating else f"lazy {self.opt.name}"
        return f"DsgdTrainer({mode}, k={self.n_factors}, {len(self.workers)} workers, {self.n_groups} groups)"
