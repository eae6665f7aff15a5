"""Files that never lie: model files are refused cleanly when missing, truncated, foreign or damaged
(never unpickled); ``--save`` is atomic; a diverging run stops with a clear message and leaves the
saved model alone."""

import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from robust_helpers import assert_one_line_error, run_cli, write_fake_ml100k

import mfscratch.io as mio
from mfscratch import CollabDataLoaders, collab_learner
from mfscratch.errors import DivergenceError, ModelFileError
from mfscratch.io import FORMAT_VERSION, atomic_write, load_model, save_model
from mfscratch.model import EmbeddingDotBias


@pytest.fixture
def model_file(tmp_path):
    model = EmbeddingDotBias(4, 6, 7, y_range=(0, 5.5), seed=0)
    classes = {"user": ["#na#", *range(1, 6)], "title": ["#na#", *(f"film {i}" for i in range(6))]}
    return save_model(tmp_path / "model.npz", model, classes, "user", "title"), model


def arrays_of(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def expect_refused(path, *fragments):
    with pytest.raises(ModelFileError) as e:
        load_model(path)
    msg = str(e.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, (f, msg)
    return msg


def test_round_trip(model_file):
    path, model = model_file
    loaded, classes, meta = load_model(path)
    assert np.array_equal(loaded.params, model.params) and loaded.y_range == (0.0, 5.5)
    assert list(classes["user"]) == ["#na#", 1, 2, 3, 4, 5] and classes["title"].o2i["film 2"] == 3
    assert meta["item_name"] == "title"


@pytest.mark.parametrize("values", [["b", "a"], [1.5, 2.5], [2**64 - 1, 5], [-(2**70), 2**70], [True, False]])
def test_vocab_types_round_trip(tmp_path, values):
    model = EmbeddingDotBias(2, 3, 3, seed=0)
    classes = {"user": ["#na#", *values], "item": ["#na#", *values]}
    _, got, _ = load_model(save_model(tmp_path / "m.npz", model, classes))
    assert list(got["user"]) == classes["user"] and [type(v) for v in got["user"]][1:] == [type(v) for v in values]


def test_missing_and_directory(tmp_path):
    expect_refused(tmp_path / "nope.npz", "does not exist", "--save")
    expect_refused(tmp_path, "is not a file")


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_truncated(model_file, keep):
    path, _ = model_file
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    expect_refused(path, "train and save it again")


def test_flipped_bytes_fail_the_crc(model_file):
    path, _ = model_file
    data = bytearray(path.read_bytes())
    with np.load(path) as z:  # find the u_weight payload and corrupt one byte in the middle of it
        offset = data.find(z["u_weight"].tobytes())
    data[offset + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    expect_refused(path, "damaged")


def test_foreign_files(tmp_path):
    np.savez(tmp_path / "random.npz", a=np.random.default_rng(0).normal(size=(3, 3)))
    expect_refused(tmp_path / "random.npz", "not an mfscratch model")
    (tmp_path / "notes.txt").write_text("user,item,rating\n1,2,3\n")
    expect_refused(tmp_path / "notes.txt", "cannot be read as a .npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    expect_refused(tmp_path / "single.npy", "single .npy array")
    pd.DataFrame({"a": [1]}).to_pickle(tmp_path / "frame.pkl")
    expect_refused(tmp_path / "frame.pkl", "never loads")


def _touch(path):  # what the pickle below would run if it were ever unpickled
    Path(path).write_text("unpickled!")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return _touch, (self.marker,)


@pytest.mark.parametrize("key", ["u_weight", "format", "extra"])
def test_pickle_inside_npz_is_refused_without_unpickling(model_file, tmp_path, key):
    path, _ = model_file
    marker = tmp_path / "was_unpickled"
    arrays = arrays_of(path)
    arrays[key] = np.array([_Evil(str(marker))], dtype=object)
    np.savez(path, **arrays)  # np.savez pickles object arrays
    expect_refused(path, "pickled")
    assert not marker.exists()


def rewrite(path, **changes):
    arrays = arrays_of(path)
    for k, v in changes.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"version": np.array(FORMAT_VERSION + 1)}, "format version 2"),
        ({"version": np.array("1")}, "format version None"),
        ({"version": None}, "format version None"),
        ({"format": np.array("something-else")}, "not an mfscratch model"),
        ({"i_bias": None}, "lacks"),
        ({"u_weight": np.zeros((6, 5), np.float32)}, "inconsistent table shapes"),
        ({"i_bias": np.zeros(7, np.float32)}, "inconsistent table shapes"),
        ({"u_weight": np.zeros(24, np.float32)}, "inconsistent table shapes"),
        ({"u_weight": np.zeros((6, 4), np.int64)}, "not floats"),
        ({"i_weight": np.full((7, 4), np.nan, np.float32)}, "NaN or infinite"),
        ({"y_range": np.array([5.0, 1.0])}, "bad y_range"),
        ({"y_range": np.array([1.0])}, "bad y_range"),
        ({"user_vocab": np.arange(3)}, "do not match the tables"),
        ({"user_vocab": np.zeros((5, 2))}, "bad user vocabulary"),
    ],
)
def test_wrong_contents(model_file, changes, fragment):
    path, _ = model_file
    rewrite(path, **changes)
    expect_refused(path, fragment)


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"seen_indptr": np.array([0, 1, 1, 1, 2, 2, 2]), "seen_indices": np.array([3, 9])}, "outside the 7 items"),
        ({"seen_indptr": np.array([0, 2, 2, 2, 2, 2, 2]), "seen_indices": np.array([4, 2])}, "out of order"),
        ({"seen_indptr": np.array([0, 2, 2, 2, 2, 2, 2]), "seen_indices": np.array([4, 4])}, "out of order"),
        ({"seen_indptr": np.array([0, 1, 2]), "seen_indices": np.array([1, 2])}, "do not fit 6 users"),
        ({"seen_indptr": np.array([0, 2, 1, 2, 2, 2, 2]), "seen_indices": np.array([1, 2])}, "do not fit"),
        ({"seen_indptr": np.array([0, 1, 1, 1, 1, 1, 3]), "seen_indices": np.array([1, 2])}, "do not fit"),
        ({"seen_indptr": np.array([0, 1, 1, 1, 1, 1, 1]), "seen_indices": np.array([1.0])}, "not 1-D integer"),
        ({"seen_indptr": np.array([0, 1, 1, 1, 1, 1, 1])}, "without the other"),
        ({"item_counts": np.array([1, 2, 3])}, "item_counts"),
        ({"item_counts": np.array([0, 0, 0, -1, 0, 0, 0])}, "item_counts"),
    ],
)
def test_bad_seen_items_are_refused(model_file, changes, fragment):
    """The ranking's kernel reads each user's seen items in increasing order and writes at their
    codes, so a file's rows must fit the tables and be sorted, or the file is refused."""
    path, _ = model_file
    rewrite(path, **changes)
    expect_refused(path, fragment)


def test_good_seen_items_load(model_file):
    path, _ = model_file
    # rows that end above where the next one starts, empty rows in between and at both ends
    rewrite(path, seen_indptr=np.array([0, 0, 3, 3, 4, 5, 5]), seen_indices=np.array([2, 5, 6, 1, 0]))
    _, _, meta = load_model(path)
    assert meta["seen_indices"].tolist() == [2, 5, 6, 1, 0]


# --- atomic saves ---------------------------------------------------------------------------------
def test_failed_save_leaves_the_old_file_intact(model_file, monkeypatch):
    path, model = model_file
    before = path.read_bytes()

    def savez_then_fail(f, **arrays):
        f.write(b"PK\x03\x04 half of a zip")  # some bytes reach the temporary file, then the run dies
        raise KeyboardInterrupt

    monkeypatch.setattr(mio.np, "savez", savez_then_fail)
    with pytest.raises(KeyboardInterrupt):
        save_model(path, EmbeddingDotBias(4, 6, 7, seed=1))
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.npz"]  # no temporary file left behind
    load_model(path)


def test_atomic_write_replaces_whole_and_keeps_permissions(tmp_path):
    path = tmp_path / "sub" / "out.bin"
    atomic_write(path, lambda f: f.write(b"first"))
    assert path.read_bytes() == b"first" and stat.S_IMODE(path.stat().st_mode) == 0o644
    os.chmod(path, 0o640)
    atomic_write(path, lambda f: f.write(b"second"))
    assert path.read_bytes() == b"second" and stat.S_IMODE(path.stat().st_mode) == 0o640

    def fail(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, fail)
    assert path.read_bytes() == b"second" and [p.name for p in path.parent.iterdir()] == ["out.bin"]


# --- divergence -----------------------------------------------------------------------------------
def test_huge_learning_rate_raises_divergence_with_epoch_step_and_lr(ratings_df):
    dls = CollabDataLoaders.from_df(ratings_df.drop_duplicates(["user", "item"]), seed=0, bs=32)
    learn = collab_learner(dls, n_factors=4, y_range=(0, 5.5), seed=0, log=None)
    with pytest.raises(DivergenceError) as e:
        learn.fit(2, 1e6)
    msg = str(e.value)
    assert "\n" not in msg and "epoch 0" in msg and "step " in msg and "1e+06" in msg and "learning rate" in msg
    assert learn.recorder.values == []  # the diverged epoch is not recorded


def test_cli_divergence_keeps_the_existing_save_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MFSCRATCH_DATA", str(tmp_path / "data"))
    write_fake_ml100k(tmp_path / "data")
    save = tmp_path / "model.npz"
    rc, _, err = run_cli(capsys, "train", "--quiet", "--epochs", "1", "--factors", "4", "--bs", "32", "--save", save)
    assert rc == 0, err
    before = save.read_bytes()
    report = tmp_path / "report.json"
    rc, _, err = run_cli(
        capsys,
        "train",
        "--quiet",
        "--epochs",
        "2",
        "--factors",
        "4",
        "--bs",
        "32",
        "--lr",
        "1e6",
        "--save",
        save,
        "--json",
        report,
    )
    assert rc == 2
    assert_one_line_error(err, "diverged at epoch 0", "learning rate")
    assert save.read_bytes() == before and not report.exists()
