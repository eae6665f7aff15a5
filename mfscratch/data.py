"""Datasets and data loaders: MovieLens download (checksum-verified, cached) and ``CollabDataLoaders``.

What ``CollabDataLoaders.from_df`` does, following fastai (docs/math.md, §8):

* split: a random permutation of the rows; the first ``int(valid_pct * n)`` are validation;
* encoding: each of user and item gets the vocabulary ``['#na#'] + sorted(unique values)``,
  so code 0 means "unknown" and known values get ``1..K``;
* targets: the rating as float32.

The batches themselves are drawn by the learner (a new permutation of the training rows every
epoch, last partial batch dropped), so the loaders only hold arrays.
"""

from __future__ import annotations

import ctypes
import hashlib
import http.client
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import validate
from .errors import DataError

__all__ = ["URLs", "DATASETS", "Dataset", "data_dir", "untar_data", "Vocab", "CollabDataLoaders"]

_BASE = "https://files.grouplens.org/datasets/movielens/"


class URLs:
    """Download addresses, named as in fastai (``URLs.ML_100k``)."""

    ML_100k = _BASE + "ml-100k.zip"
    ML_1m = _BASE + "ml-1m.zip"
    ML_10m = _BASE + "ml-10m.zip"
    ML_20m = _BASE + "ml-20m.zip"
    ML_25m = _BASE + "ml-25m.zip"
    ML_latest_small = _BASE + "ml-latest-small.zip"


@dataclass(frozen=True)
class Dataset:
    """One MovieLens archive: where it lives, its checksum, and the folder and ratings file inside."""

    name: str
    url: str
    md5: str | None  # None where GroupLens publishes no fixed sum (ml-latest-small changes over time)
    folder: str  # the top-level folder inside the zip
    ratings_file: str  # path of the ratings inside that folder: its presence means "already here"


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in [
        Dataset("ml-100k", URLs.ML_100k, "0e33842e24a9c977be4e0107933c0723", "ml-100k", "u.data"),
        Dataset("ml-1m", URLs.ML_1m, "c4d9eecfca2ab87c1945afe126590906", "ml-1m", "ratings.dat"),
        Dataset("ml-10m", URLs.ML_10m, "ce571fd55effeba0271552578f2648bd", "ml-10M100K", "ratings.dat"),
        Dataset("ml-20m", URLs.ML_20m, "cd245b17a1ae2cc31bb14903e1204af3", "ml-20m", "ratings.csv"),
        Dataset("ml-25m", URLs.ML_25m, "6b51fb2759a8657d3bfcbfc42b592ada", "ml-25m", "ratings.csv"),
        Dataset("ml-latest-small", URLs.ML_latest_small, None, "ml-latest-small", "ratings.csv"),
    ]
}


def data_dir() -> Path:
    """The cache folder: ``$MFSCRATCH_DATA`` if set, else ``$XDG_CACHE_HOME/mfscratch`` (``~/.cache/mfscratch``)."""
    env = os.environ.get("MFSCRATCH_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "mfscratch"


def _dataset_for(url_or_name: str) -> Dataset:
    for d in DATASETS.values():
        if url_or_name in (d.url, d.name):
            return d
    known = ", ".join(DATASETS)
    raise DataError(f"unknown dataset {url_or_name!r}: use one of {known} (or URLs.ML_100k and friends)")


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _PartialDownload(Exception):
    """The connection opened but the transfer broke off or came up short: worth fetching again."""


def _download(url: str, dest: Path, timeout: float = 30.0) -> None:
    """Stream ``url`` to a temporary file beside ``dest`` and rename it into place when complete.

    Failing to connect raises the ``urllib`` error as it is; a transfer that breaks off, or delivers
    fewer bytes than its ``Content-Length``, raises :class:`_PartialDownload`. Either way no file
    is left behind.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            try:
                shutil.copyfileobj(resp, out, length=1 << 20)
            except (http.client.HTTPException, OSError) as e:
                raise _PartialDownload(f"transfer broke off: {type(e).__name__}") from e
            expected = resp.headers.get("Content-Length") if getattr(resp, "headers", None) else None
            if expected is not None and expected.isdigit() and out.tell() != int(expected):
                raise _PartialDownload(f"got {out.tell()} of {expected} bytes")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _archive_problem(archive: Path, md5: str | None) -> str | None:
    """Why ``archive`` cannot be used (wrong MD5, not a zip, a corrupted member), or ``None``."""
    if md5 is not None:
        got = _md5(archive)
        if got != md5:
            return f"MD5 {got}, expected {md5}"
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()  # reads every member and checks its CRC
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"not a readable zip ({e})"
    return f"corrupted member {bad!r}" if bad is not None else None


def _safe_extract(archive: Path, target: Path) -> None:
    """Extract a zip into ``target``, refusing any member whose path would leave it."""
    root = target.resolve()
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            out = (root / member.filename).resolve()
            if out != root and root not in out.parents:
                archive.unlink(missing_ok=True)  # never reuse it: a refetch must come from the source
                raise DataError(
                    f"refusing to extract {archive.name}: member {member.filename!r} would be "
                    "written outside the target folder; the archive was deleted: check where "
                    "it comes from before retrying"
                )
        zf.extractall(root)


def untar_data(url: str = URLs.ML_100k, force_download: bool = False) -> Path:
    """Return the folder of a MovieLens dataset, downloading and checking it first if needed.

    The data lives under :func:`data_dir` (``$MFSCRATCH_DATA`` overrides it). When that folder
    already holds the ratings file nothing is downloaded. Otherwise the zip is fetched from
    GroupLens to a temporary name, its MD5 is checked against the published sum and every member's
    CRC is checked (a transfer that broke off, a mismatch or a corrupted zip is fetched once more
    before giving up), it is extracted into a temporary folder (no member may leave it) and renamed
    into place, and the zip is removed.
    """
    ds = _dataset_for(url)
    root = data_dir()
    folder = root / ds.folder
    if (folder / ds.ratings_file).is_file() and not force_download:
        return folder
    archive = root / f"{ds.name}.zip"
    problem = None
    for attempt in range(2):  # a cached or fresh archive that fails its checks is fetched once more
        if attempt > 0 or not archive.is_file():
            try:
                _download(ds.url, archive)
            except _PartialDownload as e:
                problem = str(e)
                continue
            except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as e:
                reason = getattr(e, "reason", e)
                raise DataError(
                    f"could not download {ds.url} ({reason}); put the unzipped '{ds.folder}' folder at "
                    f"{folder} or set MFSCRATCH_DATA to a folder that holds '{ds.folder}/'"
                ) from None
        problem = _archive_problem(archive, ds.md5)
        if problem is None:
            break
        archive.unlink(missing_ok=True)
    else:
        raise DataError(
            f"{ds.url} was fetched twice and is still unusable ({problem}); check your connection "
            f"or proxy and try again, or put the unzipped '{ds.folder}' folder at {folder}"
        )
    tmp = Path(tempfile.mkdtemp(prefix=f".{ds.name}.", dir=root))
    try:
        _safe_extract(archive, tmp)
        if not (tmp / ds.folder / ds.ratings_file).is_file():
            raise DataError(f"{archive} does not contain {ds.folder}/{ds.ratings_file}; delete it and retry")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp / ds.folder, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    archive.unlink(missing_ok=True)
    return folder


class _ZeroDefault(dict):
    """``o2i``: unknown values map to code 0 (``#na#``), as fastai's ``defaultdict(int)`` does."""

    def __missing__(self, key):
        return 0


class Vocab(list):
    """fastai's ``CategoryMap``: ``['#na#'] + sorted(values)``, with ``o2i`` from value to code."""

    def __init__(self, values):
        super().__init__(values)
        self.o2i = _ZeroDefault(zip(self, range(len(self))))

    def __repr__(self) -> str:
        head = ", ".join(repr(v) for v in self[:5])
        return f"Vocab(n={len(self)}: [{head}{', ...' if len(self) > 5 else ''}])"


#: Integer ids spanning at most this many values a row (or 2**20 values) are encoded through a table of
#: the span, 4 bytes a value (``kernels.pairs.dense_codes``), rather than ``pd.factorize``: the table is
#: then no bigger than the codes themselves.
_DENSE_SPAN_PER_ROW = 1


def _encode(col: pd.Series, name: str) -> tuple[np.ndarray, Vocab]:
    """Codes ``1..K`` in sorted order of the values (0 for missing) and the vocabulary."""
    if col.dtype in (np.int64, np.int32) and len(col):
        values = col.to_numpy()
        low, high = int(values.min()), int(values.max())
        if high - low < max(1 << 20, _DENSE_SPAN_PER_ROW * len(values)):
            from .kernels.pairs import dense_codes

            codes = np.empty(len(values), dtype=np.int32)
            distinct = dense_codes(values, low, high - low + 1, codes)
            return codes, Vocab(["#na#"] + distinct.tolist())
    try:
        codes, uniques = pd.factorize(col, sort=True, use_na_sentinel=True)
    except TypeError:
        raise DataError(
            f"column {name!r} mixes types that cannot be sorted (e.g. numbers and text); "
            "convert it to one type first (for example .astype(str))"
        ) from None
    values = uniques.tolist()
    return (codes + 1).astype(np.int32), Vocab(["#na#"] + values)


def _give_back_freed_memory() -> None:
    """Return the C heap's free memory to the system (glibc's ``malloc_trim(0)``; nothing elsewhere).

    Reading and encoding a large table free many blocks of a few MB, some made on the reader's threads:
    glibc keeps such chunks in its arenas (below its mmap threshold, which grows to 32 MB after the first
    large free) for reuse, about 30 MB at 25M rows, that the training never asks for again. The last step of
    a consuming ``from_df``, where that memory is known to be garbage; a no-op where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        return
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)


class CollabDataLoaders:
    """Encoded ratings split into training and validation arrays (the ``dls`` of the fastai recipe).

    Attributes: ``classes`` (``{user_name: Vocab, item_name: Vocab}``), ``n_users``, ``n_items``
    (vocabulary sizes, ``#na#`` included), ``bs``, and the int32/float32 arrays ``train_users``,
    ``train_items``, ``train_ratings``, ``valid_users``, ``valid_items``, ``valid_ratings``.
    """

    def __init__(
        self,
        users,
        items,
        ratings,
        train_idx,
        valid_idx,
        classes,
        user_name="user",
        item_name="item",
        rating_name="rating",
        bs=64,
        seed=None,
    ):
        self._set_names(classes, user_name, item_name, rating_name, bs, seed)
        self.train_users, self.train_items, self.train_ratings = users[train_idx], items[train_idx], ratings[train_idx]
        self.valid_users, self.valid_items, self.valid_ratings = users[valid_idx], items[valid_idx], ratings[valid_idx]

    def _set_names(self, classes, user_name, item_name, rating_name, bs, seed) -> None:
        self.user_name, self.item_name, self.rating_name = user_name, item_name, rating_name
        self.classes = classes
        self.bs = int(bs)
        self.seed = seed
        self.n_users = len(classes[user_name])
        self.n_items = len(classes[item_name])
        #: Seconds ``from_df`` spent on each phase (``check``, ``encode``, ``split``); empty when not made by it.
        self.phase_seconds: dict[str, float] = {}
        #: rows that repeat an earlier (user, item) pair, where the loaders counted them (``from_df``):
        #: 0 means no validation pair is also a training pair; ``None``: not counted
        self.repeated_pairs: int | None = None

    @classmethod
    def _split(
        cls,
        columns: list[np.ndarray],
        seed: int | None,
        n_valid: int,
        classes: dict,
        names: tuple,
        bs: int,
    ) -> CollabDataLoaders:
        """Loaders whose validation rows are ``rng.permutation(n)[:n_valid]`` of ``columns`` (users, items,
        ratings) and whose training rows are the rest, in that order (``rng = np.random.default_rng(seed)``).

        The permutation is drawn as ``rng.shuffle`` of an ``int32`` range (the same permutation as
        ``rng.permutation(n)``, half the bytes), compiled with its swaps prefetched (``kernels.shuffle``:
        the same permutation bit for bit). Each column is gathered in one compiled parallel pass
        (``split_column``) into one array, training rows first; the training and validation arrays are the
        two views of it, so no row is held twice. Each column is then taken out of ``columns``: a caller
        that holds no other reference frees each full column as soon as its gathered copy exists.
        """
        from .kernels.pairs import split_column
        from .kernels.shuffle import shuffle

        n = len(columns[0])
        perm = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
        shuffle(np.random.default_rng(seed), perm)
        dls = cls.__new__(cls)
        user_name, item_name, rating_name = names
        dls._set_names(classes, user_name, item_name, rating_name, bs, seed)
        train, valid = [], []
        while columns:
            values = columns.pop(0)
            gathered = np.empty(n, dtype=values.dtype)
            split_column(values, perm, n_valid, gathered)
            del values
            train.append(gathered[: n - n_valid])
            valid.append(gathered[n - n_valid :])
        dls.train_users, dls.train_items, dls.train_ratings = train
        dls.valid_users, dls.valid_items, dls.valid_ratings = valid
        return dls

    @classmethod
    def from_df(
        cls,
        ratings: pd.DataFrame,
        valid_pct: float = 0.2,
        user_name=None,
        item_name=None,
        rating_name=None,
        seed: int | None = None,
        bs: int = 64,
        consume: bool = False,
        **kwargs,
    ) -> CollabDataLoaders:
        """fastai's ``CollabDataLoaders.from_df``: columns 0, 1, 2 are user, item, rating unless named.

        The checks run on the way (``validate``): the ratings, then each id column before and after
        its encoding, then the repeated pairs on the codes. ``consume=True`` deletes each of the
        three columns from ``ratings`` once it is encoded, so that a table read only to be trained
        on (the command line's) is not held twice. ``phase_seconds`` of the result holds the
        seconds of the ``check``, ``encode`` and ``split`` phases.
        """
        user_name, item_name, rating_name = validate.resolve_columns(ratings, user_name, item_name, rating_name)
        validate.check_valid_pct(valid_pct)
        seed = validate.check_seed(seed)
        bs = validate.positive_int("bs", bs)
        names = (user_name, item_name, rating_name)
        t0 = time.perf_counter()
        y64 = validate.check_rating_values(ratings, rating_name)  # float32 once the ids' columns are freed
        check, encode = time.perf_counter() - t0, 0.0
        encoded = []
        for role, name in (("user", user_name), ("item", item_name)):
            t0 = time.perf_counter()
            validate.check_id_values(ratings, name, role)
            t1 = time.perf_counter()
            codes, vocab = _encode(ratings[name], name)
            t2 = time.perf_counter()
            validate.check_distinct(ratings, name, role, len(vocab) - 1, vocab[1] if len(vocab) > 1 else None)
            if consume:
                del ratings[name]
            check, encode = check + (t1 - t0) + (time.perf_counter() - t2), encode + (t2 - t1)
            encoded.append((codes, vocab))
            del codes
        (users, user_vocab), (items, item_vocab) = encoded
        t0 = time.perf_counter()
        y = validate.ratings_float32(y64)
        del y64
        if consume:
            del ratings[rating_name]
        encode += time.perf_counter() - t0
        t0 = time.perf_counter()
        repeats = validate.warn_repeated_pairs(ratings, users, items, len(user_vocab), len(item_vocab), names)
        check += time.perf_counter() - t0
        t2 = time.perf_counter()
        n = len(y)
        n_valid = int(valid_pct * n)
        validate.check_split(n, n_valid, valid_pct)
        classes = {user_name: user_vocab, item_name: item_vocab}
        columns = [users, items, y]
        del users, items, y, encoded  # the split frees each full column once its two parts exist
        dls = cls._split(columns, seed, n_valid, classes, names, bs)
        if consume:  # the table's columns are gone: what the C heap kept of them goes back to the system
            _give_back_freed_memory()
        dls.phase_seconds = {"check": check, "encode": encode, "split": time.perf_counter() - t2}
        dls.repeated_pairs = repeats
        return dls

    @classmethod
    def from_codes(
        cls,
        users,
        items,
        ratings,
        n_users: int,
        n_items: int,
        valid_pct: float = 0.2,
        seed: int | None = None,
        bs: int = 64,
    ) -> CollabDataLoaders:
        """Loaders for data that is already encoded as integer codes (synthetic data, benchmarks).

        Codes are used as they are (so code 0 is an ordinary row here); the vocabularies are
        ``range(n_users)`` and ``range(n_items)``.
        """
        validate.check_valid_pct(valid_pct)
        seed = validate.check_seed(seed)
        bs = validate.positive_int("bs", bs)
        users = np.ascontiguousarray(users, dtype=np.int32)
        items = np.ascontiguousarray(items, dtype=np.int32)
        ratings = np.ascontiguousarray(ratings, dtype=np.float32)
        for name, codes, size in (("user", users, n_users), ("item", items, n_items)):
            if len(codes) != len(ratings) or (len(codes) and not 0 <= codes.min() <= codes.max() < size):
                raise DataError(f"{name} codes must be {len(ratings)} integers in [0, {size}) (the {name}s given)")
        n_valid = int(valid_pct * len(ratings))
        classes = {"user": Vocab(range(n_users)), "item": Vocab(range(n_items))}
        return cls._split([users, items, ratings], seed, n_valid, classes, ("user", "item", "rating"), bs)

    def show_batch(self, max_n: int = 10, seed: int | None = None) -> pd.DataFrame:
        """A few training rows decoded back to their names, like fastai's ``dls.show_batch()``."""
        rng = np.random.default_rng(seed)
        rows = rng.choice(self.n_train, size=min(max_n, self.n_train), replace=False)
        users, items = self.classes[self.user_name], self.classes[self.item_name]
        df = pd.DataFrame(
            {
                self.user_name: [users[c] for c in self.train_users[rows]],
                self.item_name: [items[c] for c in self.train_items[rows]],
                self.rating_name: self.train_ratings[rows],
            }
        )
        print(df.to_string(index=False))
        return df

    @property
    def n_train(self) -> int:
        return len(self.train_ratings)

    @property
    def n_valid(self) -> int:
        return len(self.valid_ratings)

    def __repr__(self) -> str:
        return (
            f"CollabDataLoaders({self.n_train} train / {self.n_valid} valid ratings, "
            f"{self.n_users} {self.user_name}s, {self.n_items} {self.item_name}s, bs={self.bs})"
        )
