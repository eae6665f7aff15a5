"""The block reader's fast path: a block of plain numeric rows parsed in one compiled pass.

Most ratings files are lines such as ``123,4567,3.5,1147880044``: ids written as plain integers, a
rating written as a plain decimal, nothing quoted. :func:`parse_plain_block` reads such a block
straight into arrays, and answers ``None`` at the first byte it does not expect, so that the block
goes to pyarrow's parser (the general path) instead. It accepts only what that path reads the same
way, so the columns are the same either way:

* a line is ``n_fields`` fields split by the one-byte separator and ended by ``\\n`` (the block's last
  line may end at the block's end); a blank line, a ``\\r``, a quote, a wrong field count: ``None``;
* an id field is ``0`` or ``[1-9][0-9]{0,17}`` (``ids.parse_ids``' plain-integer rule, under 10^18);
* the rating field is ``[0-9]{1,15}`` or ``[0-9]{1,15}.[0-9]{1,15}`` (15 digits in all at most),
  without a leading zero before another digit; its value is ``m / 10^d`` for the digits ``m`` with
  ``d`` of them after the point, which is the correctly rounded float64 (both are exact in float64,
  ``m < 2^53`` and ``10^d`` for ``d <= 22``, and IEEE division rounds once), the value pyarrow parses.
  A block with a point in any rating is float64, else int64: pyarrow's type inference on the block;
* other fields hold printable ASCII other than a quote (they are skipped, as pyarrow skips
  columns not asked for).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["SKIP", "ID", "NUMBER", "parse_plain_block"]

#: What a field is to the fast path: skipped, an id, the rating.
SKIP, ID, NUMBER = 0, 1, 2
_MAX_ID_DIGITS = 18
_MAX_NUMBER_DIGITS = 15
_POW10 = np.array([10.0**d for d in range(_MAX_NUMBER_DIGITS + 1)])
_NL, _DOT, _QUOTE, _ZERO, _NINE = 10, 46, 34, 48, 57


@njit(cache=True, nogil=True)
def _parse(block, sep, roles, skip_lines, ids, ints, floats):  # pragma: no cover - compiled
    """Rows of ``block`` into ``ids[slot]`` (one row per id field, in field order), ``ints`` and ``floats``
    (the rating as an integer and as a float); returns ``(rows, saw_point)``, or ``(-1, False)`` at the
    first byte outside the plain form."""
    n = block.shape[0]
    n_fields = roles.shape[0]
    pos = 0
    for _ in range(skip_lines):
        while pos < n and block[pos] != _NL:
            pos += 1
        pos += 1
    row = 0
    saw_point = False
    capacity = ints.shape[0]
    while pos < n:
        if row == capacity:
            return -1, False
        slot = 0
        for field in range(n_fields):
            role = roles[field]
            start = pos
            if role == ID:
                value = 0
                while pos < n:
                    digit = np.uint8(block[pos] - _ZERO)  # wraps below '0': one test for a digit
                    if digit > 9:
                        break
                    value = value * 10 + digit
                    pos += 1
                digits = pos - start
                if digits == 0 or digits > _MAX_ID_DIGITS or (digits > 1 and block[start] == _ZERO):
                    return -1, False
                ids[slot, row] = value
                slot += 1
            elif role == NUMBER:
                mantissa = 0
                while pos < n:
                    digit = np.uint8(block[pos] - _ZERO)
                    if digit > 9:
                        break
                    mantissa = mantissa * 10 + digit
                    pos += 1
                whole = pos - start
                if whole == 0 or (whole > 1 and block[start] == _ZERO):
                    return -1, False
                decimals = 0
                if pos < n and block[pos] == _DOT:
                    pos += 1
                    point = pos
                    while pos < n:
                        digit = np.uint8(block[pos] - _ZERO)
                        if digit > 9:
                            break
                        mantissa = mantissa * 10 + digit
                        pos += 1
                    decimals = pos - point
                    if decimals == 0:
                        return -1, False
                    saw_point = True
                if whole + decimals > _MAX_NUMBER_DIGITS:
                    return -1, False
                ints[row] = mantissa
                floats[row] = mantissa / _POW10[decimals]
            else:
                while pos < n:
                    c = block[pos]
                    if c == sep or c == _NL:
                        break
                    if np.uint8(c - 32) > 94 or c == _QUOTE:  # outside printable ASCII, or a quote
                        return -1, False
                    pos += 1
            if field < n_fields - 1:
                if pos >= n or block[pos] != sep:
                    return -1, False
            elif pos < n and block[pos] != _NL:
                return -1, False
            pos += 1
        row += 1
    return row, saw_point


def parse_plain_block(block, sep: str, roles: np.ndarray, skip_lines: int, capacity: int):
    """``(rows, ids, rating)`` of a block of plain rows (the module docstring), or ``None``.

    ``block``: the block's bytes (a buffer); ``sep``: a one-character separator; ``roles``: each field's
    role (:data:`SKIP`, :data:`ID`, :data:`NUMBER`, at most one rating); ``skip_lines``: lines to skip at
    the start (a header); ``capacity``: the most rows the block can hold (a line takes a byte a field at
    least: ``len(block) // n_fields + 1``).
    ``ids``: an ``(id fields, rows)`` int64 array; ``rating``: int64 or float64 (as pyarrow infers it),
    or None when no field is the rating.
    """
    data = np.frombuffer(block, dtype=np.uint8)
    if len(sep) != 1 or ord(sep) > 127:
        return None
    roles = np.asarray(roles, dtype=np.int64)
    ids = np.empty((int((roles == ID).sum()), capacity), dtype=np.int64)
    ints = np.empty(capacity, dtype=np.int64)
    floats = np.empty(capacity, dtype=np.float64)
    rows, saw_point = _parse(data, ord(sep), roles, skip_lines, ids, ints, floats)
    if rows < 0:
        return None
    if not (roles == NUMBER).any():
        return rows, ids[:, :rows], None
    return rows, ids[:, :rows], (floats if saw_point else ints)[:rows]
