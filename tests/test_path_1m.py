"""A 1,000,000-row file of ML-25M's shape (scaled) end to end through ``mfscratch train`` with the
per-rating recipe and ``--json``: every row counted, the report's keys, and memory flat across epochs
(the peak RSS of a 6-epoch run within 5% of a 2-epoch run's). Correctness only; the 25M timings
come from ``benchmarks/ml25m_path.py``."""

from __future__ import annotations

import json
import sys

import pytest

from benchmarks.ml25m_path import RECIPE, run_child, shape_for, write_ratings_csv

ROWS = 1_000_000


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory):
    rows, users, items = shape_for(ROWS)
    return write_ratings_csv(tmp_path_factory.mktemp("path1m") / "ratings.csv", rows, users, items)


def _train(csv, epochs: int, report) -> tuple[dict, int]:
    argv = ["-m", "mfscratch", "train", "--ratings", str(csv), *RECIPE, "--epochs", str(epochs), "--quiet"]
    rc, _, peak = run_child([*argv, "--json", str(report)])
    assert rc == 0
    return json.loads(report.read_text()), peak


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS from /proc/self/status: Linux")
def test_one_million_rows_end_to_end_in_flat_memory(big_csv, tmp_path):
    short, short_peak = _train(big_csv, 2, tmp_path / "short.json")
    long, long_peak = _train(big_csv, 6, tmp_path / "long.json")
    _, users, items = shape_for(ROWS)
    for r, epochs in ((short, 2), (long, 6)):
        assert r["n_train"] + r["n_valid"] == ROWS and r["n_valid"] == ROWS // 5  # no row lost
        assert r["n_users"] <= users + 1 and r["n_items"] <= items + 1
        assert len(r["epochs"]) == epochs
        for key in ("read", "check", "encode", "split", "init", "compile", "setup", "report", "total", "train"):
            assert r[f"{key}_seconds"] >= 0, key
        assert all(e["train_seconds"] > 0 and e["valid_seconds"] >= 0 for e in r["epochs"])
        assert r["epochs"][-1]["valid_loss"] < 1.5  # it trains (ratings' variance is about 1)
        assert r["ranking"]["n_users"] > 0
    assert long["epochs"][-1]["valid_loss"] < short["epochs"][0]["valid_loss"]
    # at bs 1 every epoch is a million steps: per-step values kept for each would add 8 MB an epoch
    assert long_peak <= 1.05 * short_peak, (long_peak / 2**20, short_peak / 2**20)
