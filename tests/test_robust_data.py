"""Bad ratings data and bad settings: each stops with one line naming the column or setting and what
to do, before any work starts, in the library (DataError/ConfigError) and in the CLI (exit 2)."""

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from robust_helpers import assert_one_line_error, run_cli, write_fake_ml100k

from mfscratch import CollabDataLoaders, collab_learner
from mfscratch.cli import main
from mfscratch.errors import ConfigError, DataError
from mfscratch.io import load_model, save_model
from mfscratch.validate import DataWarning

REPO = Path(__file__).resolve().parents[1]


def small_df(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {"user": rng.integers(0, 6, n), "item": rng.integers(0, 8, n), "rating": rng.integers(1, 6, n).astype(float)}
    ).drop_duplicates(["user", "item"])


def one_line(excinfo, *fragments):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert f in msg, (f, msg)


# --- data: from_df ------------------------------------------------------------------------------
def test_missing_column_names_it_and_the_fix():
    with pytest.raises(DataError) as e:
        CollabDataLoaders.from_df(small_df(), rating_name="stars")
    one_line(e, "'stars'", "rating_name=", "['user', 'item', 'rating']")


def test_too_few_columns_and_not_a_frame():
    with pytest.raises(DataError) as e:
        CollabDataLoaders.from_df(small_df()[["user", "item"]])
    one_line(e, "2 column(s)")
    with pytest.raises(DataError) as e:
        CollabDataLoaders.from_df(np.zeros((5, 3)))
    one_line(e, "DataFrame")


def test_empty_table():
    with pytest.raises(DataError) as e:
        CollabDataLoaders.from_df(small_df().iloc[:0])
    one_line(e, "empty")


def test_source_file_named_when_the_table_knows_it():
    df = small_df().iloc[:0].copy()
    df.attrs["source"] = "my_ratings.csv"
    with pytest.raises(DataError) as e:
        CollabDataLoaders.from_df(df)
    one_line(e, "my_ratings.csv: ")


@pytest.mark.parametrize("bad", ["five", np.nan, np.inf, -np.inf, 1e39, None])
def test_bad_rating_values(bad):
    df = small_df()
    df["rating"] = df["rating"].astype(object)
    df.iloc[3, 2] = bad
    with pytest.raises(DataError) as e:
        CollabDataLoaders.from_df(df)
    one_line(e, "rating column 'rating'", "1 value(s)", f"row {df.index[3]!r}", "drop or fix")


def test_numeric_text_ratings_are_accepted():
    df = small_df()
    df["rating"] = df["rating"].astype(int).astype(str)
    dls = CollabDataLoaders.from_df(df, seed=0)
    assert dls.train_ratings.dtype == np.float32 and np.isin(dls.train_ratings, [1, 2, 3, 4, 5]).all()


@pytest.mark.parametrize("col", ["user", "item"])
def test_missing_ids(col):
    df = small_df()
    df[col] = df[col].astype(float)
    df.iloc[5, df.columns.get_loc(col)] = np.nan
    with pytest.raises(DataError) as e:
        CollabDataLoaders.from_df(df)
    one_line(e, f"{col} column {col!r}", "1 missing", "dropna")


def test_duplicate_pairs_are_kept_and_counted():
    df = small_df()
    dup = pd.concat([df, df.iloc[:7]], ignore_index=True)
    with pytest.warns(DataWarning, match=r"^7 row\(s\) repeat .*all rows are kept") as rec:
        dls = CollabDataLoaders.from_df(dup, valid_pct=0.2, seed=0)
    assert len(rec) == 1 and "\n" not in str(rec[0].message)
    assert dls.n_train + dls.n_valid == len(dup)  # nothing dropped, nothing averaged
    assert dls.repeated_pairs == 7  # the ranking then looks validation pairs up among the training ones


def test_no_warning_without_duplicates():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dls = CollabDataLoaders.from_df(small_df(), seed=0)
    assert dls.repeated_pairs == 0


@pytest.mark.parametrize("col", ["user", "item"])
def test_single_user_or_item(col):
    df = small_df()
    df[col] = 7
    df = df.drop_duplicates(["user", "item"])
    with pytest.raises(DataError) as e:
        CollabDataLoaders.from_df(df)
    one_line(e, f"{col} column {col!r}", "single distinct value", "at least 2")


@pytest.mark.parametrize("ids", [[1, "a", 2, "b"], [True, 1, False, 3], [1.5, "x", 2.5, "y"]])
def test_mixed_id_kinds_are_a_clean_error(ids):
    df = pd.DataFrame({"user": pd.Series(ids * 5, dtype=object), "item": list(range(20)), "rating": [3.0] * 20})
    with pytest.raises(DataError) as e:
        CollabDataLoaders.from_df(df)
    one_line(e, "user column 'user' mixes kinds", ".astype(str)")


def test_ids_mixed_after_astype_str_work():
    df = pd.DataFrame(
        {"user": pd.Series([1, "a", 2, "b"] * 5, dtype=object), "item": list(range(20)), "rating": [3.0] * 20}
    )
    df["user"] = df["user"].astype(str)
    dls = CollabDataLoaders.from_df(df, seed=0)
    assert list(dls.classes["user"]) == ["#na#", "1", "2", "a", "b"]


@pytest.mark.parametrize("big", [2**63 - 1, 2**64 - 1, 2**70, -(2**70)])
def test_huge_integer_ids_train_save_and_load(tmp_path, big):
    df = small_df()
    df["user"] = [big if u == 0 else int(u) for u in df["user"]]  # object column above int64, else int64/uint64
    dls = CollabDataLoaders.from_df(df, seed=0, bs=8)
    users = dls.classes["user"]
    assert big in users.o2i and list(users[1:]) == sorted(users[1:])
    learn = collab_learner(dls, n_factors=3, y_range=(0, 5.5), seed=0, log=None)
    learn.fit(1, 1e-2)
    path = save_model(tmp_path / "m.npz", learn.model, dls.classes, "user", "item")
    _, classes, _ = load_model(path)
    assert list(classes["user"]) == list(users) and classes["user"].o2i[big] == users.o2i[big]


def test_valid_pct_out_of_range_and_a_split_without_enough_training_rows():
    for bad in (1.0, -0.1, 1.5, "0.2", float("nan")):
        with pytest.raises(ConfigError) as e:
            CollabDataLoaders.from_df(small_df(), valid_pct=bad)
        one_line(e, "valid_pct")
    # The realistic "no training rows" case: after the split there are fewer rows than one batch.
    dls = CollabDataLoaders.from_df(small_df(), valid_pct=0.5, seed=0, bs=64)
    learn = collab_learner(dls, n_factors=3, y_range=(0, 5.5), seed=0, log=None)
    before = learn.model.params.copy()
    with pytest.raises(ConfigError) as e:
        learn.fit_one_cycle(1, 1e-2)
    one_line(e, "batch size 64", "smaller bs")
    assert np.array_equal(before, learn.model.params) and learn.recorder.values == []


def test_ratings_outside_y_range_warn_at_collab_learner():
    df = small_df()
    df.loc[df.index[:4], "rating"] = 10.0
    dls = CollabDataLoaders.from_df(df, seed=0)
    with pytest.warns(DataWarning, match=r"^4 rating\(s\) in column 'rating' lie outside y_range \(0, 5.5\)"):
        collab_learner(dls, n_factors=3, y_range=(0, 5.5), log=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        collab_learner(dls, n_factors=3, y_range=(0, 10.5), log=None)
        collab_learner(dls, n_factors=3, y_range=None, log=None)


# --- settings: library ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dls():
    return CollabDataLoaders.from_df(small_df(200), seed=0, bs=16)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"n_factors": 0}, "n_factors"),
        ({"n_factors": -3}, "n_factors"),
        ({"n_factors": 2.5}, "n_factors"),
        ({"n_factors": True}, "n_factors"),
        ({"n_factors": float("nan")}, "n_factors"),
        ({"n_factors": "50"}, "n_factors"),
        ({"y_range": (5, 1)}, "lo < hi"),
        ({"y_range": (1, 1)}, "lo < hi"),
        ({"y_range": (0, math.inf)}, "finite"),
        ({"y_range": (math.nan, 5)}, "y_range"),
        ({"y_range": (1, 2, 3)}, "pair"),
        ({"y_range": 5}, "pair"),
        ({"lr": 0}, "lr"),
        ({"lr": -1e-3}, "lr"),
        ({"lr": math.nan}, "lr"),
        ({"lr": math.inf}, "lr"),
        ({"wd": -0.1}, "wd"),
        ({"opt_func": "rmsprop"}, "optimiser"),
        ({"backend": "tpu"}, "backend"),
    ],
)
def test_bad_learner_settings(dls, kwargs, fragment):
    with pytest.raises(ConfigError) as e:
        collab_learner(dls, **{"y_range": (0, 5.5), "log": None, **kwargs})
    one_line(e, fragment)


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda l: l.fit(0, 1e-2), "n_epoch"),
        (lambda l: l.fit(1.5, 1e-2), "n_epoch"),
        (lambda l: l.fit(-1), "n_epoch"),
        (lambda l: l.fit(1, 0.0), "lr"),
        (lambda l: l.fit(1, -1.0), "lr"),
        (lambda l: l.fit(1, math.nan), "lr"),
        (lambda l: l.fit(1, 1e-2, wd=-1), "wd"),
        (lambda l: l.fit_one_cycle(0, 1e-2), "n_epoch"),
        (lambda l: l.fit_one_cycle(2, -5e-3), "lr"),
        (lambda l: l.fit_one_cycle(2, 5e-3, wd=math.inf), "wd"),
        (lambda l: l.fit_one_cycle(2, 5e-3, div=0), "div"),
        (lambda l: l.fit_one_cycle(2, 5e-3, div_final=-1), "div_final"),
        (lambda l: l.fit_one_cycle(2, 5e-3, pct_start=1.5), "pct_start"),
        (lambda l: l.fit_one_cycle(2, 5e-3, moms=(0.9,)), "moms"),
        (lambda l: l.fit_one_cycle(2, 5e-3, moms=(0.9, 1.2, 0.9)), "moms"),
        (lambda l: l.fit(2, 1e-2, start_epoch=3), "start_epoch"),
    ],
)
def test_bad_fit_settings_are_rejected_before_any_work(dls, call, fragment):
    learn = collab_learner(dls, n_factors=3, y_range=(0, 5.5), seed=0, log=None)
    before = learn.model.params.copy()
    with pytest.raises(ConfigError) as e:
        call(learn)
    one_line(e, fragment)
    assert np.array_equal(before, learn.model.params) and learn.recorder.values == []


def test_bad_batch_size():
    for bs in (0, -1, 2.5, None):
        with pytest.raises(ConfigError) as e:
            CollabDataLoaders.from_df(small_df(), bs=bs)
        one_line(e, "bs")


# --- settings and data: CLI ---------------------------------------------------------------------
BAD_ARGS = [
    (["--factors", "0"], "--factors"),
    (["--factors", "abc"], "--factors"),
    (["--bs", "0"], "--bs"),
    (["--bs", "-3"], "--bs"),
    (["--epochs", "0"], "--epochs"),
    (["--epochs", "1.5"], "--epochs"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-1e-3"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--wd", "-1"], "--wd"),
    (["--valid-pct", "1"], "--valid-pct"),
    (["--y-range", "5", "1"], "LO < HI"),
    (["--y-range", "1", "1"], "LO < HI"),
    (["--y-range", "0", "inf"], "LO < HI"),
    (["--y-range", "nan", "5"], "LO < HI"),
    (["--optimizer", "rmsprop"], "--optimizer"),
    (["--mode", "fast"], "--mode"),
    (["--backend", "tpu"], "--backend"),
    (["--resume"], "--checkpoint"),
    (["--save", "{tmp}"], "not a folder"),
    (["--save", "{tmp}/file.txt/m.npz"], "is a file"),
    (["--json", "{tmp}/file.txt/r.json"], "is a file"),
    (["--checkpoint", "{tmp}/file.txt"], "expected a folder"),
]


@pytest.mark.parametrize("args, fragment", BAD_ARGS)
def test_cli_bad_settings_exit_2_before_reading_data(monkeypatch, capsys, tmp_path, args, fragment):
    (tmp_path / "file.txt").write_text("not a folder")
    args = [a.format(tmp=tmp_path) for a in args]

    # An empty data folder and no network: reading the data would fail the test with an AssertionError.
    monkeypatch.setenv("MFSCRATCH_DATA", str(tmp_path / "empty"))

    def no_data(*a, **k):
        raise AssertionError("settings must be rejected before the data is read")

    monkeypatch.setattr("urllib.request.urlopen", no_data)
    rc, out, err = run_cli(capsys, "train", "--quiet", *args)
    assert rc == 2
    assert_one_line_error(err, fragment)


def test_cli_debug_shows_the_traceback():
    for argv in (["--debug", "train", "--y-range", "5", "1"], ["train", "--y-range", "5", "1", "--debug"]):
        with pytest.raises(ConfigError):
            main(argv)


@pytest.fixture
def fake_data(tmp_path, monkeypatch):
    monkeypatch.setenv("MFSCRATCH_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def test_cli_bad_rating_in_the_file(fake_data, capsys):
    write_fake_ml100k(fake_data, extra_lines=["3\t4\tfive\t874965758"])
    rc, out, err = run_cli(capsys, "train", "--quiet", "--epochs", "1")
    assert rc == 2
    assert_one_line_error(err, "rating column 'rating'", "'five'")


def test_cli_warnings_are_one_line(fake_data, capsys):
    write_fake_ml100k(fake_data, n_ratings=800, extra_lines=["1\t1\t9\t874965758", "1\t1\t4\t874965759"])
    rc, out, err = run_cli(capsys, "train", "--epochs", "1", "--bs", "32", "--factors", "4", "--y-range", "0", "5.5")
    assert rc == 0, err
    lines = err.strip().splitlines()
    assert lines and all(line.startswith("warning: ") for line in lines), err
    assert any("outside y_range" in line for line in lines) and any("repeat an earlier" in line for line in lines)


def test_cli_subprocess_exit_code_2():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for args, fragment in ((["--epochs", "0"], "--epochs"), (["--y-range", "5", "1"], "LO < HI")):
        proc = subprocess.run(
            [sys.executable, "-m", "mfscratch", "train", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert_one_line_error(proc.stderr, fragment)
