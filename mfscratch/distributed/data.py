"""Ratings that never sit on one machine: many files read on the workers, encoded and split there.

:func:`read_ratings` reads a glob, a folder or a list of CSV/TSV/``::``/Parquet files, one task per
file on the workers, each through :func:`mfscratch.readers.read_ratings` (so a file here follows the
same dialect, column and error rules as a local file). Then, on the cluster:

* **vocabularies**: each file's distinct user and item ids, merged in a tree of tasks into one
  sorted array per side; codes are ``1 + position`` in it, with ``#na#`` at 0: fastai's sorted
  vocabulary, the codes a local run on the concatenated files gives;
* **validation split**: per file, from the seed and the file's position in the (sorted) list: the
  first ``int(valid_pct * n)`` rows of a permutation of the file's rows are validation;
* **counts**: each code's training ratings, summed in a tree of tasks (for the balanced groups).

The client keeps futures, a few numbers (sizes, the ratings' range) and the file names; the ratings
stay on the workers. :class:`ClusterRatings` holds them; ``classes()`` brings the vocabularies to the
client when asked (to save a model).
"""

from __future__ import annotations

import glob as globlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import readers
from ..data import Vocab
from ..errors import ConfigError, DataError

__all__ = [
    "RATINGS_SUFFIXES",
    "Partition",
    "ClusterRatings",
    "list_sources",
    "read_ratings",
    "scatter_ratings",
    "tree_reduce",
    "gather",
]

#: The files a folder is searched for (a glob or a list may name any file).
RATINGS_SUFFIXES = (".csv", ".tsv", ".txt", ".dat", ".data", ".parquet", ".pq")


def list_sources(source) -> list[str]:
    """The files of ``source``, sorted: a folder (its ratings files), a glob pattern, a file, or a list of those."""
    if isinstance(source, (list, tuple)):
        return [f for s in source for f in list_sources(s)]
    text = os.fspath(source)
    path = Path(text)
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in RATINGS_SUFFIXES)
        if not files:
            raise DataError(f"folder {path} holds no ratings files ({', '.join(RATINGS_SUFFIXES)}); check the path")
        return files
    if globlib.has_magic(text):
        files = sorted(f for f in globlib.glob(text) if Path(f).is_file())
        if not files:
            raise DataError(f"no file matches {text!r}; check the pattern")
        return files
    if not path.is_file():
        raise DataError(f"ratings file {path} does not exist; check the path")
    return [text]


@dataclass
class RawPartition:
    """One file as read on a worker: its ids as they are and its ratings as float32."""

    source: str
    names: tuple  # (user, item, rating) column names
    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray


@dataclass
class Partition:
    """One file encoded: int32 codes, float32 ratings and the validation rows (a boolean mask)."""

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    valid: np.ndarray


def _read(source: str, columns: tuple, header, encoding: str | None, sep: str | None = None) -> RawPartition:
    """Read one file with the project's reader; the ids must be present and the ratings finite numbers."""
    user_col, item_col, rating_col = columns
    table = readers.read_ratings(source, user_col, item_col, rating_col, header=header, encoding=encoding, sep=sep)
    df = table.df
    y = pd.to_numeric(df[table.rating], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(over="ignore"):
        bad = ~np.isfinite(y.astype(np.float32))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{source}: rating column {table.rating!r} has {int(bad.sum())} value(s) that are not finite numbers "
            f"(first: row {first}, {df[table.rating].iloc[first]!r}); drop or fix those rows"
        )
    ids = []
    for role, name in (("user", table.user), ("item", table.item)):
        missing = df[name].isna().to_numpy()
        if missing.any():
            raise DataError(
                f"{source}: {role} column {name!r} has {int(missing.sum())} missing value(s) (first at row "
                f"{int(np.flatnonzero(missing)[0])}); drop those rows or fill them"
            )
        ids.append(df[name].to_numpy())
    return RawPartition(source, (table.user, table.item, table.rating), ids[0], ids[1], y.astype(np.float32))


@dataclass
class Distinct:
    """Sorted distinct ids of one side, with the kind of their values and the file they came from."""

    values: np.ndarray
    kind: str
    source: str


def _kind(values: np.ndarray) -> str:
    if values.dtype.kind in "iu":
        return "integer"
    if values.dtype.kind == "f":
        return "number"
    return "text" if all(isinstance(v, str) for v in values[:1000]) else "mixed"


def _distinct(raw: RawPartition, side: int) -> Distinct:
    values = raw.users if side == 0 else raw.items
    role = "user" if side == 0 else "item"
    try:
        uniques = np.unique(values)
    except TypeError:
        raise DataError(
            f"{raw.source}: {role} column {raw.names[side]!r} mixes kinds of ids (numbers and text); "
            "write it with one kind in every file"
        ) from None
    return Distinct(uniques, _kind(uniques), raw.source)


def _merge_distinct(a: Distinct, b: Distinct) -> Distinct:
    if a.kind != b.kind:
        raise DataError(
            f"the ids of {a.source} are {a.kind}s but those of {b.source} are {b.kind}s: one id would become "
            "two users or items; write the id columns with one kind in every file"
        )
    return Distinct(np.union1d(a.values, b.values), a.kind, a.source)


def _encode_split(raw: RawPartition, users: Distinct, items: Distinct, index: int, valid_pct: float, seeds):
    codes = [
        (pd.Index(vocab.values).get_indexer(values) + 1).astype(np.int32)
        for values, vocab in ((raw.users, users), (raw.items, items))
    ]
    n = raw.ratings.shape[0]
    stream = np.random.SeedSequence(seeds.entropy, spawn_key=(*seeds.spawn_key, index))
    valid = np.zeros(n, dtype=bool)
    valid[np.random.default_rng(stream).permutation(n)[: int(valid_pct * n)]] = True
    return Partition(codes[0], codes[1], raw.ratings, valid)


def _counts(part: Partition, n_users: int, n_items: int) -> tuple:
    """Training ratings per user code and per item code, the training and validation row counts, min and max."""
    train = ~part.valid
    return (
        np.bincount(part.users[train], minlength=n_users),
        np.bincount(part.items[train], minlength=n_items),
        int(train.sum()),
        int(part.valid.sum()),
        float(part.ratings.min()) if part.ratings.size else np.inf,
        float(part.ratings.max()) if part.ratings.size else -np.inf,
    )


def _add_counts(a: tuple, b: tuple) -> tuple:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], min(a[4], b[4]), max(a[5], b[5]))


def gather(client, futures, timeout: float, what: str):
    """``client.gather(futures)`` once they are done (a task's error is raised here), waiting at most ``timeout`` s."""
    from distributed import wait

    done = wait(futures, timeout=timeout)
    if done.not_done:
        raise TimeoutError(f"{what} did not finish on the cluster within {timeout:g} s (timeout=)")
    return client.gather(futures)


def tree_reduce(client, combine, futures: list, name: str):
    """``combine`` over ``futures`` in a binary tree of tasks (left before right); one future."""
    level, depth = list(futures), 0
    while len(level) > 1:
        pairs = [level[i : i + 2] for i in range(0, len(level), 2)]
        level = [
            client.submit(combine, *pair, key=f"{name}-{depth}-{i}") if len(pair) == 2 else pair[0]
            for i, pair in enumerate(pairs)
        ]
        depth += 1
    return level[0]


class ClusterRatings:
    """Ratings read, encoded and split on a Dask cluster; see :func:`read_ratings`.

    ``partitions``: one future per file (a :class:`Partition`); ``user_vocab``, ``item_vocab``:
    futures of the sorted distinct ids; ``counts``: a future of the training counts per code.
    ``n_users``, ``n_items`` (``#na#`` included), ``n_train``, ``n_valid``, ``rating_range`` and
    the column names are on the client.
    """

    def __init__(
        self, client, sources, partitions, user_vocab, item_vocab, counts, names, sizes, rating_range, timeout
    ):
        self.client, self.sources, self.partitions = client, sources, partitions
        self.user_vocab, self.item_vocab, self.counts = user_vocab, item_vocab, counts
        self.user_name, self.item_name, self.rating_name = names
        self.n_users, self.n_items, self.n_train, self.n_valid = sizes
        self.rating_range = rating_range
        self.timeout = timeout

    def classes(self) -> dict:
        """The vocabularies on the client, ``{user_name: Vocab, item_name: Vocab}``, as ``dls.classes``."""
        users, items = gather(self.client, [self.user_vocab, self.item_vocab], self.timeout, "the vocabularies")
        return {
            self.user_name: Vocab(["#na#"] + users.values.tolist()),
            self.item_name: Vocab(["#na#"] + items.values.tolist()),
        }

    def default_y_range(self) -> tuple[float, float]:
        """The output range a local run picks for these ratings (``readers.default_y_range``)."""
        return readers.default_y_range(np.array(self.rating_range))

    def __repr__(self) -> str:
        return (
            f"ClusterRatings({len(self.sources)} files, {self.n_train} train / {self.n_valid} valid ratings, "
            f"{self.n_users} {self.user_name}s, {self.n_items} {self.item_name}s)"
        )


def read_ratings(
    client,
    source,
    user_col=0,
    item_col=1,
    rating_col=2,
    header: bool | None = None,
    encoding: str | None = None,
    valid_pct: float = 0.2,
    seed: int | None = None,
    timeout: float = 600.0,
    sep: str | None = None,
) -> ClusterRatings:
    """Read ratings files on the workers of ``client`` (a ``distributed.Client``); see the module docstring.

    ``source``: a folder, a glob (``"ratings/part-*.csv"``), a file or a list; the files must be
    readable from the workers under the same names. Columns, ``header``, ``encoding`` and ``sep`` as for
    a local file (``None``: detected in each file).
    A problem in a file raises its one-line :class:`~mfscratch.errors.DataError` here; ``timeout``
    bounds each wait for the cluster, in seconds.
    """
    from ..validate import check_valid_pct

    valid_pct = check_valid_pct(valid_pct)
    sources = list_sources(source)
    seeds = np.random.SeedSequence(seed)  # seed None: fresh entropy, drawn once here for every file
    token = uuid.uuid4().hex[:12]  # this read's task keys: never shared with another read
    columns = (user_col, item_col, rating_col)
    raws = [
        client.submit(_read, s, columns, header, encoding, sep, key=f"mf-read-{token}-{i}")
        for i, s in enumerate(sources)
    ]
    distinct = [
        tree_reduce(
            client,
            _merge_distinct,
            [client.submit(_distinct, r, side, key=f"mf-distinct{side}-{token}-{i}") for i, r in enumerate(raws)],
            f"mf-vocab{side}-{token}",
        )
        for side in (0, 1)
    ]
    sizes = gather(client, [client.submit(lambda d: d.values.shape[0] + 1, d) for d in distinct], timeout, "reading")
    parts = [
        client.submit(_encode_split, r, *distinct, i, valid_pct, seeds, key=f"mf-part-{token}-{i}")
        for i, r in enumerate(raws)
    ]
    counts = tree_reduce(
        client,
        _add_counts,
        [client.submit(_counts, p, *sizes, key=f"mf-count-{token}-{i}") for i, p in enumerate(parts)],
        f"mf-counts-{token}",
    )
    n_users, n_items = sizes
    summary = [client.submit(lambda c: c[2:], counts), client.submit(lambda r: r.names, raws[0])]
    (n_train, n_valid, lo, hi), names = gather(client, summary, timeout, "counting")
    if n_users < 3 or n_items < 3:  # #na# and at least two real ids on each side
        raise DataError(
            f"the ratings hold {n_users - 1} distinct user(s) and {n_items - 1} item(s); collaborative filtering "
            "needs at least 2 of each: check the column names"
        )
    if n_train < 1:
        raise ConfigError(f"valid_pct={valid_pct} leaves no training rows; lower valid_pct or give more ratings")
    user_vocab, item_vocab = distinct
    sizes = (n_users, n_items, n_train, n_valid)
    return ClusterRatings(client, sources, parts, user_vocab, item_vocab, counts, names, sizes, (lo, hi), timeout)


def scatter_ratings(client, users, items, ratings, n_users: int, n_items: int, workers: list, timeout: float = 600.0):
    """Training ratings already encoded on the client, sent to the cluster as :class:`ClusterRatings`.

    One partition per worker (consecutive stretches of the rows, in order), no validation rows and no
    vocabularies: what the ``dask`` backend trains a learner's loaders on. The rows pass through the
    client once; data too large for one machine is read on the workers (:func:`read_ratings`).
    """
    n = int(users.shape[0])
    parts = []  # hash=False: fresh keys, never those of equal rows another fit is releasing
    for w, rows in enumerate(np.array_split(np.arange(n), len(workers))):
        part = Partition(users[rows], items[rows], ratings[rows], np.zeros(rows.shape[0], dtype=bool))
        parts.append(client.scatter([part], workers=[workers[w]], hash=False)[0])
    counts = (
        np.bincount(users, minlength=n_users),
        np.bincount(items, minlength=n_items),
        n,
        0,
        float(ratings.min()) if n else np.inf,
        float(ratings.max()) if n else -np.inf,
    )
    counts_future = client.scatter([counts], hash=False)[0]
    names = ("user", "item", "rating")
    sizes = (int(n_users), int(n_items), n, 0)
    return ClusterRatings(client, ["<client>"], parts, None, None, counts_future, names, sizes, counts[4:], timeout)
