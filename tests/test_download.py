"""Downloads, against a local fake: checksum verified before use, a bad or partial download fetched
once more, extraction confined to the target folder, nothing fetched when the data is present,
and an offline error that says where to put the files. No test touches the network."""

import dataclasses
import hashlib
import http.client
import http.server
import io
import threading
import urllib.error
import zipfile

import pytest

import mfscratch.data as mdata
from mfscratch.data import DATASETS, untar_data
from mfscratch.errors import DataError

GOOD_FILES = {"ml-100k/u.data": "1\t1\t5\t0\n2\t1\t3\t0\n", "ml-100k/u.item": "1|Film (2000)|x\n"}


def make_zip(files) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buf.getvalue()


GOOD = make_zip(GOOD_FILES)


class FakeResponse(io.BytesIO):
    """What ``urlopen`` returns: a readable body with headers (Content-Length may lie)."""

    def __init__(self, body: bytes, length: int | None = None, fail_after: int | None = None):
        super().__init__(body)
        self.headers = {"Content-Length": str(len(body) if length is None else length)}
        self.fail_after = fail_after

    def read(self, n=-1):
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise http.client.IncompleteRead(b"")
        return super().read(n if self.fail_after is None else min(n, self.fail_after - self.tell()))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MFSCRATCH_DATA", str(tmp_path))
    return tmp_path


def serve(monkeypatch, *responses, md5=hashlib.md5(GOOD).hexdigest()):
    """Patch ml-100k's checksum and make ``urlopen`` return ``responses`` in turn; returns the call log."""
    monkeypatch.setitem(DATASETS, "ml-100k", dataclasses.replace(DATASETS["ml-100k"], md5=md5))
    calls = []

    def urlopen(url, timeout=None):
        calls.append(url)
        r = responses[len(calls) - 1]
        if isinstance(r, BaseException):
            raise r
        return r if isinstance(r, FakeResponse) else FakeResponse(r)

    monkeypatch.setattr("urllib.request.urlopen", urlopen)
    return calls


def assert_clean(cache):
    """Only the extracted folder remains: no archive, no .part file, no temporary folder."""
    assert sorted(p.name for p in cache.iterdir()) == ["ml-100k"]


def test_good_download_is_extracted_and_the_zip_removed(cache, monkeypatch):
    calls = serve(monkeypatch, GOOD)
    folder = untar_data("ml-100k")
    assert folder == cache / "ml-100k" and (folder / "u.data").read_text() == GOOD_FILES["ml-100k/u.data"]
    assert len(calls) == 1
    assert_clean(cache)


def test_checksum_mismatch_is_fetched_again(cache, monkeypatch):
    calls = serve(monkeypatch, GOOD[:-100], GOOD)  # first a short (truncated) body, then the real one
    assert (untar_data("ml-100k") / "u.data").is_file() and len(calls) == 2
    assert_clean(cache)


def test_checksum_mismatch_twice_is_an_error(cache, monkeypatch):
    calls = serve(monkeypatch, GOOD[:-100], make_zip({"ml-100k/u.data": "tampered"}))
    with pytest.raises(DataError, match="fetched twice and is still unusable.*MD5") as e:
        untar_data("ml-100k")
    assert "\n" not in str(e.value) and len(calls) == 2
    assert list(cache.iterdir()) == []


def test_transfer_that_breaks_off_is_fetched_again(cache, monkeypatch):
    calls = serve(monkeypatch, FakeResponse(GOOD, fail_after=100), FakeResponse(GOOD))
    assert (untar_data("ml-100k") / "u.data").is_file() and len(calls) == 2
    assert_clean(cache)


def test_short_body_against_content_length_is_fetched_again(cache, monkeypatch):
    calls = serve(monkeypatch, FakeResponse(GOOD[:-100], length=len(GOOD)), GOOD, md5=None)
    assert (untar_data("ml-100k") / "u.data").is_file() and len(calls) == 2


def test_corrupted_zip_without_a_published_checksum_is_fetched_again(cache, monkeypatch):
    broken = bytearray(GOOD)
    broken[40] ^= 0xFF  # inside the first member's data: its CRC no longer matches
    calls = serve(monkeypatch, bytes(broken), GOOD, md5=None)
    assert (untar_data("ml-100k") / "u.data").read_text() == GOOD_FILES["ml-100k/u.data"] and len(calls) == 2

    calls = serve(monkeypatch, b"<html>captive portal</html>", b"<html>captive portal</html>", md5=None)
    with pytest.raises(DataError, match="not a readable zip"):
        untar_data("ml-100k", force_download=True)


def test_stale_cached_archive_is_replaced(cache, monkeypatch):
    (cache / "ml-100k.zip").write_bytes(GOOD[:50])  # left by an older, interrupted tool
    calls = serve(monkeypatch, GOOD)
    assert (untar_data("ml-100k") / "u.data").is_file() and len(calls) == 1


@pytest.mark.parametrize("evil", ["../evil.txt", "ml-100k/../../evil.txt", "/tmp/evil_abs.txt"])
def test_zip_slip_member_is_refused(cache, monkeypatch, evil):
    bad = make_zip({**GOOD_FILES, evil: "owned"})
    serve(monkeypatch, bad, md5=hashlib.md5(bad).hexdigest())
    with pytest.raises(DataError, match="outside the target folder"):
        untar_data("ml-100k")
    assert not (cache.parent / "evil.txt").exists()
    assert list(cache.iterdir()) == []  # nothing extracted, archive deleted


def test_present_data_means_no_download(cache, monkeypatch):
    (cache / "ml-100k").mkdir()
    (cache / "ml-100k" / "u.data").write_text("1\t1\t5\t0\n")
    serve(monkeypatch, AssertionError("must not download"))
    assert untar_data("ml-100k") == cache / "ml-100k"


def test_offline_error_says_where_to_put_the_files(cache, monkeypatch):
    serve(monkeypatch, urllib.error.URLError("Name or service not known"))
    with pytest.raises(DataError) as e:
        untar_data("ml-100k")
    msg = str(e.value)
    assert "\n" not in msg and str(cache / "ml-100k") in msg and "MFSCRATCH_DATA" in msg
    assert "Name or service not known" in msg
    assert list(cache.iterdir()) == []


def test_real_http_server_on_localhost(cache, monkeypatch):
    """The unpatched urlopen path, served by http.server on 127.0.0.1 (first a truncated body, then the zip)."""
    bodies = [GOOD[: len(GOOD) // 2], GOOD]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = bodies.pop(0)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/ml-100k.zip"
        ds = dataclasses.replace(DATASETS["ml-100k"], url=url, md5=hashlib.md5(GOOD).hexdigest())
        monkeypatch.setitem(DATASETS, "ml-100k", ds)
        assert (untar_data(url) / "u.data").read_text() == GOOD_FILES["ml-100k/u.data"]
        assert bodies == []  # the truncated body was detected and fetched again
    finally:
        server.shutdown()
        server.server_close()
    assert_clean(cache)


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset"):
        mdata.untar_data("ml-7k")
