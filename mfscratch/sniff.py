"""What the first lines of a text table say: its separator, its fields, and whether the first is a header.

* **separator** (:func:`sniff_separator`): the first 64 KiB are split with each of ``::``, tab, ``,``,
  ``;``, ``|`` (honouring ``"``-quoted fields) and whitespace; of those that split every line into the
  same number of fields (two or more), one that yields a column of numbers (the ratings) wins, then
  a separator over whitespace, then the most fields. When none splits every line alike but one
  splits most lines alike, the first line that differs is refused with its number and text.
* **header** (:func:`sniff_header`), decided on the evidence of up to a thousand lines, never on the
  first line alone: the first line is a header when some column that holds numbers below has a
  name (text) on it, and no field of it is a number or a value that recurs in its column below.
  Evidence both ways (a name over one column, a number in another: a data row with a bad value,
  or a header with a numeric name) is refused with a line asking for ``--header`` or ``--no-header``.
"""

from __future__ import annotations

import csv
import re

from .errors import DataError

__all__ = [
    "SEPARATORS",
    "WHITESPACE",
    "fields",
    "sample_lines",
    "sniff_separator",
    "sniff_header",
    "header_end",
    "is_number",
    "sep_name",
    "bad_row",
    "one_line",
]

#: Separators tried, in order of preference when two split the lines equally well (whitespace last).
SEPARATORS = ("::", "\t", ",", ";", "|")
WHITESPACE = r"\s+"
_EVIDENCE_LINES = 1000
_NUMBER = re.compile(r"[+-]?(\d+[.,]?\d*|[.,]\d+)([eE][+-]?\d+)?")  # 3,5: a decimal comma
_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n|$)")


def sep_name(sep) -> str:
    return {"\t": "tab", WHITESPACE: "whitespace"}.get(sep, repr(sep))


# --- sniffing ------------------------------------------------------------------------------------
def fields(line: str, sep: str) -> list[str]:
    if sep == WHITESPACE:  # runs of spaces and tabs, "quoted fields" kept whole (as pandas reads them)
        return next(csv.reader([line.replace("\t", " ").strip(" ")], delimiter=" ", skipinitialspace=True))
    if sep == "::":
        return [f.strip(" \t") for f in line.split("::")]
    return [f.strip(" \t") for f in next(csv.reader([line], delimiter=sep, quotechar='"', strict=False))]


def sample_lines(sample: bytes, complete: bool) -> list[tuple[int, str]]:
    """The non-blank lines of the sample with their 1-based line numbers (the last one dropped when the
    sample cuts it)."""
    text = sample.decode("utf-8", errors="replace")
    lines = re.split(r"\r\n|\r|\n", text)
    if not complete:
        lines = lines[:-1]
    return [(i + 1, line) for i, line in enumerate(lines) if line.strip(" \t")][:_EVIDENCE_LINES]


def _has_number_column(rows: list[list[str]]) -> bool:
    """Whether some column holds a number on every line (the first line aside: it may be a header)."""
    body = rows[1:] or rows
    return any(all(is_number(r[j]) for r in body) for j in range(len(body[0])))


def sniff_separator(lines: list[tuple[int, str]], path) -> str:
    """The separator that splits every line into the same number (>= 2) of fields (module docstring).

    Among those, one that gives a column of numbers (the ratings) wins over one that does not, then
    the most fields: ``a|b,x|y,4`` is two text fields and a rating split by ``,``, not four by ``|``.
    When none splits every line alike but one splits most lines alike, the first line that differs
    is refused with its number and text (a stray separator or quote), as the parser would refuse it.
    """
    best, best_score, near = None, (False, False, 1), None
    for sep in (*SEPARATORS, WHITESPACE):
        rows = [fields(line, sep) for _, line in lines]
        counts = [len(r) for r in rows]
        mode = max(set(counts), key=counts.count)
        if mode < 2:
            continue
        if counts.count(mode) == len(counts):  # whitespace only when no separator gives a column of numbers
            score = (_has_number_column(rows), sep != WHITESPACE, mode)
            if score > best_score:
                best, best_score = sep, score
        elif near is None or counts.count(mode) > near[0]:
            odd = next(k for k, c in enumerate(counts) if c != mode)
            near = (counts.count(mode), mode, counts[odd], lines[odd])
    if best is not None:
        return best
    if near is not None and near[0] >= len(lines) / 2:
        _, mode, count, (number, line) = near
        raise bad_row(path, mode, count, line, number)
    shown = ", ".join(f"line {n}: {line[:40]!r}" for n, line in lines[:2])
    raise DataError(
        f"{path}: cannot tell its column separator: none of tab, ',', ';', '|', '::' or spaces splits its "
        f"first {len(lines)} lines into the same number of fields ({shown}); give the separator (--sep)"
    )


def is_number(text: str) -> bool:
    return _NUMBER.fullmatch(text) is not None


def sniff_header(rows: list[list[str]], path) -> bool:
    """Whether ``rows[0]`` is a header, on the evidence of the other rows (module docstring, step 4)."""
    first, rest = rows[0], rows[1:]
    if not rest:  # a single line: a header when it holds names only (the file then has no rows)
        return all(f and not is_number(f) for f in first)
    numeric_below = [all(is_number(r[j]) for r in rest if r[j]) and any(r[j] for r in rest) for j in range(len(first))]
    names = [j for j, f in enumerate(first) if f and not is_number(f) and numeric_below[j]]
    numbers = [j for j, f in enumerate(first) if f and is_number(f)]
    repeats = [j for j, f in enumerate(first) if f and not is_number(f) and any(r[j] == f for r in rest)]
    if not names:
        return False
    if not numbers and not repeats:
        return True
    j = (numbers or repeats)[0]
    raise DataError(
        f"{path}: cannot tell whether its first line is a header: {first[names[0]]!r} reads as a column name "
        f"but {first[j]!r} as a value; say which with --header or --no-header (header=True/False)"
    )


def header_end(sample: bytes) -> int:
    """Byte offset just past the first non-blank line (the header) of the sample."""
    for m in _LINE.finditer(sample):
        if m.group().strip(b" \t\r\n"):
            return m.end()
    return len(sample)


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 200 else text[:200] + "..."


def bad_row(path, expected: int, actual: int, text: str, number: int | None = None) -> DataError:
    where = f"line {number:,}" if number else "a line"
    return DataError(
        f"{path}: {where} has {actual} field(s) where the other lines have {expected}: {text[:80]!r}; "
        "fix its separators or quotes (a field holding the separator must be quoted, a '\"' inside a "
        'quoted field doubled as "")'
    )
