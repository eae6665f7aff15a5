"""The failures a hostile review found, one test each: every test here failed before the fix (a lost
row, a merged id, a destroyed file, a traceback or a message blaming the wrong setting).

Only public entry points are used (``read_ratings``, ``mfscratch.cli.main``, the learner), so that
each test runs, and fails, on the code before the fix as well. Data is synthetic and tiny.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import json
import os
import resource
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from robust_helpers import assert_one_line_error, run_cli

import mfscratch
from mfscratch import CollabDataLoaders, collab_learner
from mfscratch.readers import read_ratings

REPO = Path(__file__).resolve().parents[1]
TRAIN = ("train", "--quiet", "--epochs", "1", "--bs", "16", "--factors", "2")


@pytest.fixture
def ratings(tmp_path, monkeypatch) -> Path:
    """A small synthetic ratings CSV (and an empty data folder, so nothing is downloaded)."""
    monkeypatch.setenv("MFSCRATCH_DATA", str(tmp_path / "nodata"))
    rng = np.random.default_rng(0)
    pairs = rng.choice(30 * 40, 500, replace=False)
    df = pd.DataFrame({"user": pairs // 40 + 1, "item": pairs % 40 + 1, "rating": rng.integers(1, 6, 500)})
    path = tmp_path / "ratings.csv"
    df.to_csv(path, index=False)
    return path


def must_not_train(monkeypatch):
    """Make any training fail the test: the refusal must come before the work."""

    def refuse(*args, **kwargs):
        raise AssertionError("the bad output path must be refused before any training")

    monkeypatch.setattr(mfscratch.learner.Learner, "fit_one_cycle", refuse)


def fails_with_one_line(capsys, *argv, fragments=()):
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2, (rc, err)
    assert_one_line_error(err, *fragments)
    return err


# --- reading ---------------------------------------------------------------------------------------
def test_headerless_first_row_with_an_empty_rating_is_not_eaten(tmp_path):
    rows = ["1,10,,964982703"] + [f"{u},{u % 7 + 10},{u % 5 + 1},964982703" for u in range(2, 20001)]
    path = tmp_path / "r.csv"
    path.write_text("\n".join(rows) + "\n")
    assert len(read_ratings(path).df) == 20_000


def test_headerless_first_row_with_a_quoted_comma_title_is_not_eaten(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text('1,"Heat, The (1995)",4\n2,Up,3\n3,Emma,5\n4,Up,2\n5,Heat,1\n6,Emma,4\n')
    t = read_ratings(path)
    assert len(t.df) == 6 and t.df[t.item].iloc[0] == "Heat, The (1995)"


def test_ids_007_and_7_and_1E3_keep_their_identity(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user,item,rating\n007,1E3,4\n7,5,3\n8,1E3,5\n007,5,2\n")
    t = read_ratings(path)
    users, items = t.df[t.user].tolist(), t.df[t.item].tolist()
    assert users == ["007", "7", "8", "007"] and items == ["1E3", "5", "1E3", "5"]
    dls = t.loaders(valid_pct=0.0)
    assert (dls.n_users, dls.n_items) == (4, 3)  # 007, 7, 8 and 1E3, 5: plus #na#


@pytest.mark.parametrize("pack, suffix", [(gzip.compress, ".gz"), (bz2.compress, ".bz2")])
def test_compressed_ratings(tmp_path, pack, suffix):
    path = tmp_path / f"r.csv{suffix}"
    path.write_bytes(pack(b"userId,movieId,rating,timestamp\n1,10,4.0,1\n2,20,3.5,2\n3,10,5.0,3\n"))
    t = read_ratings(path, "userId", "movieId", "rating")
    assert t.df["movieId"].tolist() == [10, 20, 10] and t.df["rating"].tolist() == [4.0, 3.5, 5.0]


def test_latin1_items_file_and_encoding_option(tmp_path, ratings, capsys):
    items = tmp_path / "u.item"
    lines = [
        f"{i}|Film {i} {'Amélie' if i % 2 else 'Léon'} (199{i % 10})|01-Jan-1995||http://x|0|1" for i in range(1, 41)
    ]
    items.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    rc, _, err = run_cli(capsys, *TRAIN, "--ratings", ratings, "--items", items)
    assert rc == 0, err
    rc, _, err = run_cli(capsys, *TRAIN, "--ratings", ratings, "--items", items, "--encoding", "latin-1")
    assert rc == 0, err


# --- outputs that never destroy --------------------------------------------------------------------
def test_save_naming_the_ratings_file_is_refused(ratings, capsys, monkeypatch):
    must_not_train(monkeypatch)
    before = ratings.read_bytes()
    fails_with_one_line(capsys, *TRAIN, "--ratings", ratings, "--save", ratings, fragments=("--ratings",))
    assert ratings.read_bytes() == before


def test_save_and_json_naming_one_file_is_refused(ratings, tmp_path, capsys, monkeypatch):
    must_not_train(monkeypatch)
    out = tmp_path / "x"
    fails_with_one_line(capsys, *TRAIN, "--ratings", ratings, "--save", out, "--json", out, fragments=("same file",))
    assert not out.exists()


def test_save_through_a_symlink_writes_its_target_and_keeps_the_link(ratings, tmp_path, capsys):
    target = tmp_path / "models" / "m.npz"
    target.parent.mkdir()
    target.write_bytes(b"old")
    link = tmp_path / "latest.npz"
    link.symlink_to(target)
    rc, _, err = run_cli(capsys, *TRAIN, "--ratings", ratings, "--save", link)
    assert rc == 0, err
    assert link.is_symlink() and target.read_bytes()[:2] == b"PK"
    mfscratch.load_model(link)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_json_naming_a_device_node_is_refused(ratings, tmp_path, capsys, monkeypatch):
    node = tmp_path / "null"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a second /dev/null, in the test's folder
    must_not_train(monkeypatch)
    fails_with_one_line(capsys, *TRAIN, "--ratings", ratings, "--json", node, fragments=("character device",))
    assert stat.S_ISCHR(node.stat().st_mode)


def test_json_naming_a_fifo_is_refused(ratings, tmp_path, capsys, monkeypatch):
    fifo = tmp_path / "report.json"
    os.mkfifo(fifo)
    must_not_train(monkeypatch)
    fails_with_one_line(capsys, *TRAIN, "--ratings", ratings, "--json", fifo, fragments=("named pipe",))
    assert stat.S_ISFIFO(fifo.stat().st_mode)


@pytest.mark.parametrize("flag", ["--save", "--checkpoint"])
def test_disk_full_while_saving_is_one_line_and_keeps_the_old_file(ratings, tmp_path, capsys, monkeypatch, flag):
    path = tmp_path / ("m.npz" if flag == "--save" else "ck")
    rc, _, err = run_cli(capsys, *TRAIN, "--ratings", ratings, flag, path)
    assert rc == 0, err
    written = path if flag == "--save" else path / "checkpoint.npz"
    before = written.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    fails_with_one_line(capsys, *TRAIN, "--ratings", ratings, flag, path, fragments=("no space left",))
    assert written.read_bytes() == before
    assert sorted(p.name for p in written.parent.iterdir() if p.name.endswith(".tmp")) == []


def test_cv_json_naming_a_folder_is_refused_before_the_folds(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MFSCRATCH_DATA", str(tmp_path / "nodata"))

    def no_data(*args, **kwargs):
        raise AssertionError("refused before any data is read")

    monkeypatch.setattr("urllib.request.urlopen", no_data)
    must_not_train(monkeypatch)
    fails_with_one_line(capsys, "cv", "--quiet", "--json", tmp_path, fragments=("--json", "is a folder"))


def test_bench_json_and_plot_naming_folders_are_refused_before_timing(tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("refused before any timing")

    import mfscratch.bench

    monkeypatch.setattr(mfscratch.bench, "bench_rows", refuse)
    synthetic = ("--ratings", "2000", "--users", "30", "--items", "40", "--epochs", "1")
    fails_with_one_line(capsys, "bench", *synthetic, "--json", tmp_path, fragments=("folder",))
    fails_with_one_line(capsys, "bench", *synthetic, "--plot", tmp_path, fragments=("folder",))


def test_plot_naming_a_file_is_refused_before_training(ratings, tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    not_a_folder = tmp_path / "plots.png"
    not_a_folder.write_bytes(b"png")
    must_not_train(monkeypatch)
    fails_with_one_line(capsys, *TRAIN, "--ratings", ratings, "--plot", not_a_folder, fragments=("expected a folder",))


def test_plot_that_cannot_be_written_still_leaves_the_saved_model(ratings, tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Figure, "savefig", read_only)
    model = tmp_path / "m.npz"
    fails_with_one_line(
        capsys, *TRAIN, "--ratings", ratings, "--save", model, "--plot", tmp_path / "plots", fragments=("read-only",)
    )
    mfscratch.load_model(model)


def test_json_report_without_validation_is_strict_json(ratings, tmp_path, capsys):
    report = tmp_path / "r.json"
    rc, _, err = run_cli(capsys, *TRAIN, "--ratings", ratings, "--valid-pct", "0", "--json", report)
    assert rc == 0, err

    def no_constants(name):
        raise AssertionError(f"{name} is not JSON")

    data = json.loads(report.read_text(), parse_constant=no_constants)
    assert data["epochs"][0]["valid_loss"] is None


# --- messages that blame the right thing ------------------------------------------------------------
def test_negative_seed_is_refused_in_cli_and_api(ratings, capsys):
    fails_with_one_line(capsys, *TRAIN, "--ratings", ratings, "--seed", "-1", fragments=("--seed",))
    df = pd.read_csv(ratings)
    with pytest.raises(mfscratch.ConfigError, match="seed"):
        CollabDataLoaders.from_df(df, seed=-1)
    with pytest.raises(mfscratch.ConfigError, match="seed"):
        collab_learner(CollabDataLoaders.from_df(df, seed=0), seed=-1, log=None)


def test_divergence_from_a_huge_weight_decay_names_it(ratings, capsys):
    err = fails_with_one_line(capsys, *TRAIN, "--epochs", "5", "--ratings", ratings, "--wd", "1e3")
    assert "weight decay" in err and "wd=1000" in err and "learning rate" not in err


def test_recommend_with_a_huge_n_lists_every_item(ratings, tmp_path, capsys):
    model = tmp_path / "m.npz"
    rc, _, err = run_cli(capsys, *TRAIN, "--ratings", ratings, "--save", model)
    assert rc == 0, err
    rc, out, err = run_cli(capsys, "recommend", "--model", model, "--user", "1", "-n", "10000000000")
    assert rc == 0, err
    assert 20 < len(out.strip().splitlines()) <= 41


def test_too_many_factors_for_the_memory_is_one_line(ratings, tmp_path):
    limit = 3 * 2**30  # address space: enough to import and read, not for 1.6M x 80 tables

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-m", "mfscratch", *TRAIN, "--ratings", str(ratings), "--factors", "3000000"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        preexec_fn=cap,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert_one_line_error(proc.stderr, "needs about", "GiB", "--factors")
