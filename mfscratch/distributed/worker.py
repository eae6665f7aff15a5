"""What runs on a worker: its tables, one sub-epoch of training, evaluation, and the rows it sends.

A worker's tables are one flat buffer per trained quantity (weights; for lazy Adam/SGD the moments
too) in the kernels' layout ``u_weight | i_weight | u_bias | i_bias``, holding only the worker's user
rows and the ``m`` item groups it holds, one after another (its slots). In sub-epoch (stratum) ``t``
slot ``j`` holds item group ``(w*m + j + t) % g``, the one its ``j``-th block of the stratum needs.
Between two strata the slots move down by one: slots ``1..m-1`` become ``0..m-2`` on the worker itself,
and the last slot receives the group that slot 0 of worker ``w + 1`` held, so exactly one item
group (its rows, with their moments) leaves each worker.

Every function here is pure: it copies what it changes and returns new objects. A task that Dask
runs again (a worker died and its results were lost) therefore computes the same floats.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from . import adapter
from .layout import OwnerData

__all__ = [
    "StratumJob",
    "WorkerTables",
    "init_tables",
    "tables_from_rows",
    "train_stratum",
    "outgoing_rows",
    "item_rows",
    "user_rows",
    "all_rows",
    "stratum_losses",
    "diverged",
    "epoch_loss",
    "squared_error",
]


@dataclass(frozen=True)
class StratumJob:
    """What one worker trains in one stratum: the schedule, the optimiser and where its steps fall."""

    epoch: int
    stratum: int
    seed: int  # the epoch's block-shuffle seed
    step0: int  # the fit's step index of this worker's first step in this stratum (the schedule)
    opt_step0: int  # optimiser steps taken before it, this fit's and earlier fits' (Adam's bias correction)
    spec: tuple  # the fit's schedule, or this job's slice of it (adapter.steps_schedule)
    opt: object  # Adam or SGD, weight decay resolved
    bs: int
    per_rating: bool
    range_args: tuple
    keep_losses: bool = False  # keep the stratum's step losses (stratum_losses) for the client


@dataclass
class WorkerTables:
    """A worker's rows: ``buffers`` (weights, then the moments that travel), the groups in its slots, and
    the epoch's loss so far (sum and count of step losses; ``diverged`` once a loss is not finite)."""

    n_users: int
    n_items: int  # item rows held: the slots' groups, one after another
    n_factors: int
    buffers: tuple
    slots: tuple  # item group per slot
    moving: int  # how many buffers travel with the item rows: 1 weights, 2 + exp_avg, 3 + exp_avg_sq
    loss: float = 0.0
    count: int = 0
    diverged: bool = False
    losses: np.ndarray | None = None  # the last stratum's step losses, when its job keeps them
    tables: tuple = field(init=False, repr=False)  # per buffer: (u_weight, i_weight, u_bias, i_bias) views

    def __post_init__(self):
        self.tables = tuple(adapter.split_tables(b, self.n_users, self.n_items, self.n_factors) for b in self.buffers)

    def __getstate__(self) -> dict:  # the views are remade on arrival, not sent a second time
        state = dict(self.__dict__)
        del state["tables"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__post_init__()


def _slot_rows(data: OwnerData, slots: tuple) -> list:
    """Where each slot's group sits in the item part: one slice of rows per slot."""
    bounds = np.cumsum([0] + [data.group_size(d) for d in slots])
    return [slice(int(bounds[j]), int(bounds[j + 1])) for j in range(len(slots))]


def _new_tables(template: WorkerTables, n_items: int, slots: tuple) -> WorkerTables:
    size = (template.n_users + n_items) * (template.n_factors + 1)
    buffers = tuple(np.empty(size, dtype=b.dtype) for b in template.buffers)
    return replace(template, n_items=n_items, buffers=buffers, slots=slots)


def init_tables(data: OwnerData, n_factors: int, n_buffers: int, moving: int, seeds, dtype=np.float32):
    """The initial tables: this worker's user rows and the item groups of its slots for stratum 0."""
    nu, k = data.n_users, n_factors
    slots = tuple(data.slot_group(j, 0) for j in range(data.m))
    ni = sum(data.group_size(d) for d in slots)
    buffers = tuple(np.zeros((nu + ni) * (k + 1), dtype=dtype) for _ in range(n_buffers))
    tables = WorkerTables(nu, ni, k, buffers, slots, moving)
    u_weight, i_weight, u_bias, i_bias = tables.tables[0]
    u_weight[:] = adapter.init_rows(seeds, 0, data.u_lo, data.u_lo + nu, k, dtype)
    u_bias[:] = adapter.init_rows(seeds, 2, data.u_lo, data.u_lo + nu, 1, dtype)[:, 0]
    for rows, d in zip(_slot_rows(data, slots), slots):
        first, stop = int(data.item_start[d]), int(data.item_start[d + 1])
        i_weight[rows] = adapter.init_rows(seeds, 1, first, stop, k, dtype)
        i_bias[rows] = adapter.init_rows(seeds, 3, first, stop, 1, dtype)[:, 0]
    return tables


def tables_from_rows(data: OwnerData, n_factors: int, moving: int, rows: tuple) -> WorkerTables:
    """Tables holding given ``rows = (users, items)``: ``users`` one ``(n_users, k + 1)`` array per buffer
    (this worker's user rows, weights then bias), ``items`` one per buffer with the item groups of the
    slots of stratum 0, one after another; how a fit continues from weights on the client."""
    users, items = rows
    nu, k = data.n_users, n_factors
    slots = tuple(data.slot_group(j, 0) for j in range(data.m))
    ni = sum(data.group_size(d) for d in slots)
    buffers = tuple(np.zeros((nu + ni) * (k + 1), dtype=u.dtype) for u in users)
    tables = WorkerTables(nu, ni, k, buffers, slots, moving)
    for table, u, i in zip(tables.tables, users, items):
        table[0][:], table[2][:] = u[:, :k], u[:, k]
        table[1][:], table[3][:] = i[:, :k], i[:, k]
    return tables


def _next_tables(prev: WorkerTables, data: OwnerData, incoming, reset_loss: bool) -> WorkerTables:
    """A copy of ``prev`` with the slots moved down by one and ``incoming`` in the last (``None``: no move)."""
    loss, count = (0.0, 0) if reset_loss else (prev.loss, prev.count)
    if incoming is None:
        return replace(prev, buffers=tuple(b.copy() for b in prev.buffers), loss=loss, count=count)
    group, payload = incoming
    leaving = data.group_size(prev.slots[0])
    tables = _new_tables(prev, prev.n_items - leaving + data.group_size(group), prev.slots[1:] + (group,))
    tables.loss, tables.count = loss, count
    stay = prev.n_items - leaving
    for b, (old, new) in enumerate(zip(prev.tables, tables.tables)):
        new[0][:] = old[0]
        new[2][:] = old[2]
        new[1][:stay] = old[1][leaving:]  # slots 1..m-1 -> 0..m-2, on this worker
        new[3][:stay] = old[3][leaving:]
        if b < len(payload):
            new[1][stay:] = payload[b][:, :-1]
            new[3][stay:] = payload[b][:, -1]
        else:  # a moment this optimiser never reads does not travel
            new[1][stay:] = 0.0
            new[3][stay:] = 0.0
    return tables


def train_stratum(prev: WorkerTables, incoming, data: OwnerData, job: StratumJob, *halts: bool) -> WorkerTables:
    """Move the item slots (``incoming``: the group arriving in the last slot, ``None`` at the fit's start),
    then train this worker's blocks of stratum ``job.stratum``, shuffled from ``job.seed``.

    ``halts``: whether each worker had diverged by the end of the previous stratum (:func:`diverged`);
    once one has, no worker trains again, as the parallel backend's kernel stops after the stratum
    in which a block diverged (the other blocks of that stratum finish theirs).
    """
    tables = _next_tables(prev, data, incoming, reset_loss=job.stratum == 0)
    tables.losses = np.empty(0, dtype=np.float64) if job.keep_losses else None
    if tables.slots != tuple(data.slot_group(j, job.stratum) for j in range(data.m)):
        raise RuntimeError(f"worker {data.worker} holds item groups {tables.slots} in stratum {job.stratum}")
    first, stop = data.stratum_blocks(job.stratum)
    n = int(data.block_start[stop] - data.block_start[first])
    if tables.diverged or any(halts) or n < job.bs:
        return tables
    # The stratum's rows; an item's row is its row within its group plus where its block's slot starts.
    a, b = int(data.block_start[first]), int(data.block_start[stop])
    starts = [rows.start for rows in _slot_rows(data, tables.slots)]
    offsets = np.repeat(np.array(starts, dtype=np.int32), np.diff(data.block_start[first : stop + 1]))
    order = adapter.stratum_order(data.block_start, first, stop, job.seed)
    shape = (tables.n_users, tables.n_items, tables.n_factors)
    rows = (data.users[a:b], data.items[a:b] + offsets, data.ratings[a:b], order)
    if job.per_rating:
        lrs, _ = adapter.steps_schedule(job.spec, job.step0, job.step0 + n)
        wd, decouple = job.opt.wd, job.opt.decouple_wd  # type: ignore[attr-defined]
        losses = adapter.train_per_rating(tables.buffers[0], *shape, *rows, lrs, wd, decouple, job.range_args)
        expected = n
    else:
        expected = n // job.bs
        lrs, moms = adapter.steps_schedule(job.spec, job.step0, job.step0 + expected)
        losses = adapter.train_lazy(
            tables.buffers, *shape, *rows, job.bs, lrs, moms, job.opt_step0, job.opt, job.range_args
        )
    tables.loss += float(losses.sum())
    tables.count += losses.shape[0]
    if job.keep_losses:
        tables.losses = losses.copy()
    tables.diverged = losses.shape[0] < expected or not np.isfinite(tables.loss)
    return tables


def outgoing_rows(tables: WorkerTables, data: OwnerData) -> tuple:
    """``(group, payload)``: the item group in slot 0, which moves to the previous worker next stratum.

    ``payload`` holds one ``(rows, k + 1)`` array (weights and bias) per travelling buffer: a copy,
    so that only these rows cross the network, not the worker's whole tables.
    """
    group = tables.slots[0]
    rows = _slot_rows(data, tables.slots)[0]
    payload = tuple(np.column_stack([t[1][rows], t[3][rows]]) for t in tables.tables[: tables.moving])
    return group, payload


def item_rows(tables: WorkerTables, data: OwnerData) -> list:
    """``[(group, weights_and_bias)]`` for every slot: the item rows this worker holds (no moments)."""
    u_weight, i_weight, u_bias, i_bias = tables.tables[0]
    return [
        (d, np.column_stack([i_weight[rows], i_bias[rows]]))
        for rows, d in zip(_slot_rows(data, tables.slots), tables.slots)
    ]


def user_rows(tables: WorkerTables, data: OwnerData) -> tuple:
    """``(first_code, u_weight rows, u_bias rows)``: copies of this worker's user rows."""
    u_weight, _, u_bias, _ = tables.tables[0]
    return data.u_lo, u_weight.copy(), u_bias.copy()


def all_rows(tables: WorkerTables, data: OwnerData) -> tuple:
    """``(first user code, users, items)``: every buffer's rows (weights and moments), copied.

    ``users`` holds one ``(n_users, k + 1)`` array per buffer, ``items`` a list of ``(group, arrays)``
    for the slots, one ``(rows, k + 1)`` array per buffer: what :func:`tables_from_rows` takes back.
    """
    users = tuple(np.column_stack([t[0], t[2]]) for t in tables.tables)
    items = [
        (d, tuple(np.column_stack([t[1][rows], t[3][rows]]) for t in tables.tables))
        for rows, d in zip(_slot_rows(data, tables.slots), tables.slots)
    ]
    return data.u_lo, users, items


def stratum_losses(tables: WorkerTables) -> np.ndarray:
    """The step losses of the last stratum this worker trained (a job with ``keep_losses``)."""
    return np.empty(0, dtype=np.float64) if tables.losses is None else tables.losses


def diverged(tables: WorkerTables) -> bool:
    """Whether a step loss on this worker has not been finite (the next stratum halts every worker)."""
    return tables.diverged


def epoch_loss(tables: WorkerTables) -> tuple:
    """``(sum of step losses, steps, diverged)`` of the epoch so far on this worker."""
    return tables.loss, tables.count, tables.diverged


def squared_error(tables: WorkerTables, data: OwnerData, n_items: int, range_args: tuple, *items: list) -> tuple:
    """``(sum of squared errors, rows)`` of this worker's validation rows; ``items``: every worker's item_rows."""
    k = tables.n_factors
    i_weight = np.zeros((n_items, k), dtype=tables.buffers[0].dtype)
    i_bias = np.zeros(n_items, dtype=tables.buffers[0].dtype)
    for held in items:
        for d, rows in held:
            codes = slice(int(data.item_start[d]), int(data.item_start[d + 1]))
            i_weight[codes], i_bias[codes] = rows[:, :k], rows[:, k]
    u_weight, _, u_bias, _ = tables.tables[0]
    n = data.valid_ratings.shape[0]
    sse = adapter.squared_error(
        u_weight, i_weight, u_bias, i_bias, data.valid_users, data.valid_items, data.valid_ratings, range_args
    )
    return sse, n
