"""Checks that run before any work starts: the ratings data and the training settings.

Every check either passes silently, returns the cleaned value, or raises a
:class:`~mfscratch.errors.DataError` / :class:`~mfscratch.errors.ConfigError` whose message is one
line naming the column or setting and what to do. Two situations are worth telling the user about but
are not errors; they emit a :class:`DataWarning` instead:

* duplicate ``(user, item)`` pairs: **all rows are kept**, as fastai keeps them, so a pair rated
  twice simply counts twice in training (and may land once in training and once in validation);
* ratings outside ``y_range``: the model's output ``lo + (hi - lo) * sigmoid(x)`` lies strictly
  inside ``(lo, hi)``, so such ratings can never be predicted and keep pulling the loss up.

Decisions about ids (documented in ``docs/robustness.md``):

* missing ids (NaN/None) are an error; fastai would silently file them under ``#na#``, the code
  it reserves for "unknown", which would then be trained as if it were a real user or item;
* ids of mixed kinds in one column (numbers and text, or booleans and numbers) are an error, not a
  silent conversion: ``1`` and ``"1"`` would otherwise become two users, and ``True`` would merge
  with ``1``. Convert the column to one type first (``.astype(str)`` or ``pd.to_numeric``);
* integers of any size are fine (also beyond int64: they are kept as Python ints, sorted by value).

A table can name its source file in ``df.attrs["source"]`` (the file readers set it); the
messages then start with that name.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

import numpy as np
import pandas as pd

from . import notices
from .errors import ConfigError, DataError

__all__ = [
    "DataWarning",
    "resolve_columns",
    "check_ratings",
    "check_valid_pct",
    "check_split",
    "warn_ratings_outside_range",
    "check_output_path",
    "positive_int",
    "positive_float",
    "nonneg_float",
    "check_y_range",
    "check_fit",
    "check_one_cycle",
]


class DataWarning(UserWarning):
    """The data can be used, but probably not as the user expects (the CLI prints ``warning: ...``)."""


# --- settings ----------------------------------------------------------------------------------
def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def positive_int(name: str, value) -> int:
    """``value`` as an int >= 1, or a ConfigError naming ``name``."""
    if not _is_number(value) or not math.isfinite(value) or int(value) != value or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def positive_float(name: str, value) -> float:
    """``value`` as a finite float > 0, or a ConfigError naming ``name``."""
    if not _is_number(value) or not math.isfinite(value) or not value > 0:
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def nonneg_float(name: str, value) -> float:
    """``value`` as a finite float >= 0, or a ConfigError naming ``name``."""
    if not _is_number(value) or not math.isfinite(value) or not value >= 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_y_range(y_range) -> tuple[float, float] | None:
    """``None`` or a pair of finite numbers ``lo < hi``."""
    if y_range is None:
        return None
    try:
        lo, hi = y_range
    except (TypeError, ValueError):
        raise ConfigError(f"y_range must be a pair (lo, hi) or None, got {y_range!r}") from None
    if not (_is_number(lo) and _is_number(hi) and math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(
            f"y_range must be two finite numbers with lo < hi, got {y_range!r}; for 1-5 star ratings use (0, 5.5)"
        )
    return float(lo), float(hi)


def check_fit(n_epoch, lr, wd, start_epoch=0) -> None:
    """Arguments shared by ``fit`` and ``fit_one_cycle`` (``lr`` is the resolved learning rate)."""
    n_epoch = positive_int("n_epoch", n_epoch)
    positive_float("lr", lr)
    if wd is not None:
        nonneg_float("wd", wd)
    if not _is_number(start_epoch) or int(start_epoch) != start_epoch or not 0 <= start_epoch <= n_epoch:
        raise ConfigError(f"start_epoch must be an integer in [0, {n_epoch}], got {start_epoch!r}")


def check_one_cycle(div, div_final, pct_start, moms) -> None:
    """The one-cycle schedule's own arguments."""
    positive_float("div", div)
    positive_float("div_final", div_final)
    if not _is_number(pct_start) or not 0 <= pct_start <= 1:
        raise ConfigError(f"pct_start must be a number in [0, 1], got {pct_start!r}")
    if moms is not None:
        ok = isinstance(moms, (tuple, list)) and len(moms) == 3 and all(_is_number(m) and 0 <= m < 1 for m in moms)
        if not ok:
            raise ConfigError(f"moms must be three momenta in [0, 1) such as (0.95, 0.85, 0.95), got {moms!r}")


def check_output_path(flag: str, path, folder: bool = False) -> None:
    """An output path the run will write at its end: refuse it now, not after an hour of training.

    The nearest existing ancestor must be a writable folder, and ``path`` itself must not be a
    folder (or, with ``folder=True``, must not be a file).
    """
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        want = "a folder" if folder else "a file path, not a folder"
        raise ConfigError(f"{flag} {path}: expected {want}")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path}: {parent} is a file, so the path cannot be created; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: the folder {parent} is not writable; choose another path")


# --- data --------------------------------------------------------------------------------------
def _where(df: pd.DataFrame) -> str:
    """``'ratings.csv: '`` when the table names its source file, else ``''``."""
    source = df.attrs.get("source") if hasattr(df, "attrs") else None
    return f"{source}: " if source else ""


def resolve_columns(df, user_name=None, item_name=None, rating_name=None) -> tuple:
    """fastai's default columns (0, 1, 2 are user, item, rating unless named), each checked to exist."""
    if not isinstance(df, pd.DataFrame):
        raise DataError(
            f"ratings must be a pandas DataFrame, got {type(df).__name__}; build one with pd.DataFrame or pd.read_csv"
        )
    where, cols = _where(df), list(df.columns)
    if len(cols) < 3 and None in (user_name, item_name, rating_name):
        raise DataError(
            f"{where}the ratings table has {len(cols)} column(s) {cols}; it needs user, item "
            "and rating columns (or name them with user_name=, item_name=, rating_name=)"
        )
    names = [cols[i] if given is None else given for i, given in enumerate((user_name, item_name, rating_name))]
    for role, name in zip(("user", "item", "rating"), names):
        if name not in df.columns:
            raise DataError(
                f"{where}{role} column {name!r} not found; the table has columns {cols}: "
                f"pass {role}_name= with one of them"
            )
    if len(set(names)) < 3:
        raise DataError(f"{where}user, item and rating must be three different columns, got {names}")
    return tuple(names)


def _value_kind(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "boolean"
    if isinstance(value, numbers.Number):
        return "number"
    if isinstance(value, str):
        return "text"
    return type(value).__name__


def _check_ids(df: pd.DataFrame, name: str, role: str) -> None:
    """No missing ids, one kind of value per column, at least two distinct values."""
    col, where = df[name], _where(df)
    missing = col.isna()
    if missing.any():
        first = col.index[missing.to_numpy()][0]
        raise DataError(
            f"{where}{role} column {name!r} has {int(missing.sum())} missing value(s) (first at row "
            f"{first!r}); drop those rows (df.dropna(subset=[{name!r}])) or fill them"
        )
    # infer_dtype runs in C; the per-value kinds are only counted for the message.
    if col.dtype == object and pd.api.types.infer_dtype(col, skipna=True) in ("mixed", "mixed-integer"):
        kinds = col.map(_value_kind)
        if kinds.nunique() > 1:
            counts = ", ".join(f"{n} {k}" for k, n in kinds.value_counts().sort_index().items())
            raise DataError(
                f"{where}{role} column {name!r} mixes kinds of ids ({counts}); convert it to one "
                f"type first, e.g. df[{name!r}] = df[{name!r}].astype(str)"
            )
    if col.nunique() < 2:
        raise DataError(
            f"{where}{role} column {name!r} has a single distinct value ({col.iloc[0]!r}); "
            "collaborative filtering needs at least 2 users and 2 items: check the column names"
        )


def check_ratings(df: pd.DataFrame, user_name, item_name, rating_name) -> np.ndarray:
    """Check the table's values; returns the ratings as float64. Warns about duplicate pairs."""
    where = _where(df)
    if len(df) == 0:
        raise DataError(f"{where}the ratings table is empty; give it at least a few rows")
    raw = df[rating_name]
    y = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(over="ignore"):
        bad = ~np.isfinite(y.astype(np.float32))  # training uses float32: 1e39 is as bad as inf
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{where}rating column {rating_name!r} has {int(bad.sum())} value(s) that are not finite "
            f"numbers (first: row {df.index[first]!r}, {raw.iloc[first]!r}); drop or fix those rows"
        )
    _check_ids(df, user_name, "user")
    _check_ids(df, item_name, "item")
    dup = int(df.duplicated([user_name, item_name]).sum())
    if dup:
        notices.warn(
            f"{where}{dup} row(s) repeat an earlier ({user_name!r}, {item_name!r}) pair; all rows are kept (as fastai "
            f"does), so a repeated pair counts once per row; to keep one rating per pair use "
            f"df.groupby([{user_name!r}, {item_name!r}], as_index=False)[{rating_name!r}].mean()",
            DataWarning,
        )
    return y


def check_valid_pct(valid_pct) -> float:
    """The validation fraction, in [0, 1)."""
    if not _is_number(valid_pct) or not 0.0 <= valid_pct < 1.0:
        raise ConfigError(f"valid_pct must be a number in [0, 1), got {valid_pct!r}")
    return float(valid_pct)


def check_split(n_rows: int, n_valid: int, valid_pct) -> None:
    """At least one training row left after taking ``n_valid`` rows for validation."""
    if n_rows - n_valid < 1:
        raise DataError(
            f"valid_pct={valid_pct} leaves no training rows out of {n_rows}; lower valid_pct or give more ratings"
        )


def warn_ratings_outside_range(dls, y_range) -> None:
    """Warn when ratings lie outside ``y_range``: ``lo + (hi - lo) sigmoid(x)`` never reaches them."""
    if y_range is None:
        return
    lo, hi = y_range
    ys = [a for a in (dls.train_ratings, dls.valid_ratings) if len(a)]
    if not ys:
        return
    y = np.concatenate(ys)
    outside = int(((y < lo) | (y > hi)).sum())
    if outside:
        notices.warn(
            f"{outside} rating(s) in column {dls.rating_name!r} lie outside y_range ({lo:g}, {hi:g}) (data spans "
            f"{float(y.min()):g} to {float(y.max()):g}); the sigmoid output can never reach them: widen y_range "
            "a little beyond the data, as (0, 5.5) does for 1-5 stars",
            DataWarning,
        )
