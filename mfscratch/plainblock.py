"""The block reader's fast path: a block of plain numeric rows parsed in one compiled pass.

Most ratings files are lines such as ``123,4567,3.5,1147880044``: ids written as plain integers, a
rating written as a plain decimal, nothing quoted. :func:`parse_plain_block` reads such a block
straight into arrays, 8 bytes at a time (a word's digits found and joined by integer arithmetic on the
word, with no branch a byte), and answers ``None`` at the first byte it does not expect, so that the
block goes to pyarrow's parser (the general path) instead. It accepts only what that path reads the same
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

from .kernels.cpu._llvm import load_word, trailing_zeros

__all__ = ["SKIP", "ID", "NUMBER", "parse_plain_block"]

#: What a field is to the fast path: skipped, an id, the rating.
SKIP, ID, NUMBER = 0, 1, 2
_MAX_ID_DIGITS = 18
_MAX_NUMBER_DIGITS = 15
_POW10 = np.array([10.0**d for d in range(_MAX_NUMBER_DIGITS + 1)])
_NL, _DOT, _QUOTE, _ZERO = 10, 46, 34, 48


#: Every byte of a word set to 1, to ``'0'``, to its high bit.
_ONES = np.uint64(0x0101010101010101)
_ZEROS = _ONES * np.uint64(_ZERO)
_HIGH = _ONES * np.uint64(0x80)
#: 10^d as integers: the value of ``d`` more digits is ``value 10^d + theirs``.
_POW10_INT = np.array([10**d for d in range(_MAX_ID_DIGITS + 1)], dtype=np.uint64)


@njit(cache=True, inline="always")
def _digits_value(x, count):
    """The value of the ``count`` (1 to 8) digits in the low bytes of ``x`` (one digit 0-9 a byte, the
    first digit in the lowest byte): shifted up so that the digits fill the word, then three
    multiplies join them in pairs, fours and eights (10 a + b, 100 a + b, 10^4 a + b)."""
    x = x << np.uint64(8 * (8 - count))
    x = (x * np.uint64(10 * 2**8 + 1)) >> np.uint64(8)
    x = ((x & np.uint64(0x00FF00FF00FF00FF)) * np.uint64(100 * 2**16 + 1)) >> np.uint64(16)
    return ((x & np.uint64(0x0000FFFF0000FFFF)) * np.uint64(10000 * 2**32 + 1)) >> np.uint64(32)


@njit(cache=True, inline="always")
def _digit_word(word):
    """``(count, value)`` of the digits that begin the 8 bytes ``word``: how many (8: all) and their value.

    ``x = word - '0'`` in every byte makes a digit byte 0-9; ``(x + 0x76) | x`` has its high bit set
    exactly where ``x >= 10``. A borrow or carry moves only into the bytes above a non-digit, so the
    lowest flagged byte is the first non-digit."""
    x = word - _ZEROS
    stop = ((x + _ONES * np.uint64(0x76)) | x) & _HIGH
    if stop == 0:
        return 8, _digits_value(x, 8)
    count = trailing_zeros(stop) >> 3
    if count == 0:
        return 0, np.uint64(0)
    return count, _digits_value(x, count)


@njit(cache=True, inline="always")
def _text_word(word, seps):
    """How many bytes that begin the 8 bytes ``word`` are printable ASCII other than a quote and the
    separator (``seps``: the separator in every byte); 8: all of them. A byte is flagged when
    ``byte - 32 >= 95`` (as :func:`_digit_word` flags ``x >= 10``) or when it equals the separator or
    a quote (``v = word ^ those``: a zero byte of ``v``, found by ``(v - 1) & ~v & 0x80``, exact up
    to the lowest one)."""
    y = word - _ONES * np.uint64(32)
    odd = ((y + _ONES * np.uint64(128 - 95)) | y) & _HIGH
    v = word ^ seps
    odd |= (v - _ONES) & ~v & _HIGH
    v = word ^ (_ONES * np.uint64(_QUOTE))
    odd |= (v - _ONES) & ~v & _HIGH
    if odd == 0:
        return 8
    return trailing_zeros(odd) >> 3


@njit(cache=True, nogil=True)
def _parse_rows(block, n, sep, roles, ids, ints, floats, pos):  # pragma: no cover - compiled
    """Rows of ``block[pos:n]`` into ``ids[slot]``, ``ints`` and ``floats`` (the module docstring), read
    8 bytes at a time; every load stays within ``block``, which may hold bytes after ``n``. Returns
    ``(rows, pos, saw_point)``: all rows, ``pos = n``; or, when a load would pass the block's end, the
    rows before and ``pos`` where the next starts; ``rows = -1`` at the first byte outside the plain form.

    The loops over words are written here rather than in helpers: an inlined helper that takes the
    block costs an array reference count each call (1.65x slower); the helpers take the words."""
    end = block.shape[0]
    n_fields = roles.shape[0]
    seps = _ONES * np.uint64(sep)
    row = 0
    saw_point = False
    capacity = ints.shape[0]
    while pos < n:
        if row == capacity:
            return -1, pos, False
        row_start = pos
        slot = 0
        for field in range(n_fields):
            role = roles[field]
            start = pos
            if role == SKIP:
                while True:
                    if pos + 8 > end:
                        return row, row_start, saw_point
                    count = _text_word(load_word(block, pos), seps)
                    pos += count
                    if count < 8:
                        break
            else:
                # The digits 8 bytes at a time: an id's, or a rating's whole part and then its decimals
                # (``point``: where they start), into one integer.
                value = np.uint64(0)
                run_start = pos
                point = -1
                limit = _MAX_ID_DIGITS if role == ID else _MAX_NUMBER_DIGITS
                while True:
                    if pos + 8 > end:
                        return row, row_start, saw_point
                    count, part = _digit_word(load_word(block, pos))
                    value = value * _POW10_INT[count] + part
                    pos += count
                    if count == 8 and pos - run_start <= limit:
                        continue
                    if role == NUMBER and point < 0 and pos < n and block[pos] == _DOT:
                        pos += 1
                        point = run_start = pos
                        continue
                    break
                whole = (pos if point < 0 else point - 1) - start
                if whole == 0 or (whole > 1 and block[start] == _ZERO):
                    return -1, pos, False
                if role == ID:
                    if whole > _MAX_ID_DIGITS:
                        return -1, pos, False
                    ids[slot, row] = value
                    slot += 1
                else:
                    decimals = 0 if point < 0 else pos - point
                    if (point >= 0 and decimals == 0) or whole + decimals > _MAX_NUMBER_DIGITS:
                        return -1, pos, False
                    saw_point |= point >= 0
                    ints[row] = value
                    floats[row] = np.int64(value) / _POW10[decimals]
            if field < n_fields - 1:
                if pos >= n or block[pos] != sep:
                    return -1, pos, False
            elif pos < n and block[pos] != _NL:
                return -1, pos, False
            pos += 1
        row += 1
    return row, n, saw_point


@njit(cache=True, nogil=True)
def _parse(block, sep, roles, skip_lines, ids, ints, floats):  # pragma: no cover - compiled
    """Rows of ``block`` (after ``skip_lines`` lines) into ``ids[slot]`` (one row per id field, in field
    order), ``ints`` and ``floats`` (the rating as an integer and as a float); returns ``(rows,
    saw_point)``, or ``(-1, False)`` at the first byte outside the plain form.

    :func:`_parse_rows` reads the block in words; the rows near its end, where a word would pass it,
    are copied into a buffer with 8 line feeds after them (a line feed ends a digit run and a field),
    and read there the same way."""
    n = block.shape[0]
    pos = 0
    for _ in range(skip_lines):
        while pos < n and block[pos] != _NL:
            pos += 1
        pos += 1
    rows, pos, saw_point = _parse_rows(block, n, sep, roles, ids, ints, floats, pos)
    if rows < 0 or pos >= n:
        return rows, saw_point
    rest = np.full(n - pos + 8, _NL, dtype=np.uint8)
    rest[: n - pos] = block[pos:]
    more, _, saw_more = _parse_rows(rest, n - pos, sep, roles, ids[:, rows:], ints[rows:], floats[rows:], 0)
    if more < 0:
        return -1, False
    return rows + more, saw_point or saw_more


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
