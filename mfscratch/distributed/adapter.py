"""The one place the distributed package calls the single-machine code: kernels, groups, schedules, seeds.

Everything the workers and the client of a distributed fit compute with comes through here, so
that a change of the kernels' or backends' names is one edit in this module. Nothing here imports
Dask: these are plain NumPy/Numba calls that run on a worker (or in a test) as they are.

The names mirror what the local parallel backend does for per-rating SGD on stratified blocks
(``backends.ParallelBackend``): balanced groups of user and item codes, a stratum-major block
layout, each block shuffled from one seed per epoch (``shuffle_blocks``), and the per-rating
kernel run over a run of blocks. The sparse (lazy) kernel trains the lazy Adam and SGD runs.
"""

from __future__ import annotations

import numpy as np

from .. import backends, schedule
from ..kernels import cpu
from ..kernels.records import BlockLayout, EpochOut, Groups, Moments, Ratings, Shape, Steps, Tables, YRange, hyper_of

__all__ = [
    "EPOCH_SEED_BOUND",
    "groups_from_counts",
    "default_groups",
    "uses_per_rating_kernel",
    "fit_generators",
    "epoch_seed",
    "init_rows",
    "split_tables",
    "block_layout",
    "stratum_order",
    "train_per_rating",
    "train_lazy",
    "squared_error",
    "steps_schedule",
]

#: Each epoch's shuffle seed is drawn as ``rng.integers(EPOCH_SEED_BOUND)``, as the parallel backend draws it.
EPOCH_SEED_BOUND = 2**63


def groups_from_counts(counts: np.ndarray, n_groups: int) -> np.ndarray:
    """``group[code]``: the balanced contiguous groups of ``cpu.balanced_groups``, from per-code counts.

    ``cpu.balanced_groups`` counts the codes of the ratings itself; on a cluster the ratings are
    spread over the workers and only their counts are gathered, so the same rule is applied to the
    counts: the group of a code's middle rating, ``(seen + count // 2) * n_groups // total``.
    Equal to ``cpu.balanced_groups(codes, len(counts), n_groups)`` for any ``codes`` with these counts.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    seen = np.cumsum(counts) - counts
    group = (seen + counts // 2) * n_groups // max(total, 1)
    return np.minimum(group, n_groups - 1).astype(np.int32)


def default_groups(n_users: int, n_items: int, n_factors: int, n_workers: int, itemsize: int = 4) -> int:
    """The user (and item) groups the local parallel backend would use with ``n_workers`` threads.

    ``n_workers`` for tables that fit in cache; more, a multiple of ``n_workers``, once the tables
    outgrow :data:`backends.PER_RATING_GROUP_BYTES`, so that one block's rows stay in cache.
    """
    table_bytes = (n_users + n_items) * (n_factors + 1) * itemsize
    return backends.per_rating_groups(table_bytes, n_workers)


def uses_per_rating_kernel(opt, bs: int) -> bool:
    """Whether the fit runs the fused per-rating SGD kernel (SGD without momentum, ``bs = 1``)."""
    return backends.mode_of(True, opt, bs) == "per-rating"


def fit_generators(seed: int | None) -> tuple[np.random.SeedSequence, np.random.Generator]:
    """``(init_seeds, rng)`` as ``collab_learner`` splits its ``seed``: weights from the first child,
    epoch orders from a generator on the second."""
    init_seeds, order_seeds = np.random.SeedSequence(seed).spawn(2)
    return init_seeds, np.random.default_rng(order_seeds)


def epoch_seed(rng: np.random.Generator) -> int:
    """One epoch's block-shuffle seed, drawn as ``ParallelBackend.epoch_order`` draws it."""
    return int(rng.integers(EPOCH_SEED_BOUND))


#: Initial weights are drawn in chunks of this many rows, each chunk from its own stream.
INIT_CHUNK_ROWS = 1 << 14


def init_rows(
    seeds: np.random.SeedSequence, table: int, start: int, stop: int, width: int, dtype=np.float32
) -> np.ndarray:
    """Rows ``start..stop-1`` of table ``table`` (0 ``u_weight``, 1 ``i_weight``, 2 ``u_bias``, 3 ``i_bias``).

    fastai's ``trunc_normal_(std=0.01)`` as ``model.init_params`` draws it, ``fmod(N(0, 1), 2) * 0.01``,
    but from one stream per chunk of :data:`INIT_CHUNK_ROWS` rows (``seeds`` spawned by table and
    chunk), so that each worker draws its own rows without drawing the whole table: the values do
    not depend on the number of workers or groups.
    """
    out = np.empty((stop - start, width), dtype=dtype)
    for chunk in range(start // INIT_CHUNK_ROWS, -(-stop // INIT_CHUNK_ROWS)):
        first = chunk * INIT_CHUNK_ROWS
        stream = np.random.SeedSequence(seeds.entropy, spawn_key=(*seeds.spawn_key, table, chunk))
        values = np.fmod(np.random.default_rng(stream).standard_normal(INIT_CHUNK_ROWS * width), 2.0) * 0.01
        values = values.reshape(INIT_CHUNK_ROWS, width)
        lo, hi = max(start, first), min(stop, first + INIT_CHUNK_ROWS)
        out[lo - start : hi - start] = values[lo - first : hi - first]
    return out


def split_tables(flat: np.ndarray, n_users: int, n_items: int, n_factors: int) -> tuple:
    """``(u_weight, i_weight, u_bias, i_bias)``: views of a flat buffer in the kernels' layout (``cpu.split_flat``)."""
    return tuple(cpu.split_flat(flat, Shape(n_users, n_items, n_factors)))


def block_layout(users, items, user_group, item_group, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """``(canonical, block_start)``: these ratings' rows sorted by block, stably, and where each block starts.

    The blocks and their stratum-major positions are those of ``cpu.block_index``: block ``(c, d)``
    is at ``t * n_groups + c`` for ``d = (c + t) % n_groups``. ``block_start`` has an entry for
    every position (``n_groups**2 + 1``); blocks without rows here are empty.
    """
    block = np.empty(users.shape[0], dtype=np.int32)
    data = Ratings(users, items, np.empty(0, dtype=np.float32))
    cpu.block_index(data, Groups(user_group, item_group, n_groups), block)
    canonical = np.empty(users.shape[0], dtype=np.int64)
    block_start = cpu.block_layout(np.empty(0, dtype=np.int64), block, n_groups * n_groups, canonical)
    return canonical, block_start


def stratum_order(block_start: np.ndarray, first: int, stop: int, seed: int) -> np.ndarray:
    """Blocks ``first..stop-1`` of a layout, each shuffled, as positions from ``block_start[first]``.

    Each block is shuffled exactly as ``cpu.shuffle_blocks`` shuffles block ``p`` of the whole
    layout from ``seed`` (its own splitmix64 stream, started from ``seed`` and ``p``), so a worker
    that holds only some blocks orders them as the local backend orders those blocks.
    """
    offset = int(block_start[first])
    order = np.arange(int(block_start[stop]) - offset, dtype=np.int64)
    local = np.clip(block_start - offset, 0, order.shape[0])
    local[: first + 1] = 0
    local[stop:] = order.shape[0]
    cpu.shuffle_blocks(order, local, int(seed))
    return order


def train_per_rating(
    params, n_users, n_items, n_factors, users, items, ratings, order, lrs, wd, decouple_wd, range_args
) -> np.ndarray:
    """Per-rating SGD over ``order`` (one run of blocks, serially); returns each step's squared error.

    ``cpu.train_epoch_per_rating`` with one group: the rows of ``order`` in turn, rating ``s``
    at learning rate ``lrs[s]``. The returned array is cut after the first non-finite loss.
    """
    losses = np.empty(order.shape[0], dtype=np.float64)
    layout = BlockLayout(order, np.array([0, order.shape[0]], dtype=np.int64), 1)
    lrs = np.ascontiguousarray(lrs, dtype=np.float64)
    out = EpochOut(losses, np.zeros(1, dtype=np.int64))
    # plain SGD: decoupled and L2 weight decay are the same update (kernels.cpu.per_rating)
    done = cpu.train_epoch_per_rating(
        params,
        Shape(n_users, n_items, n_factors),
        Ratings(users, items, ratings),
        layout,
        lrs,
        float(wd),
        YRange(*range_args),
        out,
    )
    return losses[:done]


def train_lazy(
    buffers, n_users, n_items, n_factors, users, items, ratings, order, bs, lrs, moms, step0, opt, range_args
) -> np.ndarray:
    """Sparse (lazy) Adam or SGD over ``order`` in batches of ``bs`` (``cpu.train_epoch_sparse``, serially).

    ``buffers`` is ``(params, exp_avg, exp_avg_sq)``, one layout; ``step0`` counts the steps before
    the first batch (Adam's bias correction). Returns the per-batch losses, cut after a non-finite one.
    """
    params, exp_avg, exp_avg_sq = buffers
    losses = np.empty(order.shape[0] // bs, dtype=np.float64)
    steps = Steps(
        order,
        int(bs),
        np.ascontiguousarray(lrs, dtype=np.float64),
        np.ascontiguousarray(moms, dtype=np.float64),
        int(step0),
    )
    hyper = hyper_of(opt)
    done = cpu.train_epoch_sparse(
        params,
        Moments(exp_avg, exp_avg_sq),
        Shape(n_users, n_items, n_factors),
        Ratings(users, items, ratings),
        steps,
        hyper,
        YRange(*range_args),
        EpochOut(losses, np.zeros(1, dtype=np.int64)),
        1,
    )
    return losses[:done]


def squared_error(u_weight, i_weight, u_bias, i_bias, users, items, ratings, range_args) -> float:
    """The sum of squared errors of these ratings (``cpu.evaluate_mse`` times their number)."""
    n = users.shape[0]
    if n == 0:
        return 0.0
    tables = Tables(u_weight, i_weight, u_bias, i_bias)
    return float(cpu.evaluate_mse(tables, Ratings(users, items, ratings), YRange(*range_args))) * n


def steps_schedule(spec: tuple, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Steps ``start..stop-1`` of a fit's schedule, ``(lrs, moms)``, as the learner makes them.

    ``spec`` is ``("one_cycle", total, lr_max, div, div_final, pct_start, moms)`` or
    ``("constant", total, lr, mom)``; a slice holds the same numbers as the same steps of the whole.
    ``("given", first, lrs, moms)`` holds the values of steps ``first..`` as the learner made them.
    """
    if spec[0] == "given":
        _, first, lrs, moms = spec
        return lrs[start - first : stop - first], moms[start - first : stop - first]
    kind, total, *args = spec
    if kind == "one_cycle":
        lr_max, div, div_final, pct_start, moms = args
        return schedule.one_cycle(total, lr_max, div, div_final, pct_start, moms, start, stop)
    lr, mom = args
    return schedule.constant(total, lr, mom, start, stop)
