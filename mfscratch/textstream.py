"""A text file as a stream of UTF-8 bytes, whatever its compression and encoding, with every line counted.

Compression is told by the file's first bytes (its magic number), never by its suffix: gzip
(``1f 8b``), bz2 (``BZh``), xz (``fd 37 7a 58 5a 00``), zip (``PK``, one member) and zstd
(``28 b5 2f fd``, through pyarrow or the ``zstandard`` package). Parquet (``PAR1``) is recognised
here too, so that the caller can read it as Parquet whatever it is called.

Encodings, in this order (:data:`ENCODINGS`): a byte-order mark decides (UTF-8, UTF-16 or UTF-32);
without one, UTF-16 is recognised by its NUL bytes; otherwise UTF-8, then cp1252 (Windows'
Western encoding: Excel's "CSV"), then latin-1, which decodes any byte. The first encoding that
decodes the file's first 64 KiB is tried on the whole file; a reader that meets a byte it cannot
decode later tries the next one (:class:`WrongEncoding`). ``encoding=`` forces one.

:class:`Utf8Stream` hands the decoded text on as UTF-8 bytes (so that pyarrow's and pandas'
parsers see one encoding) and counts the lines it hands on: a line ends at ``\\n``, ``\\r\\n`` or
``\\r``; a *blank* line holds nothing but spaces and tabs. The count is exact and cheap: chunks
without carriage returns, empty lines or lines starting with a space or tab (nearly all of them)
are counted by a vectorised scan; the others by a compiled loop that follows every byte.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import lzma
import zipfile
import zlib
from pathlib import Path

import numpy as np
from numba import njit

from .errors import ConfigError, DataError

__all__ = [
    "ENCODINGS",
    "SAMPLE_BYTES",
    "WrongEncoding",
    "Utf8Stream",
    "compression_of",
    "open_decompressed",
    "count_lines",
]

#: Tried in this order when no byte-order mark or ``encoding=`` decides.
ENCODINGS = ("utf-8", "cp1252", "latin-1")
#: How much of the (decompressed) file is read to choose the encoding, separator and header.
SAMPLE_BYTES = 1 << 16
_CHUNK = 1 << 22

_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bz2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"PK\x03\x04", "zip"),
    (b"PK\x05\x06", "zip"),
    (b"(\xb5/\xfd", "zstd"),
    (b"PAR1", "parquet"),
)
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_DAMAGED = (EOFError, OSError, zlib.error, lzma.LZMAError, zipfile.BadZipFile)


class WrongEncoding(Exception):
    """The bytes at ``position`` of the decompressed file do not decode in ``encoding``."""

    def __init__(self, encoding: str, position: int | None, reason: str):
        super().__init__(f"not valid {encoding}" + (f" at byte {position:,}" if position is not None else ""))
        self.encoding, self.position, self.reason = encoding, position, reason


def compression_of(path: Path) -> str | None:
    """``"gzip"``, ``"bz2"``, ``"xz"``, ``"zip"``, ``"zstd"``, ``"parquet"`` or ``None`` (plain), by the first bytes."""
    with open(path, "rb") as f:
        head = f.read(8)
    return next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)


def _zip_member(path: Path):
    zf = zipfile.ZipFile(path)
    names = [i.filename for i in zf.infolist() if not i.is_dir() and not i.filename.startswith("__MACOSX/")]
    if "[Content_Types].xml" in names:
        raise DataError(f"{path} is an Excel or OpenDocument workbook, not a table file; save the sheet as CSV")
    if len(names) != 1:
        listed = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise DataError(f"{path} is a zip holding {len(names)} files ({listed}); unzip it and give the one to read")
    return zf.open(names[0])


def _zstd_reader(path: Path):
    try:
        import pyarrow as pa

        return pa.input_stream(str(path), compression="zstd")
    except ImportError:
        pass
    try:
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))
    except ImportError:
        raise ConfigError(
            f"{path} is zstd-compressed: reading it needs pyarrow or zstandard (pip install pyarrow)"
        ) from None


def open_decompressed(path: Path, compression: str | None):
    """A binary file object of the file's decompressed bytes."""
    try:
        if compression is None:
            return open(path, "rb")
        if compression == "gzip":
            return gzip.open(path, "rb")
        if compression == "bz2":
            return bz2.open(path, "rb")
        if compression == "xz":
            return lzma.open(path, "rb")
        if compression == "zip":
            return _zip_member(path)
        if compression == "zstd":
            return _zstd_reader(path)
    except (zipfile.BadZipFile, lzma.LZMAError) as e:
        raise DataError(f"{path}: the {compression} data is damaged ({e}); fetch or compress the file again") from None
    raise ValueError(f"unknown compression {compression!r}")  # pragma: no cover


def read_damaged(path: Path, compression: str | None, error: BaseException) -> DataError:
    """The one line for a compressed file that breaks off or fails its checksum while it is read."""
    what = f"the {compression} data" if compression else "the file"
    return DataError(
        f"{path}: {what} is damaged or truncated ({type(error).__name__}: {error}); fetch or compress the file again"
    )


def sniff_encoding(head: bytes, path: Path) -> tuple[str, int]:
    """``(encoding, bom_length)`` from a byte-order mark or UTF-16's NUL bytes; ``("", 0)``: try :data:`ENCODINGS`."""
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name, len(bom)
    if b"\x00" not in head:
        return "", 0
    even, odd = head[0::2], head[1::2]
    if odd.count(0) > 0.4 * len(odd) and even.count(0) < 0.1 * len(even):
        return "utf-16-le", 0
    if even.count(0) > 0.4 * len(even) and odd.count(0) < 0.1 * len(odd):
        return "utf-16-be", 0
    raise DataError(
        f"{path} holds NUL bytes, so it is binary, not a text table; give a CSV, TSV or Parquet file "
        "(or its --encoding if it is UTF-16 or UTF-32)"
    )


def decodes(head: bytes, encoding: str, at_end: bool) -> bool:
    """Whether ``head`` decodes in ``encoding`` (a multi-byte character cut at its end is fine unless ``at_end``)."""
    try:
        codecs.getincrementaldecoder(encoding)("strict").decode(head, final=at_end)
        return True
    except UnicodeDecodeError:
        return False


# --- counting lines --------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _count_lines(a, n, state):  # pragma: no cover - compiled
    """Count line ends and blank lines in ``a[:n]``; ``state`` carries across chunks:
    ``[lines, blank, content, any, prev_cr]`` (the current line has non-blank content / any byte;
    the previous byte was ``\\r``)."""
    lines, blank, content, anything, prev_cr = state[0], state[1], state[2], state[3], state[4]
    for i in range(n):
        c = a[i]
        if c == 10 or c == 13:
            if c == 10 and prev_cr:
                prev_cr = 0
                continue
            lines += 1
            if content == 0:
                blank += 1
            content, anything = 0, 0
            prev_cr = 1 if c == 13 else 0
        else:
            prev_cr = 0
            anything = 1
            if c != 32 and c != 9:
                content = 1
    state[0], state[1], state[2], state[3], state[4] = lines, blank, content, anything, prev_cr


@njit(cache=True, nogil=True)
def _scan_lines(a, n):  # pragma: no cover - compiled
    """``(line feeds, unusual)`` in ``a[:n]``: unusual counts carriage returns and line feeds followed by
    a line feed, space or tab (a blank line may start there). Branch-free, so LLVM vectorises it."""
    feeds, unusual = 0, 0
    for i in range(n - 1):
        x, y = a[i], a[i + 1]
        feeds += x == 10
        unusual += ((x == 10) & ((y == 10) | (y == 32) | (y == 9))) | (x == 13)
    feeds += a[n - 1] == 10
    unusual += a[n - 1] == 13
    return feeds, unusual


class LineCounter:
    """Lines and blank lines of a byte stream fed in chunks (see the module docstring)."""

    def __init__(self):
        self.state = np.zeros(5, dtype=np.int64)

    def feed(self, chunk, n: int | None = None) -> None:
        """Count ``chunk[:n]`` (a bytes or bytearray; all of it when ``n`` is None)."""
        n = len(chunk) if n is None else n
        if n == 0:
            return
        st = self.state
        a = np.frombuffer(chunk, dtype=np.uint8, count=n)
        ends, unusual = _scan_lines(a, n) if st[4] == 0 and (st[2] == 1 or chunk[0] not in (9, 10, 32)) else (0, 1)
        if unusual:
            _count_lines(a, n, st)
            return
        st[0] += ends
        if ends == 0 or chunk[n - 1] != 10:
            st[2], st[3] = 1, 1  # the chunk's last line has begun with a non-blank byte
        else:
            st[2], st[3] = 0, 0

    def at_line_start(self) -> bool:
        """Whether the bytes fed so far end with a line feed (or none were fed): no line is open."""
        return bool(self.state[3] == 0 and self.state[4] == 0)

    def add_plain_lines(self, lines: int, last_open: bool) -> None:
        """Count a chunk that a parser read as ``lines`` lines, none blank and none ended by ``\r``, fed
        :meth:`at_line_start` (what :meth:`feed` would count for it, without a pass over its bytes);
        ``last_open``: the chunk's last line has no line feed (the file ends there)."""
        if lines <= 0 or not self.at_line_start():
            raise ValueError("add_plain_lines counts whole lines from a line start")
        st = self.state
        st[0] += lines - 1 if last_open else lines
        st[2], st[3] = (1, 1) if last_open else (0, 0)

    @property
    def lines(self) -> int:
        return int(self.state[0] + (1 if self.state[3] else 0))

    @property
    def blank(self) -> int:
        return int(self.state[1] + (1 if self.state[3] and not self.state[2] else 0))


def count_lines(path: Path, skip: int = 0) -> LineCounter:
    """The lines of a plain (uncompressed, ASCII-compatible) file, counted in one pass of 4 MiB reads
    (``skip``: the length of a byte-order mark, which belongs to no line)."""
    counter = LineCounter()
    buf = bytearray(_CHUNK)
    with open(path, "rb", buffering=0) as f:
        f.seek(skip)
        while n := f.readinto(buf):
            counter.feed(buf, n)
    return counter


# --- the stream ---------------------------------------------------------------------------------
class Utf8Stream(io.RawIOBase):
    """The decompressed file as UTF-8 bytes (decoded from ``encoding``), with its lines counted.

    ``head`` holds the bytes already read from ``raw`` (the sample), ``skip`` the length of a
    byte-order mark to drop. :meth:`peek` returns the first bytes without consuming them;
    :meth:`discard` consumes (and counts) the first ``n`` bytes, e.g. a header line.
    """

    def __init__(self, raw, head: bytes, encoding: str, skip: int = 0):
        super().__init__()
        self._raw, self._head, self._encoding = raw, head[skip:], encoding
        self.skipped = skip  # the byte-order mark dropped
        utf8 = codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")
        self._decoder = None if utf8 else codecs.getincrementaldecoder(encoding)("strict")
        self._ready = bytearray()
        self._offset = 0  # decompressed bytes consumed from the source
        self._eof = False
        self.counter = LineCounter()

    def readable(self) -> bool:
        return True

    def _next_source_chunk(self) -> bytes:
        if self._head:
            chunk, self._head = self._head, b""
        else:
            chunk = self._raw.read(_CHUNK)
        if self._decoder is None:
            return chunk
        try:
            text = self._decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as e:
            raise WrongEncoding(self._encoding, self._offset + e.start, e.reason) from None
        finally:
            self._offset += len(chunk)
        if not chunk:
            self._eof = True
        return text.encode("utf-8") if text or chunk else b""

    def _fill(self, size: int) -> None:
        while not self._eof and (size < 0 or len(self._ready) < size):
            chunk = self._next_source_chunk()
            if not chunk and (self._decoder is None or self._eof):
                self._eof = True
                break
            self._ready += chunk

    def peek(self, size: int) -> bytes:
        self._fill(size)
        return bytes(self._ready[:size])

    @property
    def exhausted(self) -> bool:
        """Whether the whole file fits in what has been peeked."""
        return self._eof

    def discard(self, n: int) -> None:
        self._fill(n)
        self.counter.feed(bytes(self._ready[:n]))
        del self._ready[:n]

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            self._fill(-1)
            size = len(self._ready)
        elif not self._ready:
            self._fill(max(size, 1))
        out = bytes(self._ready[:size])
        del self._ready[:size]
        self.counter.feed(out)
        return out

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()
