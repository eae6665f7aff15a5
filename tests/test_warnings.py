"""Warnings point at the user's line, the command line prints each once a run, and --quiet silences them."""

from __future__ import annotations

import pytest
from conftest import make_ratings

from mfscratch import CollabDataLoaders, DataWarning, collab_learner
from mfscratch.analysis import FallbackWarning
from mfscratch.cli import main
from mfscratch.readers import read_ratings

SMALL = ["--epochs", "1", "--factors", "4", "--bs", "16"]


def test_data_warning_names_the_callers_line(tmp_path):
    df = make_ratings(n_ratings=300)
    assert df.duplicated(["user", "item"]).any()
    with pytest.warns(DataWarning, match="repeat an earlier") as direct:
        CollabDataLoaders.from_df(df, seed=0)
    df.to_csv(tmp_path / "r.csv", index=False)
    table = read_ratings(tmp_path / "r.csv", "user", "item", "rating")
    with pytest.warns(DataWarning, match="repeat an earlier") as through_reader:
        table.loaders(0.2, 0, 16)  # RatingsTable.loaders -> from_df -> the check: still this line
    for record in (*direct, *through_reader):
        assert record.filename == __file__


def test_fallback_warning_names_the_callers_line():
    dls = CollabDataLoaders.from_codes([0, 1, 2, 0], [0, 1, 2, 2], [1.0, 2.0, 3.0, 4.0], 3, 3, valid_pct=0.0, bs=2)
    learn = collab_learner(dls, n_factors=2, y_range=(0, 5.5), seed=0, log=None)
    with pytest.warns(FallbackWarning, match="not in the training data") as records:
        learn.recommend("nobody", 2)
    assert [r.filename for r in records] == [__file__]


@pytest.fixture
def ratings_file(tmp_path):
    path = tmp_path / "r.csv"
    make_ratings(n_ratings=300).to_csv(path, index=False)
    return path


def test_cli_prints_a_warning_once_and_quiet_silences_it(ratings_file, capsys):
    assert main(["train", "--ratings", str(ratings_file), *SMALL]) == 0
    err = capsys.readouterr().err
    assert err.count("repeat an earlier") == 1 and err.count("warning: ") == 1
    assert main(["train", "--ratings", str(ratings_file), *SMALL, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
