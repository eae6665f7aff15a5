"""Property: a small rating table written in any dialect reads back as written, or is refused in one line.

Hypothesis draws the table (ids with leading zeros, exponents, signs, inner spaces, quotes,
separators and non-ASCII letters; whole or half-star ratings, some with decimal commas) and the
dialect (separator, quoting, header or not, LF/CRLF/CR, blank lines, BOM, encoding, compression,
extra columns). The file is read by ``read_ratings`` and compared with the table: every row present
and in order, every id as written (an integer only when every id of its column is a plain integer),
every rating equal, and the line count exact, or the file refused with one ``MfscratchError`` line.

CI runs the ``ci`` profile (a few hundred derandomised examples); ``MFSCRATCH_DIALECT_EXAMPLES=5000``
runs a longer random search locally.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import lzma
import os
import re
import zipfile

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mfscratch.errors import MfscratchError
from mfscratch.readers import read_ratings

EXAMPLES = int(os.environ.get("MFSCRATCH_DIALECT_EXAMPLES", "300"))
settings.register_profile(
    "dialects",
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 300,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PLAIN = re.compile(r"0|[1-9][0-9]{0,17}")

# Ids users write: plain integers, and things that only look like numbers or carry odd characters.
INT_IDS = st.integers(0, 10**6).map(str)
ODD_IDS = st.one_of(
    st.integers(0, 999).map(lambda n: f"{n:03d}"),  # leading zeros: 007
    st.sampled_from(["1E3", "1e3", "-5", "+5", "1.0", "3.14", "NA", "null", "None", "nan", "TRUE"]),
    st.text(
        st.characters(codec="utf-8", categories=("L", "N", "P", "S", "Zs"), exclude_characters="\x85\u2028\u2029"),
        min_size=1,
        max_size=8,
    ).filter(lambda t: t == t.strip() and t.strip(" \t") != ""),
    st.sampled_from(["user 7", "Amélie", "Łódź", "東京", "a,b", 'say "hi"', "x;y", "p|q", "tab\there"]),
)


@st.composite
def tables(draw):
    n = draw(st.integers(1, 12))
    columns = []
    for _ in range(2):
        pool = draw(st.lists(st.one_of(INT_IDS, ODD_IDS) if draw(st.booleans()) else INT_IDS, min_size=1, max_size=5))
        columns.append([draw(st.sampled_from(pool)) for _ in range(n)])
    ratings = [draw(st.sampled_from([1, 2, 3, 4, 5, 0.5, 3.5, 4.5, -1.0, 10])) for _ in range(n)]
    return list(zip(columns[0], columns[1], ratings))


@st.composite
def dialects(draw):
    return {
        "sep": draw(st.sampled_from([",", "\t", ";", "|", "::", " "])),
        "quote_all": draw(st.booleans()),
        "header": draw(st.booleans()),
        "newline": draw(st.sampled_from(["\n", "\r\n", "\r"])),
        "final_newline": draw(st.booleans()),
        "blank_lines": draw(st.lists(st.sampled_from(["", "  ", "\t"]), max_size=3)),
        "blank_at": draw(st.integers(0, 100)),
        "encoding": draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "cp1252", "latin-1"])),
        "compression": draw(st.sampled_from([None, None, "gzip", "bz2", "xz", "zip"])),
        "extra_column": draw(st.booleans()),
        "decimal_comma": draw(st.booleans()),
    }


def _quote(field: str, d) -> str:
    needs = d["sep"] in field or '"' in field or field != field.strip() or "\t" in field or " " in field
    if d["quote_all"] or needs:
        return '"' + field.replace('"', '""') + '"'
    return field


def _writable(rows, d) -> bool:
    """Whether the dialect can express the table at all (else the example is skipped)."""
    ids = [x for r in rows for x in r[:2]]
    if d["sep"] == " " and any(" " in x or "\t" in x or '"' in x for x in ids):
        return False  # whitespace-separated files cannot hold a space inside a field
    if d["sep"] == "::" and any(":" in x or '"' in x for x in ids):
        return False  # '::' files are not quoted
    return all(x.isprintable() or "\t" in x for x in ids)


def render(rows, d) -> str:
    sep = d["sep"]
    quote = (lambda f: f) if sep in ("::", " ") else (lambda f: _quote(f, d))
    decimal = d["decimal_comma"] and sep not in (",", " ")

    def rating(r):
        text = f"{r:g}"
        return text.replace(".", ",") if decimal else text

    lines = [sep.join(quote(x) for x in ("user", "item", "rating"))] if d["header"] else []
    for u, i, r in rows:
        fields = [quote(u), quote(i), rating(r)] + (["964982703"] if d["extra_column"] else [])
        lines.append(sep.join(fields))
    if d["header"] and d["extra_column"]:
        lines[0] += sep + "timestamp"
    at = d["blank_at"] % (len(lines) + 1)
    lines[at:at] = d["blank_lines"]
    return d["newline"].join(lines) + (d["newline"] if d["final_newline"] else "")


def pack(text: str, d) -> bytes | None:
    try:
        data = text.encode(d["encoding"])
    except UnicodeEncodeError:
        return None
    kind = d["compression"]
    if kind == "gzip":
        return gzip.compress(data)
    if kind == "bz2":
        return bz2.compress(data)
    if kind == "xz":
        return lzma.compress(data)
    if kind == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("ratings.csv", data)
        return buf.getvalue()
    return data


def expected_ids(column: list[str]) -> list:
    return [int(x) for x in column] if all(PLAIN.fullmatch(x) for x in column) else column


def physical_lines(text: str) -> int:
    parts = re.split(r"\r\n|\r|\n", text)
    return len(parts) - (1 if parts[-1] == "" else 0)


@settings(settings.get_profile("dialects"))
@given(rows=tables(), d=dialects())
def test_a_table_in_any_dialect_reads_back_as_written_or_is_refused(tmp_path_factory, rows, d):
    if not _writable(rows, d):
        event("skipped: the dialect cannot express these ids")
        return
    text = render(rows, d)
    data = pack(text, d)
    if data is None:
        event("skipped: the encoding cannot express these ids")
        return
    path = tmp_path_factory.mktemp("dialect") / "ratings.txt"
    path.write_bytes(data)
    try:
        t = read_ratings(path)
    except MfscratchError as e:
        assert str(e) and "\n" not in str(e)
        event(f"refused: {re.sub(r'[0-9]+', 'N', str(e).split(': ', 1)[-1])[:60]}")
        return
    event("read")
    users, items, ratings = (list(c) for c in zip(*rows))
    assert t.df[t.user].tolist() == expected_ids(users)
    assert t.df[t.item].tolist() == expected_ids(items)
    assert t.df[t.rating].astype(float).tolist() == [float(r) for r in ratings]
    info = t.info
    assert info.n_rows == len(rows) and (info.header is not None) == d["header"]
    assert info.n_lines == physical_lines(text.lstrip("\ufeff")) == info.n_rows + info.n_blank + d["header"]


@pytest.mark.parametrize(
    "rows, d",
    [
        ([("007", "7", 4), ("7", "1E3", 3)], {"sep": ";", "header": False, "decimal_comma": True}),
        ([("a,b", 'say "hi"', 5), ("x", "y", 1)], {"sep": ",", "header": True, "quote_all": True}),
        ([("東京", "Łódź", 3.5)], {"sep": "\t", "header": True, "encoding": "utf-16", "compression": "gzip"}),
        ([("1", "2", 3)], {"sep": "::", "newline": "\r", "blank_lines": ["", "  "], "blank_at": 1}),
    ],
)
def test_examples_that_must_read(tmp_path, rows, d):
    """A few fixed examples, so that the property's main paths run even if its draws change."""
    base = {
        "quote_all": False,
        "header": False,
        "newline": "\n",
        "final_newline": True,
        "blank_lines": [],
        "blank_at": 0,
        "encoding": "utf-8",
        "compression": None,
        "extra_column": False,
        "decimal_comma": False,
    }
    d = {**base, **d}
    path = tmp_path / "r.txt"
    path.write_bytes(pack(render(rows, d), d))
    t = read_ratings(path)
    users, items, ratings = (list(c) for c in zip(*rows))
    assert t.df[t.user].tolist() == expected_ids(list(users)) and t.df[t.item].tolist() == expected_ids(list(items))
    assert t.df[t.rating].astype(float).tolist() == [float(r) for r in ratings]


def test_render_quotes_like_the_csv_module():
    d = {"sep": ",", "quote_all": False}
    assert next(csv.reader([_quote('say "hi", twice', d)])) == ['say "hi", twice']
