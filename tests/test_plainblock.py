"""plainblock: the block reader's compiled fast path reads plain rows as pyarrow reads them, and hands
anything else to pyarrow."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mfscratch.plainblock import ID, NUMBER, SKIP, parse_plain_block

ROLES = np.array([ID, ID, NUMBER, SKIP])


def _parse(text: str, skip: int = 0, roles=ROLES):
    block = text.encode()
    return parse_plain_block(block, ",", roles, skip, len(block) // len(roles) + 1)


def test_plain_rows_with_a_header_and_without_a_last_line_end():
    rows, ids, rating = _parse("userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n7,0,5.0,\n12,1029,3.25,x", skip=1)
    assert rows == 3
    assert ids.tolist() == [[1, 7, 12], [31, 0, 1029]]
    assert rating.dtype == np.float64 and rating.tolist() == [2.5, 5.0, 3.25]


def test_integer_ratings_stay_integers_as_pyarrow_infers_them():
    rows, _, rating = _parse("1,2,3,9\n4,5,10,9\n")
    assert rows == 2 and rating.dtype == np.int64 and rating.tolist() == [3, 10]


@pytest.mark.parametrize(
    "text",
    [
        "01,2,3.5,1\n",  # an id with a leading zero: another id than 1
        "+1,2,3.5,1\n",  # a sign
        "-1,2,3.5,1\n",
        " 1,2,3.5,1\n",  # spaces
        "1,2,3.5 ,1\n",
        "1,2,3.5,1\r\n",  # CRLF
        "1,2,3.5,1\n\n2,2,3,1\n",  # a blank line
        '1,2,3.5,"1"\n',  # a quote
        "1,2,3.,1\n",  # a point without digits after it
        "1,2,.5,1\n",
        "1,2,05,1\n",  # a leading zero in the rating
        "1,2,1e5,1\n",  # an exponent
        "1,2,nan,1\n",
        "1,2,,1\n",  # a missing rating
        ",2,3,1\n",  # a missing id
        "1,2,3.5\n",  # too few fields
        "1,2,3.5,1,1\n",  # too many
        "1234567890123456789,2,3,1\n",  # 19 digits: beyond the fast path's ids
        "1,2,1234567890.123456,1\n",  # 16 digits: beyond exact float64 parsing
        "1,2,3,\x7f\n",  # a control byte in a skipped field
        "1,2,3,caf\xe9\n",  # text beyond ASCII in a skipped field
    ],
)
@pytest.mark.parametrize("where", ["alone", "amid plain rows"])
def test_anything_else_goes_to_pyarrow(text, where):
    if where == "amid plain rows":  # read in 8-byte words, not in the short copy of the block's end
        text = "1,2,3.5,1\n" * 40 + text + "4,5,3,2\n" * 40
    assert _parse(text) is None


def test_random_plain_rows_as_python_reads_them():
    """Ids of 1 to 18 digits, ratings of up to 15 digits with or without a point, skipped fields of any
    printable text: the word-at-a-time reading gives what a plain Python split gives, wherever a row
    falls against the 8-byte words and the block's end."""
    rng = np.random.default_rng(11)
    printable = [chr(c) for c in range(32, 127) if chr(c) not in ',"']

    def number(digits: int) -> str:
        first = str(rng.integers(1, 10)) if digits > 1 else str(rng.integers(0, 10))
        return first + "".join(str(d) for d in rng.integers(0, 10, digits - 1))

    for _ in range(30):
        lines = []
        for _ in range(int(rng.integers(1, 60))):
            whole = int(rng.integers(1, 9))
            point = rng.random() < 0.7
            decimals = int(rng.integers(1, 16 - whole)) if point else 0
            rating = number(whole) + ("." + "".join(str(d) for d in rng.integers(0, 10, decimals)) if point else "")
            skipped = "".join(rng.choice(printable, int(rng.integers(0, 20))))
            lines.append(f"{number(int(rng.integers(1, 19)))},{number(int(rng.integers(1, 19)))},{rating},{skipped}")
        text = "\n".join(lines) + ("\n" if rng.random() < 0.5 else "")
        rows, ids, rating = _parse(text)
        fields = [line.split(",") for line in lines]
        assert rows == len(lines)
        assert ids.tolist() == [[int(f[0]) for f in fields], [int(f[1]) for f in fields]]
        points = any("." in f[2] for f in fields)
        assert rating.dtype == (np.float64 if points else np.int64)
        assert rating.tolist() == [float(f[2]) if points else int(f[2]) for f in fields]


def test_decimal_ratings_round_as_a_correct_parse():
    rng = np.random.default_rng(0)
    tokens = []
    for _ in range(3000):
        whole = int(rng.integers(1, 8))
        decimals = int(rng.integers(1, 16 - whole))
        first = str(int(rng.integers(1, 10))) if whole > 1 else str(int(rng.integers(0, 10)))
        rest = "".join(str(d) for d in rng.integers(0, 10, whole - 1 + decimals))
        tokens.append(first + rest[: whole - 1] + "." + rest[whole - 1 :])
    text = "".join(f"1,2,{t},0\n" for t in tokens)
    rows, _, rating = _parse(text)
    assert rows == len(tokens)
    assert rating.tolist() == [float(t) for t in tokens]  # Python's float() rounds correctly


@pytest.mark.parametrize(
    "body",
    [
        "plain",
        "integer ratings",
        "a late leading zero",
        "a late quote",
        "a late blank line",
        "late CRLF line ends",
        "blank lines at the end",
        "no last line end",
    ],
)
def test_the_fast_path_reads_files_as_pyarrow_does(monkeypatch, tmp_path, body):
    from mfscratch import plainblock, tablefile
    from mfscratch.readers import read_ratings
    from mfscratch.textstream import count_lines

    rng = np.random.default_rng(5)
    n = 400
    users, items = rng.integers(1, 60, n), rng.integers(1, 45, n)
    ratings = rng.integers(1, 11, n) / 2 if body != "integer ratings" else rng.integers(1, 6, n)
    lines = [f"{u},{i},{r},{t}" for u, i, r, t in zip(users, items, ratings, rng.integers(0, 10**9, n))]
    if body == "a late leading zero":
        lines[-3] = "07,3,4.5,1"
    elif body == "a late quote":
        lines[-3] = '7,3,4.5,"1"'
    elif body == "a late blank line":
        lines.insert(-3, "")
    elif body == "late CRLF line ends":
        lines[-40:] = [line + "\r" for line in lines[-40:]]
    elif body == "blank lines at the end":
        lines += ["", " ", ""]
    text = "userId,movieId,rating,timestamp\n" + "\n".join(lines) + ("" if body == "no last line end" else "\n")
    path = tmp_path / "r.csv"
    path.write_bytes(text.encode())
    monkeypatch.setattr(tablefile, "_STREAM_BLOCK", 256)
    fast_blocks = []
    parse = plainblock.parse_plain_block

    def counted(*args):
        out = parse(*args)
        fast_blocks.append(out is not None)
        return out

    monkeypatch.setattr(plainblock, "parse_plain_block", counted)
    fast = read_ratings(path, "userId", "movieId", "rating")
    assert any(fast_blocks)
    monkeypatch.setattr(plainblock, "parse_plain_block", lambda *a: None)
    slow = read_ratings(path, "userId", "movieId", "rating")
    pd.testing.assert_frame_equal(fast.df, slow.df)
    assert fast.info == slow.info
    # The lines the fast path counted from its rows are those of a pass over the file's bytes.
    counter = count_lines(path)
    assert (fast.info.n_lines, fast.info.n_blank) == (counter.lines, counter.blank)
    whole = pd.read_csv(path, dtype={"userId": str, "movieId": str})
    assert len(fast.df) == len(whole.dropna(how="all"))
