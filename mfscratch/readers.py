"""Reading ratings: any CSV/TSV/Parquet file, the MovieLens sets by name, and ML-100k's own splits.

Every reader returns a :class:`RatingsTable`: a DataFrame plus the names of its user, item and
rating columns, ready for ``CollabDataLoaders.from_df``. Problems with the *file* (missing, no
such column, no rows) raise :class:`~mfscratch.errors.DataError` naming the file and the column;
problems with the *values* are ``from_df``'s to report.

Item names. When titles are joined (``--items``, or a MovieLens set by name) the item column
becomes the title, as the fastai book's recipe does, so every analysis speaks in titles. Two
keys that share a title are, for ML-100k, merged into one item (that *is* the seed recipe: 1682
movie ids become 1664 titles); everywhere else they are kept apart by appending the key,
``"Emma (1996) [id 838]"``, so two different films never share one embedding by accident.

``default_y_range``: when no ``y_range`` is given the model's output range comes from the
ratings: ``(0, 1.1 * max)`` for non-negative ratings (fastai's habit: ``(0, 5.5)`` for 1-5 stars,
so the sigmoid can reach the top rating), and ``(min - m, max + m)`` with ``m = 0.1 * (max - min)``
when some ratings are negative.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .data import DATASETS, CollabDataLoaders, untar_data
from .errors import ConfigError, DataError
from .ids import parse_ids
from .tablefile import TableInfo, read_columns

__all__ = [
    "RatingsTable",
    "TableInfo",
    "parse_ids",
    "read_ratings",
    "read_items",
    "attach_titles",
    "read_movielens",
    "read_ml100k_split",
    "ML100K_SPLITS",
    "MOVIELENS",
    "default_y_range",
    "loaders_from_split",
]

ML100K_SPLITS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")
MOVIELENS = tuple(DATASETS)


@dataclass
class RatingsTable:
    """A ratings DataFrame and the names of its user, item and rating columns."""

    df: pd.DataFrame
    user: str
    item: str
    rating: str
    source: str = ""
    info: TableInfo | None = None

    def loaders(
        self, valid_pct: float = 0.2, seed: int | None = None, bs: int = 64, consume: bool = False
    ) -> CollabDataLoaders:
        """``CollabDataLoaders.from_df`` on this table with its column names (``consume=True``: the
        table's columns are deleted as they are encoded; the table is empty afterwards)."""
        if self.source:
            self.df.attrs["source"] = self.source
        return CollabDataLoaders.from_df(
            self.df,
            valid_pct=valid_pct,
            user_name=self.user,
            item_name=self.item,
            rating_name=self.rating,
            seed=seed,
            bs=bs,
            consume=consume,
        )


# --- y_range -------------------------------------------------------------------------------------
def default_y_range(ratings) -> tuple[float, float]:
    """The output range for ratings on this scale (see the module docstring for the rule)."""
    values = pd.to_numeric(pd.Series(np.asarray(ratings).ravel()), errors="coerce").to_numpy(dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise DataError("cannot derive y_range: the ratings hold no finite numbers; give --y-range LO HI")
    r_min, r_max = float(values.min()), float(values.max())
    if r_min >= 0:
        lo, hi = 0.0, round(1.1 * r_max, 6)
    else:
        margin = 0.1 * (r_max - r_min)
        lo, hi = round(r_min - margin, 6), round(r_max + margin, 6)
    if not lo < hi:  # every rating equal (and zero): any range around it will do
        lo, hi = lo - 1.0, hi + 1.0
    return lo, hi


# --- generic files -------------------------------------------------------------------------------
def _check_file(path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file {path} does not exist; check the path")
    return path


def _column_spec(value):
    """A column given on the command line: a 0-based position (``"2"``) or a name."""
    if value is None or isinstance(value, int):
        return value
    text = str(value).strip()
    return int(text) if text.isdigit() else text


def read_ratings(
    path,
    user_col=0,
    item_col=1,
    rating_col=2,
    header: bool | None = None,
    encoding: str | None = None,
    sep: str | None = None,
    narrow_ids: bool = False,
) -> RatingsTable:
    """Ratings from a CSV, TSV, ``;``, ``|``, ``::``, whitespace-separated or Parquet file, compressed or not.

    ``user_col``, ``item_col``, ``rating_col``: a column name, or a 0-based position (``2`` or
    ``"2"``). ``header``, ``encoding`` and ``sep`` are detected unless given (see
    :mod:`mfscratch.tablefile`); ids keep their identity as written (:func:`parse_ids`).
    ``table.info`` says how the file was read and counts its lines. ``narrow_ids=True``: integer ids that all
    fit are int32 where the file is read block by block (a table read only to be encoded, as the command line's).
    """
    specs = [_column_spec(c) for c in (user_col, item_col, rating_col)]
    df, info = read_columns(
        path, specs, ("id", "id", "number"), ("user", "item", "rating"), header, encoding, sep, narrow_ids=narrow_ids
    )
    if info.header is None:  # a file without a header: give the columns the usual names
        df.columns = ["user", "item", "rating"]
    df.columns = [str(c) for c in df.columns]
    user, item, rating = df.columns
    return RatingsTable(df, user, item, rating, str(path), info)


def read_items(
    path, key_col=0, title_col=1, header: bool | None = None, encoding: str | None = None, sep: str | None = None
) -> pd.DataFrame:
    """An items file as a two-column DataFrame ``key, title`` (names or 0-based positions)."""
    specs = [_column_spec(key_col), _column_spec(title_col)]
    df, _ = read_columns(path, specs, ("id", "text"), ("item key", "title"), header, encoding, sep, what="items")
    df.columns = ["key", "title"]
    return df


def attach_titles(
    table: RatingsTable, items: pd.DataFrame, merge_duplicates: bool = False, items_source: str = "items"
) -> RatingsTable:
    """Replace the item column by the item's title (``items``: columns ``key, title``).

    Ratings whose item has no title keep their key as a name (``[id KEY]`` when that text is some
    other item's title). Titles shared by different keys are merged when ``merge_duplicates`` (the
    ML-100k recipe), else suffixed with ``[id KEY]``. A key listed twice with two different titles
    is refused: which one is meant cannot be told.
    """
    has_title = items["title"].notna() & items["title"].astype(str).str.strip().ne("")
    items = items[has_title].drop_duplicates()  # an empty title names nothing: the key stays the name
    twice = items["key"].duplicated(keep=False)
    if twice.any():
        key = items.loc[twice, "key"].tolist()[0]
        shown = " and ".join(repr(t) for t in items.loc[items["key"] == key, "title"].astype(str).iloc[:2])
        raise DataError(
            f"{items_source}: key {key!r} has two titles ({shown}), and {int(twice.sum())} rows share a key; "
            "keep one title per key"
        )
    keys = table.df[table.item]
    # Each distinct key is named once; the rows then take their key's name by code (25M rows, 59k keys).
    row_codes, distinct = pd.factorize(keys, use_na_sentinel=False)
    unique_keys = pd.Series(distinct, dtype=keys.dtype)
    signed = all(isinstance(d, np.dtype) and d.kind == "i" for d in (keys.dtype, items["key"].dtype))
    if keys.dtype != items["key"].dtype and signed:
        # int32 ids (read_ratings(narrow_ids=True)) and int64 keys: compare as int64.
        unique_keys, items = unique_keys.astype(np.int64), items.assign(key=items["key"].astype(np.int64))
    elif keys.dtype != items["key"].dtype:
        # "1" in one file and 1 in the other: compare as text.
        unique_keys, items = unique_keys.astype(str), items.assign(key=items["key"].astype(str))
    titles = items["title"].astype(str)
    if not merge_duplicates:
        shared = titles.duplicated(keep=False)
        titles = titles.where(~shared, titles + " [id " + items["key"].astype(str) + "]")
    mapping = pd.Series(titles.to_numpy(), index=items["key"].to_numpy())
    named = unique_keys.map(mapping)
    if not named.notna().any():
        raise DataError(
            f"{items_source}: none of its keys match the ratings' {table.item!r} values "
            f"(e.g. {unique_keys.iloc[row_codes[0]]!r}); check --item-key"
        )
    untitled = unique_keys.astype(str)
    untitled = untitled.where(~untitled.isin(set(titles)), "[id " + untitled + "]")  # never merged with a title
    named = named.where(named.notna(), untitled)
    name_codes, names = pd.factorize(named, sort=True)  # merged titles share a name
    column = pd.Categorical.from_codes(name_codes[row_codes], categories=pd.Index(names, dtype=object))
    df = pd.DataFrame({table.user: table.df[table.user], "title": column, table.rating: table.df[table.rating]})
    return RatingsTable(df, table.user, "title", table.rating, table.source, table.info)


# --- MovieLens -----------------------------------------------------------------------------------
def _decode(raw: bytes) -> str:
    """MovieLens titles: UTF-8 in the newer sets, latin-1 in ML-100k and ML-1M."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _movies_dat(path: Path) -> pd.DataFrame:
    """``MovieID::Title::Genres`` (titles may themselves contain ``:``, so split at ``::`` twice only)."""
    rows = [line.split("::", 2)[:2] for line in _decode(path.read_bytes()).splitlines() if line.strip()]
    return pd.DataFrame({"key": [int(r[0]) for r in rows], "title": [r[1] for r in rows]})


def _ratings_dat(path: Path) -> RatingsTable:
    """``UserID::MovieID::Rating::Timestamp``: read with ``:`` (fast C parser), keeping fields 0, 2, 4."""
    path = _check_file(path, "ratings")
    df = pd.read_csv(
        path,
        sep=":",
        header=None,
        usecols=[0, 2, 4],
        names=["user", "movie", "rating"],
        dtype={"user": np.int64, "movie": np.int64, "rating": np.float32},
    )
    if len(df) == 0:
        raise DataError(f"ratings file {path} has no rows")
    return RatingsTable(df, "user", "movie", "rating", str(path))


def _ml100k_ratings(folder: Path, file: str) -> pd.DataFrame:
    path = _check_file(folder / file, "ratings")
    return pd.read_csv(path, delimiter="\t", header=None, names=["user", "movie", "rating", "timestamp"])


def _ml100k_titled(folder: Path, file: str) -> RatingsTable:
    """The seed recipe's table: ratings merged with the titles of ``u.item`` (latin-1, ``|``)."""
    ratings = _ml100k_ratings(folder, file)
    movies = pd.read_csv(
        _check_file(folder / "u.item", "items"),
        delimiter="|",
        encoding="latin-1",
        usecols=(0, 1),
        names=("movie", "title"),
        header=None,
    )
    titled = ratings.merge(movies)
    if movies["movie"].duplicated().any():
        raise DataError(f"{folder / 'u.item'} lists a movie id twice; restore the original u.item")
    if len(titled) != len(ratings):  # an inner join drops ratings of movies u.item lacks: say so, never lose them
        missing = sorted(set(ratings["movie"]) - set(movies["movie"]))
        raise DataError(
            f"{folder / 'u.item'} lacks {len(missing)} movie id(s) that {file} rates (e.g. {missing[:3]}), "
            f"so {len(ratings) - len(titled)} ratings would be dropped; restore the original u.item"
        )
    return RatingsTable(titled, "user", "title", "rating", str(folder / file))


def read_movielens(name: str = "ml-100k", titles: bool = True, narrow_ids: bool = False) -> RatingsTable:
    """A MovieLens set by name (downloaded and checked by ``untar_data``), each in its own format.

    ``titles=True`` names the items by title (see the module docstring on duplicates). ``narrow_ids``: the
    CSV sets (ml-20m, ml-25m, ml-latest-small) give their user ids as int32 (:func:`read_ratings`).
    """
    if name not in DATASETS:
        raise ConfigError(f"--data {name!r}: use one of {', '.join(DATASETS)}")
    ds = DATASETS[name]
    folder = untar_data(name)
    ratings_path = folder / ds.ratings_file
    if name == "ml-100k":
        if titles:
            return _ml100k_titled(folder, ds.ratings_file)
        return RatingsTable(
            _ml100k_ratings(folder, ds.ratings_file).iloc[:, :3], "user", "movie", "rating", str(ratings_path)
        )
    if ratings_path.suffix == ".dat":  # ml-1m, ml-10m: UserID::MovieID::Rating::Timestamp, no header
        table = _ratings_dat(ratings_path)
        movies = folder / "movies.dat"
        items = _movies_dat(movies) if titles and movies.is_file() else None
    else:  # ml-20m, ml-25m, ml-latest-small: CSV with header userId,movieId,rating,timestamp
        table = read_ratings(ratings_path, "userId", "movieId", "rating", header=True, narrow_ids=narrow_ids)
        movies = folder / "movies.csv"
        items = read_items(movies, "movieId", "title", header=True) if titles and movies.is_file() else None
    if items is None:
        return table
    return attach_titles(table, items, merge_duplicates=False, items_source=str(movies))


def read_ml100k_split(split: str, titles: bool = True) -> tuple[RatingsTable, RatingsTable]:
    """ML-100k's own ``<split>.base`` / ``<split>.test`` pair (u1..u5: 5-fold, ua/ub: 10 per user)."""
    if split not in ML100K_SPLITS:
        raise ConfigError(f"--split {split!r}: use one of {', '.join(ML100K_SPLITS)}")
    folder = untar_data("ml-100k")
    read = (
        _ml100k_titled
        if titles
        else (lambda f, n: RatingsTable(_ml100k_ratings(f, n).iloc[:, :3], "user", "movie", "rating", str(f / n)))
    )
    return read(folder, f"{split}.base"), read(folder, f"{split}.test")


def loaders_from_split(train: RatingsTable, valid: RatingsTable, bs: int = 64) -> CollabDataLoaders:
    """Loaders whose validation rows are exactly ``valid``'s (a published split, not a random one).

    The vocabularies come from both tables together (as ``from_df`` builds them from all rows),
    so every validation user and item has an embedding, trained or not.
    """
    cols = [train.user, train.item, train.rating]
    valid_df = valid.df[[valid.user, valid.item, valid.rating]].set_axis(cols, axis=1)
    full = pd.concat([train.df[cols], valid_df], ignore_index=True)
    # from_df checks and encodes the values; its random split is then replaced by the given one.
    enc = CollabDataLoaders.from_df(
        full, valid_pct=0.0, user_name=train.user, item_name=train.item, rating_name=train.rating, seed=0, bs=bs
    )
    codes = {}
    for col in (train.user, train.item):
        vocab = enc.classes[col]
        codes[col] = (pd.Categorical(full[col], categories=list(vocab[1:])).codes + 1).astype(np.int32)
    ratings = pd.to_numeric(full[train.rating]).to_numpy(dtype=np.float32)
    n_train = len(train.df)
    return CollabDataLoaders(
        codes[train.user],
        codes[train.item],
        ratings,
        np.arange(n_train),
        np.arange(n_train, len(full)),
        enc.classes,
        train.user,
        train.item,
        train.rating,
        bs,
    )
