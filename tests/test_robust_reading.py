"""Hostile ratings files: no row lost, no id merged, or one clear line refusing the file.

Every file here is written by the test (synthetic rows, never MovieLens content), in the dialects
users meet: compressed or not, any encoding, any line ending, with or without a header, odd quoting.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import lzma
import os
import zipfile

import numpy as np
import pandas as pd
import pytest
from robust_helpers import assert_one_line_error, run_cli

from mfscratch import CollabDataLoaders
from mfscratch.errors import ConfigError, DataError
from mfscratch.ids import parse_ids
from mfscratch.readers import read_items, read_ratings
from mfscratch.textstream import LineCounter

ROWS = [(1, 10, 4.0), (2, 20, 3.5), (3, 10, 5.0), (1, 30, 2.0), (4, 20, 1.0)]
CSV = "userId,movieId,rating\n" + "".join(f"{u},{i},{r}\n" for u, i, r in ROWS)


def write(tmp_path, name, data) -> str:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


def refused(path, *fragments, **kwargs) -> str:
    with pytest.raises((DataError, ConfigError)) as e:
        read_ratings(path, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert f in msg, (f, msg)
    return msg


def same_rows(table, rows=ROWS):
    got = list(zip(*(table.df[c].tolist() for c in (table.user, table.item, table.rating))))
    assert got == [tuple(r) for r in rows], got


# --- the header, on evidence ---------------------------------------------------------------------
def test_headerless_file_whose_first_row_has_an_empty_rating_keeps_it(tmp_path):
    """On main the first line was taken for a header: 19,999 of 20,000 rows trained, silently."""
    path = write(tmp_path, "r.csv", "1,10,\n2,20,3\n3,30,5\n")
    t = read_ratings(path)
    assert len(t.df) == 3 and t.info.header is None and np.isnan(t.df["rating"][0])
    with pytest.raises(DataError, match=r"rating column 'rating' has 1 value\(s\)"):
        t.loaders()  # then refused with its row: never dropped


def test_headerless_file_whose_first_row_quotes_a_title_with_a_comma(tmp_path):
    path = write(tmp_path, "r.csv", '1,"Heat, The (1995)",4\n2,"Emma (1996)",3\n3,Up,5\n4,"Big, Deal",2\n')
    t = read_ratings(path)
    assert t.df["item"].tolist() == ["Heat, The (1995)", "Emma (1996)", "Up", "Big, Deal"]
    assert t.info.n_lines == 4 and t.info.n_rows == 4


def test_first_row_with_a_word_for_a_rating_is_refused_not_eaten(tmp_path):
    path = write(tmp_path, "r.csv", "1,10,five\n2,20,3\n3,30,5\n")
    refused(path, "cannot tell whether its first line is a header", "--header or --no-header")
    t = read_ratings(path, header=False)  # told: the row stays, and from_df names the bad value
    assert len(t.df) == 3
    with pytest.raises(DataError, match="'five'"):
        t.loaders()


def test_names_given_over_a_first_line_of_data_are_refused(tmp_path):
    path = write(tmp_path, "r.csv", "1,10,4\n2,20,3\n")
    refused(path, "columns are named", "is data, not a header", user_col="uid", item_col="mid", rating_col="r")


def test_a_numeric_column_name_is_ambiguous(tmp_path):
    refused(write(tmp_path, "r.csv", "user,item,2019\n1,10,4\n2,20,3\n"), "'2019'", "--no-header")


def test_header_with_an_empty_name_from_a_pandas_index(tmp_path):
    path = write(tmp_path, "r.csv", ",user,item,rating\n0,1,10,4\n1,2,20,3\n")
    t = read_ratings(path, "user", "item", "rating")
    assert t.df["user"].tolist() == [1, 2] and t.info.header == ("", "user", "item", "rating")


def test_header_only_and_empty_files(tmp_path):
    refused(write(tmp_path, "h.csv", "user,item,rating\n"), "has no rows below its header")
    refused(write(tmp_path, "e.csv", ""), "is empty")
    refused(write(tmp_path, "b.csv", "\n\n  \n"), "is empty")


def test_text_ids_with_a_header(tmp_path):
    t = read_ratings(write(tmp_path, "r.csv", "user,item,rating\nalice,sku1,5\nbob,sku2,4\n"))
    assert t.info.header == ("user", "item", "rating") and t.df["user"].tolist() == ["alice", "bob"]


def test_a_first_line_value_that_recurs_below_is_data(tmp_path):
    path = write(tmp_path, "r.csv", "alice,sku,x\nalice,sku2,4\nbob,sku,3\n")  # 'x' over numbers, 'alice' below
    refused(path, "cannot tell whether its first line is a header")


# --- ids keep their identity ---------------------------------------------------------------------
def test_leading_zeros_and_exponents_stay_text(tmp_path):
    """On main: 007 and 7 became one user, 1E3 became 1000.0 and every id a float."""
    path = write(tmp_path, "r.csv", "user,item,rating\n007,1E3,4\n7,1000,3\n07,1e3,5\n")
    t = read_ratings(path)
    assert t.df["user"].tolist() == ["007", "7", "07"] and t.df["item"].tolist() == ["1E3", "1000", "1e3"]
    dls = t.loaders(valid_pct=0.0)
    assert dls.n_users == 4 and dls.n_items == 4  # three of each, plus #na#


@pytest.mark.parametrize(
    "tokens, expected",
    [
        (["1", "22", "333"], [1, 22, 333]),
        ([" 7", "8 ", "\t9"], [7, 8, 9]),  # spaces around a field are layout, not identity
        (["0", "10"], [0, 10]),
        (["9223372036854775807", "1"], [9223372036854775807, 1]),
    ],
)
def test_plain_integers_stay_int64(tokens, expected):
    col = parse_ids(tokens)
    assert col.dtype == np.int64 and col.tolist() == expected


@pytest.mark.parametrize(
    "tokens",
    [
        ["007", "7"],
        ["1E3", "5"],
        ["-1", "2"],
        ["+1", "2"],
        ["1.0", "2"],
        ["1 000", "2"],
        ["9223372036854775808", "1"],
        ["\u0663", "1"],  # an Arabic-Indic digit is not a plain integer
        ["user 7", "8"],
    ],
)
def test_anything_else_is_text_as_written(tokens):
    col = parse_ids(tokens)
    assert col.dtype.kind not in "iuf" and col.tolist() == [t.strip() for t in tokens]


def test_missing_ids_stay_missing_and_are_refused(tmp_path):
    assert parse_ids(["1", "", None]).isna().tolist() == [False, True, True]
    assert parse_ids(["a", " ", "b"]).isna().tolist() == [False, True, False]
    t = read_ratings(write(tmp_path, "r.csv", "user,item,rating\n1,10,4\n,20,3\n3,30,5\n"))
    with pytest.raises(DataError, match="user column 'user' has 1 missing"):
        t.loaders()


def test_na_like_words_are_ids_not_missing(tmp_path):
    t = read_ratings(write(tmp_path, "r.csv", "user,item,rating\nNA,None,4\nnull,nan,3\n"))
    assert t.df["user"].tolist() == ["NA", "null"] and t.df["item"].tolist() == ["None", "nan"]


def test_parse_ids_without_pyarrow_gives_the_same_columns(monkeypatch):
    import mfscratch.ids as ids

    cases = [["1", "22"], ["007", "7"], ["1", "", None], ["a ", "b"], ["9223372036854775808", "1"]]
    fast = [parse_ids(c).tolist() for c in cases]
    monkeypatch.setattr(ids, "_arrow_strings", lambda tokens: None)
    slow = [parse_ids(c).tolist() for c in cases]
    assert [[None if v is pd.NA or v != v else v for v in c] for c in fast] == [
        [None if v is pd.NA or v != v else v for v in c] for c in slow
    ]


def test_parquet_string_ids_follow_the_rule(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "r.parquet"
    pd.DataFrame({"u": ["007", "7"], "i": ["1", "2"], "r": [4.0, 3.0], "n": [1, 2]}).to_parquet(path)
    t = read_ratings(path, "u", "i", "r")
    assert t.df["u"].tolist() == ["007", "7"] and t.df["i"].dtype == np.int64
    assert read_ratings(path, "n", 1, 2).df["n"].dtype == np.int64  # typed Parquet ints stay as they are


def test_parquet_named_by_its_bytes_not_its_suffix(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "ratings.csv"
    pd.DataFrame({"u": [1, 2], "i": [3, 4], "r": [4.0, 3.0]}).to_parquet(path)
    assert read_ratings(path, "u", "i", "r").df["u"].tolist() == [1, 2]


# --- compression, told by the bytes ---------------------------------------------------------------
def _zip(data: bytes, *names: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name in names or ("r.csv",):
            z.writestr(name, data)
    return buf.getvalue()


def _zstd(data: bytes) -> bytes:
    pa = pytest.importorskip("pyarrow")
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as f:
        f.write(data)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize(
    "name, pack, kind",
    [
        ("r.csv.gz", gzip.compress, "gzip"),
        ("r.csv", gzip.compress, "gzip"),  # a misleading name: the bytes decide
        ("r.csv.bz2", bz2.compress, "bz2"),
        ("r.csv.xz", lzma.compress, "xz"),
        ("r.zip", _zip, "zip"),
        ("r.csv.zst", _zstd, "zstd"),
    ],
)
def test_compressed_files(tmp_path, name, pack, kind):
    """On main the separator was guessed from the compressed bytes: one column named 'userId,movieId,...'."""
    t = read_ratings(write(tmp_path, name, pack(CSV.encode())), "userId", "movieId", "rating")
    same_rows(t)
    assert t.info.compression == kind and t.info.n_lines == 6


def test_damaged_and_truncated_gzip(tmp_path):
    data = gzip.compress((CSV * 3000).encode())
    refused(write(tmp_path, "t.gz", data[: len(data) // 2]), "gzip data is damaged or truncated")
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    refused(write(tmp_path, "c.gz", bytes(bad)), "gzip data is damaged or truncated")


def test_zip_with_several_files_and_a_workbook(tmp_path):
    refused(write(tmp_path, "two.zip", _zip(CSV.encode(), "a.csv", "b.csv")), "holding 2 files", "a.csv, b.csv")
    refused(write(tmp_path, "book.xlsx", _zip(b"<xml/>", "[Content_Types].xml", "xl/sheet1.xml")), "save the sheet")


def test_binary_file(tmp_path):
    refused(write(tmp_path, "model.npz", b"\x93NUMPY\x01\x00\x00\x00junk\x00\x00"), "binary")


# --- encodings, in a stated order ----------------------------------------------------------------
TITLES = "key|title\n1|Amélie (2001)\n2|Léon (1994)\n3|Heat (1995)\n"


@pytest.mark.parametrize(
    "encode, expected",
    [
        (lambda t: t.encode("utf-8"), "utf-8"),
        (lambda t: codecs.BOM_UTF8 + t.encode("utf-8"), "utf-8"),
        (lambda t: t.encode("utf-16"), "utf-16-le"),
        (lambda t: codecs.BOM_UTF16_BE + t.encode("utf-16-be"), "utf-16-be"),
        (lambda t: t.encode("utf-16-le"), "utf-16-le"),  # no BOM: told by its NUL bytes
        (lambda t: t.encode("utf-32"), "utf-32-le"),
        (lambda t: t.encode("latin-1"), "cp1252"),  # latin-1 text in the Windows range reads the same
        (lambda t: t.replace("Heat", "Heat’s").encode("cp1252"), "cp1252"),
    ],
)
def test_items_in_any_encoding(tmp_path, encode, expected):
    path = write(tmp_path, "items.txt", encode(TITLES))
    items = read_items(path, "key", "title")
    assert items["title"].tolist()[:2] == ["Amélie (2001)", "Léon (1994)"]


def test_latin1_items_like_ml100k_u_item(tmp_path, monkeypatch, capsys):
    """On main: 'cannot parse it as a table (UnicodeDecodeError...)' and no --encoding."""
    rows = "".join(f"{u}\t{i}\t{r}\t8749657{u}{i}\n" for u in range(1, 9) for i, r in ((1, 4), (2, 3), (3, 5)))
    ratings = write(tmp_path, "u.data", rows)
    titles = ["Amélie (2001)", "Léon (1994)", "Heat (1995)"]
    lines = "".join(f"{k}|{t}|01-Jan-2001||http://x|0|1\n" for k, t in enumerate(titles, 1))
    items = write(tmp_path, "u.item", lines.encode("latin-1"))
    monkeypatch.setenv("MFSCRATCH_DATA", str(tmp_path / "nodata"))
    train = ("train", "--quiet", "--epochs", "1", "--bs", "4", "--factors", "2", "--ratings", ratings, "--items", items)
    rc, out, err = run_cli(capsys, *train, "--save", tmp_path / "m.npz")
    assert rc == 0, err
    rc, out, err = run_cli(capsys, "similar", "--model", tmp_path / "m.npz", "Amélie (2001)", "-n", "1")
    assert rc == 0 and ("Léon" in out or "Heat" in out), (out, err)
    rc, out, err = run_cli(capsys, *train, "--encoding", "latin-1")
    assert rc == 0, err


def test_late_non_utf8_byte_falls_back_to_the_next_encoding(tmp_path):
    text = "user,item,rating\n" + "".join(f"{u},film{u},4\n" for u in range(5000)) + "9,Amélie,3\n"
    t = read_ratings(write(tmp_path, "r.csv", text.encode("latin-1")))  # the é is 90 KB in: past the sample
    assert t.df["item"].iloc[-1] == "Amélie" and t.info.encoding == "cp1252"


def test_forced_encoding(tmp_path):
    path = write(tmp_path, "r.csv", "user,item,rating\nJosé,a,4\nAnn,b,3\n".encode("utf-8"))
    assert read_ratings(path, encoding="latin-1").df["user"][0] == "JosÃ©"  # told, obeyed
    bad = write(tmp_path, "l.csv", "user,item,rating\nJosé,a,4\nAnn,b,3\n".encode("latin-1"))
    refused(bad, "is not valid utf-8", "--encoding", encoding="utf-8")
    refused(bad, "unknown encoding 'klingon'", encoding="klingon")


# --- line endings, blank lines and the count -----------------------------------------------------
@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_line_endings(tmp_path, newline):
    t = read_ratings(write(tmp_path, "r.csv", CSV.replace("\n", newline)), "userId", "movieId", "rating")
    same_rows(t)
    assert (t.info.n_lines, t.info.n_rows, t.info.n_blank) == (6, 5, 0)


def test_blank_lines_are_counted_and_reported(tmp_path):
    text = "\n" + CSV.replace("2,20,3.5\n", "2,20,3.5\n\n   \n\t\n") + "\n"
    t = read_ratings(write(tmp_path, "r.csv", text), "userId", "movieId", "rating")
    same_rows(t)
    info = t.info
    assert info.n_lines == info.n_rows + 1 + info.n_blank == 11
    assert "11 lines = 5 rows + 1 header line + 5 blank line(s) skipped" in info.summary()


def test_no_final_newline(tmp_path):
    same_rows(read_ratings(write(tmp_path, "r.csv", CSV.rstrip("\n")), "userId", "movieId", "rating"))


@pytest.mark.parametrize(
    "chunks",
    [
        [b"a\n", b"\nb"],
        [b"a\r", b"\nb\r\n"],
        [b"a\n ", b" \nb\n"],
        [b" ", b"\t\n", b"x"],
        [b"a\r", b"\r", b"\n"],
        [b"x" * 10, b"\n" * 3, b"  "],
    ],
)
def test_line_counter_across_chunk_boundaries(chunks):
    data = b"".join(chunks)
    counter = LineCounter()
    for c in chunks:
        counter.feed(c)
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    assert counter.lines == len(lines)
    assert counter.blank == sum(1 for line in lines if not line.strip(b" \t"))


# --- separators and quoting ----------------------------------------------------------------------
@pytest.mark.parametrize("sep", ["\t", ";", "|", "::", " "])
def test_separators(tmp_path, sep):
    t = read_ratings(write(tmp_path, "r.txt", CSV.replace(",", sep)), "userId", "movieId", "rating")
    same_rows(t)


def test_colon_inside_a_field_of_a_double_colon_file(tmp_path):
    t = read_ratings(write(tmp_path, "r.dat", "a:b::10::5\nc::20::3\nd::10::4\n"))
    assert t.df["user"].tolist() == ["a:b", "c", "d"]


def test_decimal_commas_with_semicolons(tmp_path):
    t = read_ratings(write(tmp_path, "r.csv", "u;i;r\n1;10;3,5\n2;20;4\n3;10;4,5\n"), "u", "i", "r")
    assert t.df["r"].tolist() == [3.5, 4.0, 4.5] and "decimal commas" in t.info.summary()


def test_a_row_with_a_stray_separator_or_quote_names_its_line(tmp_path):
    refused(write(tmp_path, "r.csv", CSV + "5,40,3,9\n6,50,1\n"), "line 7 has 4 field(s)", "'5,40,3,9'")
    refused(write(tmp_path, "q.csv", CSV + '5,"40,3\n6,50,1\n'), "line 7 has 2 field(s)")
    far = CSV + "".join(f"{u},{u % 50},4\n" for u in range(5000)) + "7,8,9,10\n"  # past the sample
    refused(write(tmp_path, "f.csv", far), "field(s) where the other lines have 3", "'7,8,9,10'")


def test_quoted_fields_and_doubled_quotes(tmp_path):
    text = 'user,item,rating\n1,"He said ""hi"", twice",4\n2,"5"" Heels",3\n'
    assert read_ratings(write(tmp_path, "r.csv", text)).df["item"].tolist() == ['He said "hi", twice', '5" Heels']


def test_forced_separator_and_bad_values(tmp_path):
    t = read_ratings(write(tmp_path, "r.csv", "1;2,5;3\n4;5,5;6\n"), sep=";")
    assert t.df["item"].tolist() == ["2,5", "5,5"]
    refused(write(tmp_path, "x.csv", CSV), "sep must be", sep="")
    refused(write(tmp_path, "o.csv", "1\n2\n3\n"), "cannot tell its column separator", "--sep")


def test_columns_by_position_name_and_mistakes(tmp_path):
    path = write(tmp_path, "r.csv", "a,b,c,a\n1,2,3,4\n5,6,7,8\n")
    assert read_ratings(path, 0, "b", 2).df.columns.tolist() == ["a", "b", "c"]
    refused(path, "appears 2 times in the header", user_col="a", item_col="b", rating_col="c")
    refused(path, "must be different columns", user_col="b", item_col="b", rating_col="c")
    refused(path, "position 9 is out of range", rating_col=9)


# --- the command line -----------------------------------------------------------------------------
def test_cli_reports_the_count_and_reads_gzip(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"u": rng.integers(1, 30, 400), "i": rng.integers(1, 40, 400), "r": rng.integers(1, 6, 400)})
    path = write(tmp_path, "r.csv.gz", gzip.compress(df.to_csv(index=False).encode()))
    monkeypatch.setenv("MFSCRATCH_DATA", str(tmp_path / "nodata"))
    rc, out, err = run_cli(capsys, "train", "--epochs", "1", "--bs", "16", "--factors", "2", "--ratings", path)
    assert rc == 0, err
    assert "note: read 400 rows from" in err and "(gzip, utf-8, ','-separated, header: u, i, r): 401 lines" in err


def test_cli_refuses_an_ambiguous_header_with_one_line(tmp_path, monkeypatch, capsys):
    path = write(tmp_path, "r.csv", "1,10,five\n2,20,3\n3,30,5\n")
    rc, _, err = run_cli(capsys, "train", "--quiet", "--ratings", path)
    assert rc == 2
    assert_one_line_error(err, "--no-header")
    rc, _, err = run_cli(capsys, "train", "--quiet", "--ratings", path, "--sep", "klingon")
    assert rc == 2
    assert_one_line_error(err, "sep must be")


def test_every_row_reaches_the_loaders(tmp_path):
    """The count holds end to end: rows read == rows split into training and validation."""
    lines = ["user,item,rating"] + [f"{u},{i},{(u * i) % 5 + 1}" for u in range(1, 40) for i in range(1, 30, 3)]
    t = read_ratings(write(tmp_path, "r.csv", "\r\n".join(lines) + "\r\n\r\n"))
    dls = CollabDataLoaders.from_df(t.df, seed=0)
    assert dls.n_train + dls.n_valid == t.info.n_rows == len(lines) - 1


def test_no_temporary_or_stray_files_are_left(tmp_path):
    path = write(tmp_path, "r.csv.gz", gzip.compress(CSV.encode()))
    read_ratings(path, "userId", "movieId", "rating")
    assert os.listdir(tmp_path) == ["r.csv.gz"]


# --- titles joined to the ratings ------------------------------------------------------------------
def test_items_key_with_two_titles_is_refused(tmp_path):
    from mfscratch.readers import attach_titles

    ratings = read_ratings(write(tmp_path, "r.csv", CSV), "userId", "movieId", "rating")
    items = pd.DataFrame({"key": [10, 10, 20], "title": ["Heat (1995)", "Emma (1996)", "Up (2009)"]})
    with pytest.raises(DataError, match="key 10 has two titles"):
        attach_titles(ratings, items)
    same_twice = pd.DataFrame({"key": [10, 10, 20, 30], "title": ["Heat", "Heat", "Up", "20"]})
    titled = attach_titles(ratings, same_twice.iloc[:3])
    assert titled.df["title"].tolist() == ["Heat", "Up", "Heat", "30", "Up"]
    # an untitled key whose text is another item's title stays apart from it
    collide = pd.DataFrame({"key": [10, 20], "title": ["30", "Up"]})
    assert attach_titles(ratings, collide).df["title"].tolist() == ["30", "Up", "30", "[id 30]", "Up"]
    untitled = pd.DataFrame({"key": [10, 20, 30], "title": ["Heat", None, "  "]})  # never the title "nan"
    assert attach_titles(ratings, untitled).df["title"].tolist() == ["Heat", "20", "Heat", "30", "20"]


def test_ml100k_folder_whose_u_item_lacks_a_movie_is_refused(tmp_path, monkeypatch):
    from robust_helpers import write_fake_ml100k

    from mfscratch.readers import read_movielens

    folder = write_fake_ml100k(tmp_path, n_items=20, n_ratings=200)
    monkeypatch.setenv("MFSCRATCH_DATA", str(tmp_path))
    assert len(read_movielens("ml-100k").df) == 200
    lines = (folder / "u.item").read_text(encoding="latin-1").splitlines(keepends=True)
    (folder / "u.item").write_text("".join(lines[1:]), encoding="latin-1")
    with pytest.raises(DataError, match="lacks 1 movie id"):
        read_movielens("ml-100k")
    (folder / "u.item").write_text("".join(lines + lines[:1]), encoding="latin-1")
    with pytest.raises(DataError, match="lists a movie id twice"):
        read_movielens("ml-100k")


def test_a_repeated_header_name_read_by_position_and_a_giant_first_line(tmp_path):
    t = read_ratings(write(tmp_path, "r.csv", "id,id,rating\n1,2,3\n4,5,6\n"), 0, 1, " 2 ")
    assert t.df.columns.tolist() == ["id", "id (1)", "rating"] and t.df["id (1)"].tolist() == [2, 5]
    refused(write(tmp_path, "g.csv", "x" * 70_000 + "\n1,2,3\n"), "longer than 64 KiB")
