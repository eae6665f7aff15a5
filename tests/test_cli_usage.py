"""The command line for any ratings file, the usage commands (recommend, similar, biases, predict) and cv."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from conftest import make_ratings

from mfscratch.cli import main
from mfscratch.io import load_model

SMALL = ["--epochs", "1", "--factors", "4", "--bs", "16"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained from a headerless TSV with an items file joined for names."""
    folder = tmp_path_factory.mktemp("usage")
    df = make_ratings(n_users=20, n_items=25, n_ratings=400, lo=1, hi=5)
    df["item"] = df["item"].str[4:].astype(int)
    df[["item", "rating", "user"]].to_csv(folder / "r.tsv", sep="\t", header=False, index=False)
    pd.DataFrame({"movie": range(25), "name": [f"Film {i} (2000)" for i in range(25)]}).to_csv(
        folder / "items.csv", index=False
    )
    model, report = folder / "m.npz", folder / "r.json"
    rc = main(
        [
            "train",
            "--ratings",
            str(folder / "r.tsv"),
            "--user-col",
            "2",
            "--item-col",
            "0",
            "--rating-col",
            "1",
            "--items",
            str(folder / "items.csv"),
            "--item-key",
            "movie",
            "--title-col",
            "name",
            *SMALL,
            "--save",
            str(model),
            "--json",
            str(report),
            "--ranking-k",
            "5",
        ]
    )
    assert rc == 0
    return model, json.loads(report.read_text()), df


def test_train_from_file_reports_and_saves(trained, capsys):
    model, report, df = trained
    assert report["settings"]["y_range"] == [0.0, 5.5] and report["settings"]["y_range_from_data"]
    r = report["ranking"]
    assert r["k"] == 5 and r["n_users"] > 0 and 0 <= r["ndcg"] <= 1
    m, classes, meta = load_model(model)
    assert classes["title"][1].startswith("Film ")
    assert meta["seen_indptr"].shape == (m.n_users + 1,)
    assert meta["item_counts"].sum() == report["n_train"]


def test_usage_commands(trained, capsys):
    model, _, df = trained
    user = str(df["user"].iloc[0])
    assert main(["recommend", "--model", str(model), "--user", user, "-n", "3"]) == 0
    out = capsys.readouterr().out
    assert "predicted_rating" in out and len(out.strip().splitlines()) == 4
    assert main(["similar", "--model", str(model), "Film 3 (2000)", "-n", "2", "--min-ratings", "1"]) == 0
    assert "similarity" in capsys.readouterr().out
    assert main(["biases", "--model", str(model), "-n", "2"]) == 0
    assert capsys.readouterr().out.count("highest") == 2
    assert main(["predict", "--model", str(model), "--user", user, "Film 3 (2000)", "No Such Film"]) == 0
    captured = capsys.readouterr()
    assert "No Such Film" in captured.out and "note: unknown item(s) No Such Film" in captured.err


def test_unknown_user_is_a_note_not_a_crash(trained, capsys):
    model, _, _ = trained
    assert main(["recommend", "--model", str(model), "--user", "nobody", "-n", "2"]) == 0
    assert "note: user 'nobody' is not in the training data" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--user-col", "0"], "only apply to --ratings"),
        (["train", "--ratings", "missing.csv"], "missing.csv does not exist"),
        (["train", "--ratings", "x.csv", "--data", "ml-100k"], "not both"),
        (["train", "--data", "ml-1m", "--split", "u1"], "does not apply"),
        (["similar", "--model", "missing.npz", "X"], "does not exist"),
    ],
)
def test_errors_exit_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_missing_column_names_it(tmp_path, capsys):
    make_ratings(n_ratings=50).to_csv(tmp_path / "r.csv", index=False)
    assert main(["train", "--ratings", str(tmp_path / "r.csv"), "--rating-col", "stars", *SMALL]) == 2
    assert "'stars' not found" in capsys.readouterr().err


@pytest.mark.realdata
def test_train_on_ml100k_keeps_its_output(ml100k, capsys):
    assert main(["train", "--epochs", "1", "--split", "u1"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "note: y_range (0.0, 5.5) derived from the ratings" in captured.err
    assert out.splitlines()[0].split() == ["epoch", "train_loss", "valid_loss", "time"]
    for expected in (
        "epoch     train_loss  valid_loss",
        "EmbeddingDotBias(",
        "Highest learned item biases:",
        "Nearest to 'Silence of the Lambs, The (1991)' by cosine similarity, among items rated at least 50 times",
    ):
        assert expected in out


@pytest.mark.realdata
def test_cv_on_ml100k(ml100k, tmp_path, capsys):
    report = tmp_path / "cv.json"
    assert main(["cv", "--epochs", "1", "--json", str(report)]) == 0
    r = json.loads(report.read_text())
    assert [f["fold"] for f in r["folds"]] == ["u1", "u2", "u3", "u4", "u5"]
    assert sum(f["n_test"] for f in r["folds"]) == 100_000
    rmse = np.array([f["rmse"] for f in r["folds"]])
    assert r["summary"]["rmse"]["mean"] == pytest.approx(rmse.mean())
    assert 0.85 < rmse.mean() < 1.1  # one epoch of the recipe
    captured = capsys.readouterr()
    assert "mean  rmse" in captured.out
    assert captured.err.count("repeat an earlier") == 1  # once a run, not once a fold
    folds = [line for line in captured.out.splitlines() if line[:2] == "u1"]
    assert folds and re.search(r"\d\d:\d\d\s*$", folds[0])  # fastai's mm:ss, as train's table


def test_train_plot_writes_pngs(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    make_ratings(n_ratings=200).to_csv(tmp_path / "r.csv", index=False)
    assert main(["train", "--ratings", str(tmp_path / "r.csv"), *SMALL, "--plot", str(tmp_path / "plots")]) == 0
    for name in ("losses.png", "schedule.png", "item_pca.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"
