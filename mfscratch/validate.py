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
from pathlib import Path

import numpy as np
import pandas as pd

from . import notices
from .errors import ConfigError, DataError
from .seeding import seed_or_drawn

__all__ = [
    "DataWarning",
    "resolve_columns",
    "check_ratings",
    "check_rating_values",
    "ratings_float32",
    "check_id_values",
    "check_distinct",
    "warn_repeated_pairs",
    "check_valid_pct",
    "check_split",
    "warn_ratings_outside_range",
    "check_output_path",
    "check_seed",
    "divergence_message",
    "available_memory",
    "model_memory",
    "memory_error",
    "check_memory",
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
    with np.errstate(over="ignore"):  # training runs in float32: the range must exist there too
        lo32, hi32 = np.float32(lo), np.float32(hi)
        if not (np.isfinite(hi32 - lo32) and lo32 < hi32):
            raise ConfigError(
                f"y_range {y_range!r} does not fit float32, the training precision (its ends and hi - lo must be "
                "finite, below 3.4e38, and distinct); for 1-5 star ratings use (0, 5.5)"
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


def one_cycle_fit_args(n_epoch, lr_max, div, div_final, pct_start, wd, moms) -> dict:
    """A ``fit_one_cycle`` call's schedule arguments, checked, as the fit and its checkpoints record them
    (``moms`` ``None``: fastai's ``(0.95, 0.85, 0.95)``)."""
    check_one_cycle(div, div_final, pct_start, moms)
    moms = (0.95, 0.85, 0.95) if moms is None else moms
    return dict(
        method="fit_one_cycle",
        n_epoch=n_epoch,
        lr_max=lr_max,
        div=div,
        div_final=div_final,
        pct_start=pct_start,
        wd=wd,
        moms=list(moms),
    )


def check_seed(seed) -> int | None:
    """``None`` or an integer >= 0: NumPy's generators take non-negative seeds (of any size).

    The command line's ``--seed`` and every ``seed=`` of the API refuse the same values. ``None``
    stays ``None`` (fresh entropy) unless ``set_seed`` was called: then it is the next integer of
    that generator.
    """
    if seed is None:
        return seed_or_drawn(None)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0 (or None), got {seed!r}; NumPy's seeds are non-negative")
    return int(seed)


def divergence_message(epoch: int, step: int, loss: float, lr: float, wd: float, decoupled: bool) -> str:
    """What a NaN/inf loss at ``(epoch, step)`` most likely comes from, in one line (``lr``: the largest
    learning rate the epoch reached up to that step).

    A decoupled (or plain SGD) weight decay multiplies every weight by ``1 - lr * wd`` each step: once
    ``lr * wd >= 1`` that factor is <= 0, so the weights flip their sign (and grow once it is below
    -1). The message blames weight decay when that holds and ``wd`` is the outlier (``wd >= 1``; a
    typo such as ``1e3`` for ``1e-3``), else the learning rate (mentioning the decay when it flips too).
    """
    head = f"training diverged at epoch {epoch}, step {step} (loss {loss})"
    flips = decoupled and wd > 0 and lr * wd >= 1
    decay = (
        f"lr x wd = {lr:.3g} x {wd:g} = {lr * wd:.3g} >= 1, so each step multiplies the weights by "
        f"1 - lr x wd = {1 - lr * wd:.3g} and flips their sign"
    )
    if flips and wd >= 1:
        exponent = math.log10(wd)
        typo = f" (was {wd:g} meant as {10 ** -round(exponent):g}?)" if exponent == round(exponent) else ""
        return f"{head}; the weight decay wd={wd:g} is too large: {decay}; lower wd below {1 / lr:.3g}{typo}"
    also = f" (and {decay})" if flips else ""
    return f"{head}; the learning rate ({lr:.3g} at its highest so far) is probably too high: lower it{also}"


def available_memory() -> int | None:
    """Bytes this process can still allocate, as far as the system says (``None`` when it cannot tell).

    The smallest of: available RAM plus free swap (``/proc/meminfo``), the cgroup's limit less its
    usage (containers), and the address-space limit (``ulimit -v``) less what the process maps.
    """
    limits = []
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        kib = {k: int(v.split()[0]) for k, v in info.items() if k in ("MemAvailable", "SwapFree")}
        if "MemAvailable" in kib:
            limits.append(1024 * (kib["MemAvailable"] + kib.get("SwapFree", 0)))
    except (OSError, ValueError):
        pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit.isdigit() and int(limit) < 2**60:
                limits.append(int(limit) - int(Path(usage_file).read_text().strip()))
        except (OSError, ValueError):
            pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            status = Path("/proc/self/status").read_text()
            mapped = next((int(ln.split()[1]) * 1024 for ln in status.splitlines() if ln.startswith("VmSize:")), 0)
            limits.append(soft - mapped)
    except (ImportError, OSError, ValueError):
        pass
    return max(0, min(limits)) if limits else None


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.0f} MiB"


def model_memory(n_users: int, n_items: int, n_factors: int, itemsize: int = 4) -> int:
    """Bytes a model of this size needs to train: its tables, the optimiser's two moments and the
    gradients (four copies of the parameters), plus the float64 draw of its initial weights."""
    n_params = (n_users + n_items) * (n_factors + 1)
    return n_params * (4 * itemsize + 8)


def memory_error(n_users: int, n_items: int, n_factors: int, available: int | None = None) -> ConfigError:
    """The one line for a model that does not fit in memory."""
    need = model_memory(n_users, n_items, n_factors)
    have = f", and about {_gib(available)} is available" if available is not None else ""
    return ConfigError(
        f"a model of {n_users:,} users and {n_items:,} items with n_factors={n_factors:,} needs about {_gib(need)} "
        f"to train (tables, optimiser state, gradients){have}; lower n_factors (--factors) or free memory"
    )


def check_memory(n_users: int, n_items: int, n_factors: int) -> None:
    """Refuse, before anything is allocated, a model that cannot fit in the memory available."""
    available = available_memory()
    if available is not None and model_memory(n_users, n_items, n_factors) > available:
        raise memory_error(n_users, n_items, n_factors, available)


def check_output_path(flag: str, path, folder: bool = False) -> None:
    """One output path the run will write at its end, refused now rather than after the training
    (``mfscratch.outputs.check_outputs`` does the checking, for all of a command's outputs at once)."""
    from .outputs import Output, check_outputs

    check_outputs([Output(flag, path, folder=folder)])


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


def check_id_values(df: pd.DataFrame, name: str, role: str) -> None:
    """No missing ids, one kind of value per column (the distinct values are counted once encoded:
    :func:`check_distinct`)."""
    col, where = df[name], _where(df)
    if isinstance(col.dtype, np.dtype) and col.dtype.kind in "iu":
        return  # NumPy integers hold no missing value and one kind (no mask of the column made to say so)
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


def check_distinct(df: pd.DataFrame, name: str, role: str, n_distinct: int, first_value) -> None:
    """At least two distinct ids (``n_distinct``: the size of the column's vocabulary, ``#na#`` excluded)."""
    if n_distinct < 2:
        raise DataError(
            f"{_where(df)}{role} column {name!r} has a single distinct value ({first_value!r}); "
            "collaborative filtering needs at least 2 users and 2 items: check the column names"
        )


#: Rows whose float32 values :func:`check_rating_values` makes at a time (4 MB), to find the non-finite ones.
_FINITE_CHUNK = 1 << 20


def check_rating_values(df: pd.DataFrame, rating_name) -> np.ndarray:
    """A non-empty table whose ratings are finite numbers in float32; returns them as float64 (a view of a
    float64 column, no copy). The float32 values are made a chunk at a time to be checked, so that the
    check holds no copy of the column; :func:`ratings_float32` makes the training copy when it is wanted."""
    where = _where(df)
    if len(df) == 0:
        raise DataError(f"{where}the ratings table is empty; give it at least a few rows")
    raw = df[rating_name]
    if raw.dtype == np.float64:
        y = raw.to_numpy()  # NaN stays NaN; a view, not a copy (what to_numeric would give, copied)
    else:
        numbers = pd.to_numeric(raw, errors="coerce")
        if numbers.dtype == np.float64:
            y = numbers.to_numpy()
        else:
            y = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    n_bad, first = 0, -1
    with np.errstate(over="ignore"):
        for start in range(0, len(y), _FINITE_CHUNK):
            bad = ~np.isfinite(y[start : start + _FINITE_CHUNK].astype(np.float32))  # 1e39 is as bad as inf
            if bad.any():
                n_bad += int(bad.sum())
                first = start + int(np.flatnonzero(bad)[0]) if first < 0 else first
    if n_bad:
        raise DataError(
            f"{where}rating column {rating_name!r} has {n_bad} value(s) that are not finite "
            f"numbers (first: row {df.index[first]!r}, {raw.iloc[first]!r}); drop or fix those rows"
        )
    return y


def ratings_float32(y: np.ndarray) -> np.ndarray:
    """The checked ratings (:func:`check_rating_values`) in float32, the training precision."""
    return y.astype(np.float32)


def warn_repeated_pairs(
    df: pd.DataFrame, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, names: tuple
) -> int:
    """Warn when rows repeat a (user, item) pair, counted on the encoded codes (one compiled pass:
    ``kernels.pairs.count_repeated_pairs``); ``names``: the user, item and rating columns. Returns the
    number of rows that repeat an earlier pair."""
    from .kernels.pairs import count_repeated_pairs

    user_name, item_name, rating_name = names
    dup = int(count_repeated_pairs(users, items, int(n_users), int(n_items)))
    if dup:
        notices.warn(
            f"{_where(df)}{dup} row(s) repeat an earlier ({user_name!r}, {item_name!r}) pair; all rows are kept (as "
            f"fastai does), so a repeated pair counts once per row; to keep one rating per pair use "
            f"df.groupby([{user_name!r}, {item_name!r}], as_index=False)[{rating_name!r}].mean()",
            DataWarning,
        )
    return dup


def check_ratings(df: pd.DataFrame, user_name, item_name, rating_name) -> np.ndarray:
    """Check the table's values; returns the ratings as float64. Warns about duplicate pairs.

    ``CollabDataLoaders.from_df`` runs the same checks between its encoding steps, on the codes;
    this is the stand-alone form, which encodes the ids to count them.
    """
    y = check_rating_values(df, rating_name)
    codes = []
    for role, name in (("user", user_name), ("item", item_name)):
        check_id_values(df, name, role)
        col_codes, uniques = pd.factorize(df[name])
        check_distinct(df, name, role, len(uniques), df[name].iloc[0])
        codes.append((col_codes.astype(np.int32), len(uniques)))
    (users, n_users), (items, n_items) = codes
    warn_repeated_pairs(df, users, items, n_users, n_items, (user_name, item_name, rating_name))
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
    ys = [a for a in (dls.train_ratings, dls.valid_ratings) if len(a)]  # counted apart: no copy of the ratings
    if not ys:
        return
    outside = sum(int(np.count_nonzero((y < lo) | (y > hi))) for y in ys)
    if outside:
        y_min, y_max = min(float(y.min()) for y in ys), max(float(y.max()) for y in ys)
        notices.warn(
            f"{outside} rating(s) in column {dls.rating_name!r} lie outside y_range ({lo:g}, {hi:g}) (data spans "
            f"{y_min:g} to {y_max:g}); the sigmoid output can never reach them: widen y_range "
            "a little beyond the data, as (0, 5.5) does for 1-5 stars",
            DataWarning,
        )
