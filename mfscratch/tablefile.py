"""Reading some columns of one table file of any dialect, every line accounted for.

:func:`read_columns` reads a CSV, TSV, ``;``/``|``/``::``-separated, whitespace-separated or
Parquet file, compressed or not, in any of the encodings of :mod:`mfscratch.textstream`:

1. **format and compression** from the first bytes (``textstream.compression_of``);
2. **encoding**: a byte-order mark, else UTF-8, cp1252, latin-1 in that order (``encoding=`` forces one);
3. **separator** and 4. **header**, from the first 64 KiB and on the evidence of many lines
   (:mod:`mfscratch.sniff`; ``sep=`` and ``header=`` force them); column names over a first line
   that is data are refused;
5. **parse**: pyarrow's multi-threaded CSV reader where installed (pandas' C parser otherwise, and for
   whitespace); id columns are read as text and typed by :func:`mfscratch.ids.parse_ids`; a
   rating column written with decimal commas (``3,5`` in a ``;`` file) is read as numbers;
6. **count**: the lines of the file are counted as they stream past, and the rows read plus the
   header and the blank lines must equal them (:class:`TableInfo` reports the sum), so that no row
   is lost unseen. A quoted field never spans lines: a row with the wrong number of fields (an
   unbalanced ``"``, a stray separator) stops the read with its text.
"""

from __future__ import annotations

import codecs
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import plainblock
from . import textstream as ts
from .errors import ConfigError, DataError
from .ids import parse_ids
from .sniff import (
    WHITESPACE,
    bad_row,
    fields,
    header_end,
    one_line,
    sample_lines,
    sep_name,
    sniff_header,
    sniff_separator,
)

__all__ = ["TableInfo", "read_columns"]

_DECIMAL_COMMA = r"\s*[+-]?\d+(,\d+)?\s*"
_DAMAGED = (EOFError, OSError)  # a compressed stream that breaks off or fails its checksum


@dataclass(frozen=True)
class TableInfo:
    """How a file was read, and the count of its lines: ``n_lines == n_rows + header + n_blank``."""

    source: str
    n_rows: int
    compression: str | None = None
    encoding: str | None = None
    sep: str | None = None
    header: tuple | None = None
    n_lines: int | None = None
    n_blank: int = 0
    notes: tuple = ()

    def summary(self) -> str:
        """One line: ``read 20,000 rows from r.csv.gz (gzip, utf-8, ','-separated, header ...): 20,001 lines = ...``."""
        if self.n_lines is None:
            return f"read {self.n_rows:,} row{'' if self.n_rows == 1 else 's'} from {self.source} (Parquet)"
        how = [self.compression or "", self.encoding or "", f"{sep_name(self.sep)}-separated"]
        how.append(f"header: {', '.join(map(str, self.header))}" if self.header else "no header")
        rows = f"{self.n_rows:,} row{'' if self.n_rows == 1 else 's'}"
        parts = [rows] + (["1 header line"] if self.header else [])
        parts += [f"{self.n_blank:,} blank line(s) skipped"] if self.n_blank else []
        notes = "; " + "; ".join(self.notes) if self.notes else ""
        return (
            f"read {rows} from {self.source} ({', '.join(h for h in how if h)}): "
            f"{self.n_lines:,} lines = {' + '.join(parts)}{notes}"
        )


@dataclass
class _Plan:
    """What the caller asks for: the columns (``specs``, their ``kinds`` and ``roles``) and any forced choices."""

    specs: list
    kinds: list
    roles: list
    header: bool | None
    sep: str | None
    what: str
    arrow: bool
    narrow_ids: bool = False


@dataclass
class _Layout:
    """What the first 64 KiB say: the separator, the fields, the header and where the asked columns are."""

    sep: str
    n_fields: int
    header: list[str] | None
    header_line: int  # 1-based line number of the header, 0 without one
    header_end: int  # byte offset just past the header line
    names: list | None
    positions: list[int]
    kinds: list = field(default_factory=list)

    @property
    def wanted(self) -> dict:
        """``{position: kind}`` of the columns to read."""
        return dict(zip(self.positions, self.kinds))


# --- resolving the columns asked for -------------------------------------------------------------
def _resolve(spec, names: list | None, n_fields: int, role: str, path) -> int:
    """The 0-based position of ``spec`` (a position or a header name)."""
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        if not 0 <= spec < n_fields:
            raise DataError(
                f"{path}: {role} column position {spec} is out of range; the file has {n_fields} "
                f"columns (0-based positions 0..{n_fields - 1})"
            )
        return int(spec)
    if names is None:
        raise DataError(
            f"{path}: {role} column {spec!r} is a name, but the file has no header line; "
            "give its 0-based position, or --header if the first line does name the columns"
        )
    hits = [j for j, n in enumerate(names) if n == spec]
    if len(hits) > 1:
        raise DataError(f"{path}: {role} column {spec!r} appears {len(hits)} times in the header; give its position")
    if not hits:
        raise DataError(f"{path}: {role} column {spec!r} not found; its columns are {[str(n) for n in names]}")
    return hits[0]


def _positions(plan: _Plan, names: list | None, n_fields: int, path) -> list[int]:
    positions = [_resolve(s, names, n_fields, r, path) for s, r in zip(plan.specs, plan.roles)]
    if len(set(positions)) < len(positions):
        shown = [names[p] if names else p for p in positions]
        raise DataError(f"{path}: {', '.join(plan.roles)} must be different columns, got {shown}")
    return positions


def _column_names(header: list[str] | None, n_fields: int) -> list | None:
    if header is None:
        return None
    padded = header + [""] * (n_fields - len(header))
    return [h if h else f"column_{j}" for j, h in enumerate(padded)]


# --- parsing -------------------------------------------------------------------------------------
def _typed(column, kind: str) -> pd.Series:
    if isinstance(column, np.ndarray):  # typed block by block already (_stream_arrow)
        return pd.Series(column, copy=False)
    if kind == "id":
        return parse_ids(column)
    series = column if isinstance(column, pd.Series) else column.to_pandas()
    return series.reset_index(drop=True)


class _Fallback(Exception):
    """The fast reader cannot read this dialect (a ``::`` file with ``:`` inside a field)."""


def _parse_arrow(source, sep: str, n_fields: int, wanted: dict, path, skip_rows: int = 0) -> tuple[dict, int]:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    colon = sep == "::"
    physical = 2 * n_fields - 1 if colon else n_fields
    at = (lambda j: 2 * j) if colon else (lambda j: j)
    names = [f"f{j}" for j in range(physical)]
    include = [names[at(j)] for j in wanted] + ([names[j] for j in range(1, physical, 2)] if colon else [])
    bad = []

    def on_bad_row(row):
        if not row.text.strip(" \t\r\n"):
            return "skip"  # a line of spaces: counted among the blank lines
        bad.append(row)
        return "error"

    try:
        table = pcsv.read_csv(
            source,
            read_options=pcsv.ReadOptions(column_names=names, skip_rows=skip_rows, block_size=1 << 22),
            parse_options=pcsv.ParseOptions(
                delimiter=":" if colon else sep, newlines_in_values=False, invalid_row_handler=on_bad_row
            ),
            convert_options=pcsv.ConvertOptions(
                include_columns=include,
                column_types={names[at(j)]: pa.string() for j, kind in wanted.items() if kind != "number"},
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
            ),
        )
    except pa.ArrowInvalid as e:
        if str(e).startswith("Empty CSV file"):
            return {}, 0  # nothing but blank lines below the header: counted, then refused as "no rows"
        if "UTF8" in str(e) or "UTF-8" in str(e):
            raise ts.WrongEncoding("utf-8", None, "invalid UTF-8") from None
        if bad and colon:
            raise _Fallback from None  # a ':' inside a field of a '::' file
        if bad:
            raise bad_row(path, bad[0].expected_columns, bad[0].actual_columns, bad[0].text) from None
        raise DataError(f"{path}: cannot parse it ({one_line(e)})") from None
    if colon and any(table[names[j]].null_count != len(table) for j in range(1, physical, 2)):
        raise _Fallback
    return {j: table[names[at(j)]] for j in wanted}, len(table)


_INT32_MIN, _INT32_MAX = int(np.iinfo(np.int32).min), int(np.iinfo(np.int32).max)
#: Bytes of a file that :func:`_stream_arrow` parses at a time: each block in flight holds its text, its parsed
#: columns and its ids (about 10x its size in all), so the blocks stay small; 2 MiB blocks still make few calls.
_STREAM_BLOCK = 1 << 21
#: Threads that parse blocks at once (each also uses pyarrow's own threads).
_STREAM_WORKERS = 4
#: The block reader's first guess of the bytes a row (its id arrays start with the file's bytes / this many
#: rows, and grow when there are more): ML-25M's ``ratings.csv`` has 27 bytes a row.
_STREAM_BYTES_PER_ROW = 16


def _line_blocks(source: str, size: int):
    """The file's bytes in blocks of about ``size`` bytes, each ending at a line end (the last one
    at the file's end), as zero-copy Arrow buffers."""
    import pyarrow as pa

    with open(source, "rb", buffering=0) as f:
        carry = b""
        while True:
            # Each block is a buffer of its own (the workers hold it while they parse); the cut-off line
            # of the previous one goes first, and the file's next bytes are read in behind it.
            data = bytearray(len(carry) + size)
            data[: len(carry)] = carry
            end = len(carry)
            while end < len(data) and (got := f.readinto(memoryview(data)[end:])):
                end += got
            if end == len(carry):  # the file's end
                if carry:
                    yield pa.py_buffer(carry)
                return
            cut = data.rfind(b"\n", 0, end) + 1
            if cut == 0:  # no line end yet: read on
                carry = bytes(data[:end])
                continue
            yield pa.py_buffer(memoryview(data)[:cut])
            carry = bytes(data[cut:end])


def _stream_arrow(
    source: str,
    sep: str,
    n_fields: int,
    wanted: dict,
    skip_rows: int,
    capacity: int,
    narrow_ids: bool = False,
    counter: ts.LineCounter | None = None,
    bom: int = 0,
):
    """``(columns, n_rows)`` of a plain UTF-8 file read block by block (blocks of :data:`_STREAM_BLOCK`
    bytes cut at line ends; plain numeric rows by ``plainblock``'s compiled pass, other blocks by
    pyarrow's parser, their id tokens parsed at once into int64 arrays by ``ids.parse_ids``'
    plain-integer rule): the ids' text, 10 bytes a token and more, is never held for the whole file,
    and the table is not read twice. ``capacity``: the rows the id arrays start with (they grow when
    the file holds more). ``narrow_ids``: the id arrays are int32 while every id fits (half the
    memory); a column is widened to int64 at the first block that holds an id that does not.
    ``counter``: counts every block's lines in file order (after the ``bom`` bytes of a byte-order
    mark), so that it has counted the file's lines when the read completes: a block that the fast path
    read by the parser's lines (each of its lines is one row: no blank line, no ``\r``), any other by
    a pass over its bytes.

    ``None`` when a block holds anything else, so that the whole-file reader reads it as before and
    says what is wrong: an id that is missing or not a plain integer, a rating column whose type
    changes from block to block, a row of the wrong width, text that is not UTF-8.
    """
    import pyarrow as pa
    import pyarrow.csv as pcsv

    from .ids import _arrow_ints

    names = [f"f{j}" for j in range(n_fields)]

    def on_bad_row(row):
        return "skip" if not row.text.strip(" \t\r\n") else "error"  # a line of spaces is blank

    parse = pcsv.ParseOptions(delimiter=sep, newlines_in_values=False, invalid_row_handler=on_bad_row)
    convert = pcsv.ConvertOptions(
        include_columns=[names[j] for j in wanted],
        column_types={names[j]: pa.string() for j, kind in wanted.items() if kind != "number"},
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )
    id_type = np.int32 if narrow_ids else np.int64
    ids: dict[int, np.ndarray] = {j: np.empty(capacity, dtype=id_type) for j, kind in wanted.items() if kind == "id"}
    others: dict = {j: [] for j, kind in wanted.items() if kind != "id"}
    numbers: dict = {}  # other column: its values so far as one array, or False once it holds something else

    # The fast path (plainblock) reads blocks of plain numeric rows; its roles: None when a wanted column is
    # neither an id nor a number, or more than one is a number.
    roles = np.array([plainblock.SKIP] * n_fields)
    for j, kind in wanted.items():
        roles[j] = plainblock.ID if kind == "id" else plainblock.NUMBER if kind == "number" else -1
    plain_roles = roles if (roles >= 0).all() and (roles == plainblock.NUMBER).sum() <= 1 else None
    id_columns = sorted(j for j, kind in wanted.items() if kind == "id")
    number_columns = [j for j in wanted if j not in id_columns]

    def parse_block(first: bool, block) -> tuple[int, dict, dict, bool] | None:
        """``(rows, {id column: int64 values}, {other column: Arrow chunks}, plain)`` of one block, or
        ``None`` when an id is missing or not a plain integer. A block of plain rows is read by the
        compiled fast path (``plainblock``; ``plain`` True: each of its lines is one row), any other by
        pyarrow. Runs in a worker thread: both parsers and the compiled id parse release the GIL."""
        if plain_roles is not None:
            plain = plainblock.parse_plain_block(
                block, sep, plain_roles, skip_rows if first else 0, len(block) // n_fields + 1
            )
            if plain is not None:
                rows, id_values, rating = plain
                chunks = {j: [pa.array(rating)] for j in number_columns}
                return rows, {j: id_values[slot] for slot, j in enumerate(id_columns)}, chunks, True
        read = pcsv.ReadOptions(column_names=names, skip_rows=skip_rows if first else 0)
        table = pcsv.read_csv(pa.BufferReader(block), read_options=read, parse_options=parse, convert_options=convert)
        parsed_ids, chunks = {}, {}
        for j in wanted:
            column = table.column(names[j])
            if j not in ids:
                chunks[j] = column.chunks
                continue
            parsed = _arrow_ints(column)
            if parsed is None or parsed[1].any():
                return None
            parsed_ids[j] = parsed[0]
        return table.num_rows, parsed_ids, chunks, False

    n_rows = 0

    def count(first: bool, block, plain: bool, n: int) -> None:
        """Count the block's lines: a block the fast path read, from its ``n`` rows; the first block
        (which may hold a header) and any other, by a pass over its bytes."""
        if counter is None:
            return
        if plain and not first and n > 0 and counter.at_line_start():
            counter.add_plain_lines(n, block[-1] != 10)  # no line feed at the end: the file's last line
        else:
            counter.feed(memoryview(block)[bom if first else 0 :])

    def take(first: bool, block, result: tuple[int, dict, dict, bool] | None) -> bool:
        """Append a parsed block's rows and count its lines; ``False`` when it is ``None``."""
        nonlocal n_rows
        if result is None:
            return False
        n, parsed_ids, chunks, plain = result
        count(first, block, plain, n)
        if n_rows + n > len(next(iter(ids.values()), ())):
            for j, values in ids.items():
                grown = np.empty(max(2 * len(values), n_rows + n), dtype=values.dtype)
                grown[:n_rows] = values[:n_rows]
                ids[j] = grown
        for j, values in parsed_ids.items():
            if (
                ids[j].dtype == np.int32
                and len(values)
                and not (_INT32_MIN <= values.min() <= values.max() <= _INT32_MAX)
            ):
                widened = np.empty(len(ids[j]), dtype=np.int64)  # an id beyond int32: int64 from now on
                widened[:n_rows] = ids[j][:n_rows]
                ids[j] = widened
            ids[j][n_rows : n_rows + n] = values
        for j, column_chunks in chunks.items():
            if not _take_numbers(j, column_chunks, n):
                others[j].extend(column_chunks)
        n_rows += n
        return True

    def _take_numbers(j: int, column_chunks: list, n: int) -> bool:
        """Copy a block's int64 or float64 chunks without nulls into column ``j``'s one NumPy array (made
        at the first block with the id arrays' capacity, grown like them), so that the file's numbers are
        never held twice (chunks and array) and no block's chunks outlive it. ``False`` once the column
        holds anything else (a null, another type): from then on its chunks are kept whole, as before,
        and the array so far goes back into chunks."""
        values = numbers.get(j)
        if values is False:
            return False
        kind = column_chunks[0].type if column_chunks else None
        if (
            kind not in (pa.int64(), pa.float64())
            or any(c.type != kind or c.null_count for c in column_chunks)
            or (values is not None and values.dtype != kind.to_pandas_dtype())
        ):
            if values is not None:  # what is copied so far becomes a chunk again, in file order
                others[j].append(pa.array(values[:n_rows]))
            numbers[j] = False
            return False
        if values is None or n_rows + n > len(values):
            grown = np.empty(
                max(capacity, 2 * (0 if values is None else len(values)), n_rows + n), kind.to_pandas_dtype()
            )
            if values is not None:
                grown[:n_rows] = values[:n_rows]
            numbers[j] = values = grown
        pos = n_rows
        for chunk in column_chunks:
            values[pos : pos + len(chunk)] = chunk.to_numpy()
            pos += len(chunk)
        return True

    pool = pa.default_memory_pool()
    workers = min(_STREAM_WORKERS, os.cpu_count() or 1)
    try:
        with ThreadPoolExecutor(max_workers=workers) as executor:
            pending: deque = deque()
            blocks = _line_blocks(source, _STREAM_BLOCK)
            for n_blocks, block in enumerate(blocks, 1):
                # At most workers + 1 blocks in flight: the blocks are parsed in parallel, used in file order.
                first = n_blocks == 1
                pending.append((first, block, executor.submit(parse_block, first, block)))
                del block
                while len(pending) > workers or (pending and pending[0][2].done()):
                    first, block, parsed = pending.popleft()
                    if not take(first, block, parsed.result()):
                        return None
                    del block, parsed
                if n_blocks % 8 == 0:
                    pool.release_unused()  # Arrow's allocator keeps freed blocks otherwise (each call costs)
            while pending:
                first, block, parsed = pending.popleft()
                if not take(first, block, parsed.result()):
                    return None
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    finally:
        pool.release_unused()
    if n_rows == 0 or any(len({c.type for c in chunks}) > 1 for chunks in others.values()):
        return None
    columns: dict = {j: values[:n_rows] for j, values in ids.items()}
    for j, values in numbers.items():
        if values is not False:
            columns[j] = values[:n_rows]
    for j, chunks in others.items():
        if j in columns:
            continue
        columns[j] = _numbers(chunks, n_rows) if chunks[0].type in (pa.int64(), pa.float64()) else None
        if columns[j] is None:
            columns[j] = pa.chunked_array(chunks)
    return columns, n_rows


def _numbers(chunks: list, n_rows: int):
    """A column of int64 or float64 chunks without nulls as one NumPy array, each chunk dropped once copied
    (what ``to_pandas`` gives, without holding the column twice); ``None`` when some value is null."""
    if any(c.null_count for c in chunks):
        return None
    out = np.empty(n_rows, dtype=chunks[0].type.to_pandas_dtype())
    pos = 0
    while chunks:
        chunk = chunks.pop(0)
        out[pos : pos + len(chunk)] = chunk.to_numpy()
        pos += len(chunk)
    return out


def _parse_pandas(stream, sep: str, n_fields: int, wanted: dict, path) -> tuple[dict, int]:
    try:
        df = pd.read_csv(
            stream,
            sep=sep,
            header=None,
            names=list(range(n_fields)),
            usecols=list(wanted),
            dtype={j: "str" for j, kind in wanted.items() if kind != "number"},
            keep_default_na=False,
            na_values=[""],
            skip_blank_lines=True,
            engine="python" if sep == "::" else "c",
            encoding="utf-8",
        )
    except UnicodeDecodeError as e:
        raise ts.WrongEncoding("utf-8", e.start, e.reason) from None
    except (pd.errors.ParserError, ValueError) as e:
        raise DataError(f"{path}: cannot parse it ({one_line(e)}); check that line's separators and quotes") from None
    if sep == WHITESPACE:  # pandas keeps a line of spaces as an empty row when lines end in '\r': blank, counted
        df = df.dropna(how="all").reset_index(drop=True)
    return {j: df[j] for j in wanted}, len(df)


def _decimal_commas(column: pd.Series) -> pd.Series | None:
    """A text column of numbers written with decimal commas (``3,5``), as numbers; else ``None``."""
    if column.dtype.kind in "biufc" or not len(column):
        return None
    text = column.dropna().astype(str)
    if not len(text) or not text.str.fullmatch(_DECIMAL_COMMA).all() or not text.str.contains(",").any():
        return None
    return pd.to_numeric(column.astype(str).str.replace(",", ".", regex=False).where(column.notna()))


def _layout(stream: ts.Utf8Stream, path: Path, plan: _Plan) -> _Layout:
    """Separator, fields, header and the positions asked for, from the first 64 KiB of ``stream``."""
    sample = stream.peek(ts.SAMPLE_BYTES)
    lines = sample_lines(sample, len(sample) < ts.SAMPLE_BYTES and stream.exhausted)
    if not lines and len(sample) == ts.SAMPLE_BYTES:
        raise DataError(f"{path}: its first line is longer than 64 KiB, so it is not a table of ratings or items")
    if not lines:
        raise DataError(f"{plan.what} file {path} is empty; it needs at least one row")
    sep = plan.sep or sniff_separator(lines, path)
    rows = [fields(line, sep) for _, line in lines]
    n_fields = max(len(r) for r in rows)
    rows = [r + [""] * (n_fields - len(r)) for r in rows]
    has_header = plan.header
    if has_header is None:
        has_header = sniff_header(rows, path)
        if not has_header and any(isinstance(s, str) for s in plan.specs):
            named = ", ".join(repr(s) for s in plan.specs if isinstance(s, str))
            raise DataError(
                f"{path}: columns are named ({named}) but its first line {lines[0][1][:60]!r} is data, not a "
                "header; give 0-based positions, or --header if that line does name the columns"
            )
    header = rows[0] if has_header else None
    names = _column_names(header, n_fields)
    return _Layout(
        sep,
        n_fields,
        header,
        lines[0][0] if has_header else 0,
        header_end(sample) if has_header else 0,
        names,
        _positions(plan, names, n_fields, path),
        plan.kinds,
    )


def _parse(stream: ts.Utf8Stream, path: Path, compression, encoding: str, plan: _Plan, lay: _Layout):
    """``(columns, n_rows, counter)``: pyarrow straight from the file for plain UTF-8 (counting the lines
    in a pass of their own), else either parser on the decoded stream, which counts as it goes."""
    arrow = plan.arrow and lay.sep != WHITESPACE
    if arrow and compression is None and encoding in ("utf-8", "utf-8-sig"):
        stream.close()
        streamed = None
        if lay.sep != "::" and "id" in lay.wanted.values():
            # The lines are counted from the blocks as they are read (the file is read once); when the block
            # reader gives up part-way, in a pass of their own.
            counter = ts.LineCounter()
            capacity = path.stat().st_size // _STREAM_BYTES_PER_ROW + 1
            streamed = _stream_arrow(
                str(path), lay.sep, lay.n_fields, lay.wanted, lay.header_line, capacity, plan.narrow_ids,
                counter, stream.skipped,
            )  # fmt: skip
            if streamed is None:
                counter = ts.count_lines(path, skip=stream.skipped)
            elif streamed[1] > counter.lines:
                streamed = None  # more rows than lines: the whole-file reader says what is wrong
        else:
            counter = ts.count_lines(path, skip=stream.skipped)
        if streamed is not None:
            columns, n_rows = streamed
        else:
            columns, n_rows = _parse_arrow(str(path), lay.sep, lay.n_fields, lay.wanted, path, lay.header_line)
        return columns, n_rows, counter
    if lay.header is not None:
        stream.discard(lay.header_end)
    columns, n_rows = (_parse_arrow if arrow else _parse_pandas)(stream, lay.sep, lay.n_fields, lay.wanted, path)
    stream.read()  # anything the parser left (nothing, normally), so that every line is counted
    return columns, n_rows, stream.counter


def _read_text(path: Path, compression, encoding: str, bom: int, head: bytes, raw, plan: _Plan) -> tuple:
    """One attempt at reading the file as ``encoding``: ``(DataFrame, TableInfo)``; ``raw`` is past ``head``."""
    stream = ts.Utf8Stream(raw, head, encoding, bom)
    try:
        lay = _layout(stream, path, plan)
        columns, n_rows, counter = _parse(stream, path, compression, encoding, plan, lay)
    except _DAMAGED as e:
        raise ts.read_damaged(path, compression, e) from None
    finally:
        stream.close()
    has_header = lay.header is not None
    expected = counter.lines - counter.blank - (1 if has_header else 0)
    if n_rows != expected:
        raise DataError(
            f"{path}: {counter.lines:,} lines hold {expected:,} data lines but {n_rows:,} rows were read; "
            "a quoted field probably spans lines (an unbalanced '\"'): fix the quoting"
        )
    if n_rows == 0:
        raise DataError(f"{plan.what} file {path} has no rows" + (" below its header" if has_header else ""))
    out, notes = {}, []
    for pos, kind in zip(lay.positions, plan.kinds):
        column = _typed(columns[pos], kind)
        if kind == "number" and (fixed := _decimal_commas(column)) is not None:
            column = fixed
            notes.append(f"decimal commas in column {pos} read as decimal points")
        key = lay.names[pos] if lay.names else pos
        out[f"{key} ({pos})" if key in out else key] = column  # a header may repeat a name
    info = TableInfo(
        str(path),
        n_rows,
        compression,
        encoding.replace("-sig", ""),
        lay.sep,
        tuple(lay.header) if lay.header else None,
        counter.lines,
        counter.blank,
        tuple(notes),
    )
    return pd.DataFrame(out, copy=False), info


def _read_parquet(path: Path, plan: _Plan) -> tuple:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("reading Parquet needs pyarrow: pip install 'mfscratch[parquet]'") from None
    try:
        names = pq.read_schema(path).names
        positions = _positions(plan, names, len(names), path)
        table = pq.read_table(path, columns=[names[p] for p in dict.fromkeys(positions)])
    except DataError:
        raise
    except Exception as e:  # pyarrow raises its own error types for damaged files
        raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {one_line(e)})") from None
    import pyarrow as pa

    out = {}
    for pos, kind in zip(positions, plan.kinds):
        column = table[names[pos]]
        is_text = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
        out[names[pos]] = _typed(column, "id" if kind == "id" and is_text else "as typed")
    if table.num_rows == 0:
        raise DataError(f"{plan.what} file {path} has no rows")
    return pd.DataFrame(out, copy=False), TableInfo(str(path), table.num_rows, header=tuple(names))


def _has_arrow() -> bool:
    try:
        import pyarrow.csv  # noqa: F401
    except ImportError:
        return False
    return True


def read_columns(
    path,
    specs,
    kinds,
    roles=None,
    header: bool | None = None,
    encoding: str | None = None,
    sep: str | None = None,
    what: str = "ratings",
    narrow_ids: bool = False,
) -> tuple[pd.DataFrame, TableInfo]:
    """Columns ``specs`` (0-based positions or header names) of the table file at ``path``.

    ``kinds``: ``"id"`` (typed by :func:`~mfscratch.ids.parse_ids`), ``"text"`` or ``"number"``
    (inferred; a column that is not all numbers stays text for the caller to report). ``roles``
    name the columns in messages. The DataFrame's columns are the header names (positions when the
    file has none), in the order asked. ``narrow_ids``: a plain UTF-8 file of integer ids read block by block
    gives its id columns as int32 where every id fits (half the memory of int64, for a table read only to
    be encoded); every other reader gives int64 as always. See the module docstring for everything else.
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise DataError(f"the {what} file must be given as a path, got {path!r}")
    path = Path(path)
    if not path.is_file():
        exists = "is a folder" if path.is_dir() else "is not a regular file" if path.exists() else "does not exist"
        raise DataError(f"{what} file {path} {exists}; give the path of a CSV, TSV or Parquet file")
    if header is not None and not isinstance(header, bool):
        raise ConfigError(f"header must be True, False or None (detect), got {header!r}")
    if encoding is not None:
        try:
            encoding = codecs.lookup(encoding).name
        except (LookupError, TypeError):
            raise ConfigError(f"unknown encoding {encoding!r}; give a codec name such as utf-8 or latin-1") from None
    if sep is not None and (not isinstance(sep, str) or not sep.strip(" ") and sep != "\t" or len(sep) > 2):
        raise ConfigError(f"sep must be one or two characters such as ',' or '::' ('\\t' for tab), got {sep!r}")
    roles = list(roles or [f"column {s}" for s in specs])
    plan = _Plan(list(specs), list(kinds), roles, header, sep, what, _has_arrow(), narrow_ids)
    compression = ts.compression_of(path)
    if compression == "parquet":
        return _read_parquet(path, plan)
    tried: list[str] = []
    while True:
        raw = ts.open_decompressed(path, compression)
        try:
            head = raw.read(ts.SAMPLE_BYTES)
        except _DAMAGED as e:
            raw.close()
            raise ts.read_damaged(path, compression, e) from None
        found, bom = ts.sniff_encoding(head, path) if encoding is None else (encoding, 0)
        if encoding == "utf-8" and head.startswith(codecs.BOM_UTF8):
            bom = len(codecs.BOM_UTF8)
        at_end = len(head) < ts.SAMPLE_BYTES
        candidates = [found] if found else [e for e in ts.ENCODINGS if e not in tried and ts.decodes(head, e, at_end)]
        if not candidates:
            raw.close()
            raise DataError(f"{path} does not decode as {', '.join(tried)}; give its encoding (--encoding NAME)")
        try:
            return _read_text(path, compression, candidates[0], bom, head, raw, plan)
        except ts.WrongEncoding as e:
            if found:
                at = f" (byte {e.position:,})" if e.position is not None else ""
                raise DataError(
                    f"{path} is not valid {e.encoding}{at}; give its encoding (--encoding NAME, e.g. latin-1 or cp1252)"
                ) from None
            tried.append(candidates[0])
        except _Fallback:
            plan.arrow = False
