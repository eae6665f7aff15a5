"""The id rule every reader shares: ids keep their identity as written.

:func:`parse_ids` takes a column of raw tokens (the text of each field, as read from a file) and
returns the typed column:

* when every token is a **plain integer** (digits only, no leading zero unless it is ``0``, no sign,
  exponent, decimal point or thousands separator, and within int64) the column is int64, as the
  values themselves: MovieLens ids and the vocabularies of saved models keep their codes, and a
  25M-row column stays 8 bytes a row;
* otherwise the column is **text**, each id exactly as written (Arrow-backed strings where pyarrow
  is installed), so ``007`` and ``7`` are two ids and ``1E3`` stays ``1E3``, never ``1000.0``.

Spaces and tabs around a token belong to the file's layout (``1, 7, 3``), not to the id, and are
dropped; spaces inside one (``"user 7"``) are kept. An empty token is a missing id (``None``): the
column is then nullable (``Int64`` when the rest are plain integers), and ``from_df`` refuses it with
the row. Tokens already typed by their file (a Parquet integer column) are not raw tokens and keep
their type; a Parquet *string* column goes through this rule like a CSV column.

The integer test and the parse are one compiled pass over Arrow's string buffers (about as fast as
reading the column as integers); without pyarrow the same rule runs through pandas' string methods.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numba import njit

__all__ = ["parse_ids", "INT64_DIGITS"]

#: The longest plain integer that can still fit int64 (9223372036854775807 has 19 digits).
INT64_DIGITS = 19
_INT64_MAX = np.iinfo(np.int64).max
_NOT_PLAIN = -2  # kernel status: a token that is not a plain integer


@njit(cache=True, nogil=True)
def _parse_plain_ints(offsets, data, valid, out, missing):  # pragma: no cover - compiled
    """Parse the tokens ``data[offsets[r]:offsets[r + 1]]`` as plain integers into ``out``.

    ``valid[r] == 0`` (or an empty token once spaces and tabs are stripped) marks row ``r`` missing.
    Returns the number of missing rows, or -2 at the first token that is not a plain integer.
    """
    n_missing = 0
    for r in range(out.shape[0]):
        s, e = offsets[r], offsets[r + 1]
        while s < e and (data[s] == 32 or data[s] == 9):
            s += 1
        while e > s and (data[e - 1] == 32 or data[e - 1] == 9):
            e -= 1
        if valid[r] == 0 or s == e:
            missing[r] = 1
            out[r] = 0
            n_missing += 1
            continue
        if e - s > 19 or (data[s] == 48 and e - s > 1):
            return -2
        value = 0
        for j in range(s, e):
            digit = data[j] - 48
            if digit < 0 or digit > 9 or value > (9223372036854775807 - digit) // 10:
                return -2
            value = value * 10 + digit
        out[r] = value
    return n_missing


def _arrow_strings(tokens):
    """``tokens`` as a pyarrow ChunkedArray of strings, or ``None`` without pyarrow (or for other values)."""
    try:
        import pyarrow as pa
    except ImportError:
        return None
    if isinstance(tokens, pd.Series):
        tokens = tokens.array
    if hasattr(tokens, "__arrow_array__"):
        tokens = tokens.__arrow_array__()
    try:
        if isinstance(tokens, pa.ChunkedArray):
            chunked = tokens
        elif isinstance(tokens, pa.Array):
            chunked = pa.chunked_array([tokens])
        else:
            chunked = pa.chunked_array([pa.array(np.asarray(tokens, dtype=object), type=pa.string(), from_pandas=True)])
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    if pa.types.is_large_string(chunked.type) or pa.types.is_string_view(chunked.type):
        chunked = chunked.cast(pa.string())
    return chunked if pa.types.is_string(chunked.type) else None


def _arrow_ints(chunked) -> tuple[np.ndarray, np.ndarray] | None:
    """The plain-integer parse of every chunk, or ``None`` at the first token that is not one."""
    out = np.empty(len(chunked), dtype=np.int64)
    missing = np.zeros(len(chunked), dtype=np.uint8)
    pos = 0
    for chunk in chunked.chunks:
        n = len(chunk)
        if n == 0:
            continue
        _, offsets_buf, data_buf = chunk.buffers()
        offsets = np.frombuffer(offsets_buf, dtype=np.int32)[chunk.offset : chunk.offset + n + 1]
        data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
        valid = (
            np.ones(n, dtype=np.uint8)
            if chunk.null_count == 0
            else chunk.is_valid().to_numpy(zero_copy_only=False).astype(np.uint8)
        )
        status = _parse_plain_ints(offsets, data, valid, out[pos : pos + n], missing[pos : pos + n])
        if status == _NOT_PLAIN:
            return None
        pos += n
    return out, missing.view(bool)


def _text_arrow(chunked) -> pd.Series:
    import pyarrow.compute as pc

    trimmed = pc.utf8_trim(chunked, " \t")
    trimmed = pc.if_else(pc.equal(trimmed, ""), None, trimmed)
    return pd.Series(pd.array(trimmed, dtype=pd.StringDtype("pyarrow", na_value=np.nan)))


def _parse_without_arrow(tokens) -> pd.Series:
    """The same rule through pandas' string methods (pyarrow not installed)."""
    text = pd.Series(np.asarray(tokens, dtype=object)).astype("str").str.strip(" \t")
    text = text.where(text.ne("") & pd.Series(np.asarray(tokens, dtype=object)).notna())
    present = text.dropna()
    plain = present.str.fullmatch(r"0|[1-9][0-9]{0,18}").all()
    if plain and (present.str.len().lt(INT64_DIGITS) | present.le(str(_INT64_MAX))).all():
        values = pd.to_numeric(text)
        return values.astype("Int64") if text.isna().any() else values.astype(np.int64)
    return text


def parse_ids(tokens) -> pd.Series:
    """The typed id column for a column of raw tokens (see the module docstring for the rule).

    ``tokens``: a pyarrow string array, a pandas Series or array of strings, or any sequence of
    strings (``None`` for a missing token). Returns a Series (index ``0..n-1``): int64 when every
    token is a plain integer, ``Int64`` when some are missing, else text.
    """
    chunked = _arrow_strings(tokens)
    if chunked is None:
        return _parse_without_arrow(tokens)
    parsed = _arrow_ints(chunked)
    if parsed is None:
        return _text_arrow(chunked)
    values, missing = parsed
    if missing.any():
        return pd.Series(pd.arrays.IntegerArray(values, missing))
    return pd.Series(values, copy=False)
