"""Outputs that never destroy: every path checked before any work, writes atomic, errors one line."""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mfscratch.io as mio
import mfscratch.outputs as mout
from mfscratch.errors import MfscratchError, OutputError
from mfscratch.io import TEMP_MARK, atomic_write, write_json
from mfscratch.outputs import Output, check_outputs


def refused(outputs, inputs=(), *fragments):
    with pytest.raises(OutputError) as e:
        check_outputs(outputs, inputs)
    msg = str(e.value)
    assert "\n" not in msg and isinstance(e.value, MfscratchError) and isinstance(e.value, OSError)
    for f in fragments:
        assert f in msg, (f, msg)
    return msg


@pytest.fixture
def files(tmp_path):
    (tmp_path / "ratings.csv").write_text("u,i,r\n1,2,3\n")
    (tmp_path / "sub").mkdir()
    return tmp_path


# --- the checks -----------------------------------------------------------------------------------
def test_absent_and_regular_paths_pass(files):
    assert (
        check_outputs([Output("--save", files / "new" / "deeper" / "m.npz"), Output("--json", files / "r.json")]) == []
    )
    (files / "old.npz").write_bytes(b"x")
    assert check_outputs([Output("--save", files / "old.npz")]) == []


def test_none_paths_are_skipped(files):
    assert check_outputs([Output("--save", None)], [("--ratings", None)]) == []


def test_output_equal_to_an_input_directly_through_a_link_or_a_hard_link(files):
    ratings = files / "ratings.csv"
    refused([Output("--save", ratings)], [("--ratings", ratings)], "would overwrite --ratings")
    refused([Output("--save", files / "sub" / ".." / "ratings.csv")], [("--ratings", ratings)], "--ratings")
    (files / "soft.npz").symlink_to(ratings)
    refused([Output("--save", files / "soft.npz")], [("--ratings", ratings)], "--ratings")
    os.link(ratings, files / "hard.npz")
    refused([Output("--save", files / "hard.npz")], [("--ratings", ratings)], "--ratings")


def test_two_outputs_on_one_file(files):
    refused([Output("--save", files / "x"), Output("--json", files / "x")], (), "--save", "--json", "same file")
    refused([Output("--json", files / "p2"), Output("--plot", files / "p2", True, ("a.png",))], (), "the --plot folder")
    plots = Output("--plot", files / "p", True, ("losses.png",))
    refused([plots, Output("--json", files / "p" / "losses.png")], (), "same file")


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda p: p.mkdir(), "is a folder"),
        (lambda p: os.mkfifo(p), "named pipe (FIFO)"),
        (lambda p: p.symlink_to(p.parent / "missing"), "which does not exist"),
        (lambda p: p.symlink_to(p.parent / "sub"), "which is not a regular file"),
        (lambda p: (p.write_bytes(b"x"), os.chmod(p, 0o444)), "read-only (mode 0444)"),
    ],
)
def test_file_outputs_that_are_refused(files, make, fragment):
    path = files / "out.json"
    make(path)
    refused([Output("--json", path)], (), fragment)


def test_socket_is_refused(files):
    import socket

    path = files / "s"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        refused([Output("--json", path)], (), "a socket")


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_character_device_is_refused_and_never_replaced(tmp_path):
    import stat

    node = tmp_path / "null"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a /dev/null of the test's own
    refused([Output("--json", node)], (), "character device")
    with pytest.raises(OutputError, match="character device, not a regular file"):
        atomic_write(node, lambda f: f.write(b"x"))  # the API's writes check too
    assert stat.S_ISCHR(node.stat().st_mode)


@pytest.mark.parametrize(
    "make", [lambda p: p.mkdir(), lambda p: os.mkfifo(p), lambda p: p.symlink_to(p.parent / "nowhere")]
)
def test_atomic_write_refuses_what_is_not_a_regular_file(tmp_path, make):
    path = tmp_path / "out"
    make(path)
    with pytest.raises(OutputError, match="cannot write"):
        atomic_write(path, lambda f: f.write(b"x"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_empty_output_path():
    refused([Output("--save", "")], (), "--save needs a path")


def test_symlink_to_a_regular_file_is_followed_and_said(files):
    (files / "target.npz").write_bytes(b"old")
    (files / "link.npz").symlink_to(files / "target.npz")
    (notes,) = check_outputs([Output("--save", files / "link.npz")])
    assert "symbolic link" in notes and str(files / "target.npz") in notes


def test_folder_outputs(files):
    assert check_outputs([Output("--plot", files / "sub", True, ("a.png",))]) == []
    assert check_outputs([Output("--checkpoint", files / "new", True, ("checkpoint.npz",))]) == []
    refused([Output("--plot", files / "ratings.csv", True, ("a.png",))], (), "expected a folder")
    os.mkfifo(files / "sub" / "a.png")
    refused([Output("--plot", files / "sub", True, ("a.png",))], (), "a.png", "named pipe")
    (files / "dirlink").symlink_to(files / "sub")
    refused([Output("--checkpoint", files / "dirlink", True, ("a.png",))], (), "named pipe")


def test_parent_is_a_file_or_not_writable(files, monkeypatch):
    refused([Output("--save", files / "ratings.csv" / "m.npz")], (), "is a file, so the path cannot be created")
    monkeypatch.setattr(mout.os, "access", lambda path, mode: Path(path) != files / "sub")
    refused([Output("--save", files / "sub" / "m.npz")], (), "is not writable")
    refused([Output("--plot", files / "sub" / "new" / "deeper", True, ("a.png",))], (), "is not writable")


def test_dataset_files_are_inputs(files):
    inputs = mout.dataset_inputs(files)
    assert ("--data", files / "ratings.csv") in inputs and mout.dataset_inputs(files / "absent") == []
    refused([Output("--save", files / "ratings.csv")], inputs, "--data")


# --- atomic writes ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code, fragment",
    [
        (errno.ENOSPC, "no space left on the device (ENOSPC)"),
        (errno.EDQUOT, "disk quota exceeded (EDQUOT)"),
        (errno.EROFS, "read-only (EROFS)"),
        (errno.EACCES, "permission denied (EACCES)"),
        (errno.EIO, "(EIO)"),
    ],
)
def test_oserror_while_writing_is_one_line_and_keeps_the_old_file(tmp_path, code, fragment):
    path = tmp_path / "m.bin"
    path.write_bytes(b"old")

    def fail(f):
        f.write(b"half")
        raise OSError(code, os.strerror(code))

    with pytest.raises(OutputError) as e:
        atomic_write(path, fail)
    assert fragment in str(e.value) and "the existing file is unchanged" in str(e.value)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.bin"]


def test_oserror_before_writing_names_the_path(tmp_path, monkeypatch):
    def no_temp(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(mio.tempfile, "mkstemp", no_temp)
    with pytest.raises(OutputError, match="cannot write .*new.bin: the file system is read-only .*nothing was written"):
        atomic_write(tmp_path / "new.bin", lambda f: f.write(b"x"))


def test_atomic_write_follows_a_symlink_and_keeps_it(tmp_path):
    (tmp_path / "real.bin").write_bytes(b"old")
    (tmp_path / "link.bin").symlink_to(tmp_path / "real.bin")
    atomic_write(tmp_path / "link.bin", lambda f: f.write(b"new"))
    assert (tmp_path / "link.bin").is_symlink() and (tmp_path / "real.bin").read_bytes() == b"new"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporary_files_of_a_killed_run_are_removed(tmp_path):
    path = tmp_path / "m.npz"
    stale = tmp_path / f".m.npz{TEMP_MARK}{_dead_pid()}-abc123.tmp"
    live = tmp_path / f".m.npz{TEMP_MARK}{os.getppid()}-def456.tmp"  # a running process: left alone
    other = tmp_path / f".other.npz{TEMP_MARK}{_dead_pid()}-x.tmp"  # another target's: left alone
    for p in (stale, live, other):
        p.write_bytes(b"half")
    atomic_write(path, lambda f: f.write(b"whole"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, live.name, other.name])


def test_a_run_killed_mid_write_leaves_the_old_file_and_the_next_run_cleans_up(tmp_path):
    """A real SIGKILL in the middle of ``atomic_write``: the old file survives, the temp goes next time."""
    path = tmp_path / "m.bin"
    path.write_bytes(b"old")
    script = (
        "import os, signal, sys; from mfscratch.io import atomic_write\n"
        "def write(f):\n    f.write(b'half'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        f"atomic_write({str(path)!r}, write)\n"
    )
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(repo)}, timeout=120)
    assert proc.returncode == -9
    assert path.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 2  # the old file and the temp
    atomic_write(path, lambda f: f.write(b"new"))
    assert [p.name for p in tmp_path.iterdir()] == ["m.bin"] and path.read_bytes() == b"new"


# --- the JSON writer -----------------------------------------------------------------------------
def test_write_json_is_strict_and_atomic(tmp_path):
    report = {
        "nan": float("nan"),
        "inf": -math.inf,
        "np": np.float32(np.nan),
        "int": np.int64(3),
        "arr": np.array([1.0, np.inf]),
        "nested": [{"x": (1, float("nan"))}],
        "path": tmp_path,
    }
    path = write_json(tmp_path / "r.json", report)

    def no_constants(name):
        raise AssertionError(name)

    data = json.loads(path.read_text(), parse_constant=no_constants)
    assert data == {
        "nan": None,
        "inf": None,
        "np": None,
        "int": 3,
        "arr": [1.0, None],
        "nested": [{"x": [1, None]}],
        "path": str(tmp_path),
    }


def test_bench_writes_its_rows_through_the_same_writer(tmp_path):
    from mfscratch import bench

    row = dict.fromkeys(bench.KEYS, float("nan"))
    bench.write_json(tmp_path / "b.json", [row])
    assert json.loads((tmp_path / "b.json").read_text()) == [dict.fromkeys(bench.KEYS)]
