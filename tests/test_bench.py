"""``mfscratch bench`` on tiny synthetic data: the rows, the JSON, the restrictions (not the timings)."""

from __future__ import annotations

import json
import sys

import pytest

from mfscratch import bench, cli
from mfscratch.synthetic import synthetic_dataloaders

TINY = ["--ratings", "3000", "--users", "30", "--items", "40", "--factors", "4", "--epochs", "1"]


def test_bench_rows_json_and_torch_speedup(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "rows.json"
    assert cli.main(["bench", *TINY, "--backend", "cpu", "--backend", "torch", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["backend"], r["mode"]) for r in rows] == [
        ("cpu", "exact"),
        ("cpu", "sparse"),
        ("cpu", "per-rating"),
        ("torch", "exact"),
    ]
    for r in rows:
        assert list(r) == list(bench.KEYS)
        assert r["seconds_per_epoch"] > 0 and r["ratings_per_second"] > 0 and r["valid_mse"] > 0
    assert rows[-1]["speedup_vs_torch"] == pytest.approx(1.0)
    assert "valid MSE" in capsys.readouterr().out


def test_bench_mode_restriction_without_torch(monkeypatch):
    monkeypatch.setattr(bench, "load_torch_loop", lambda: (None, "torch is not installed"))
    logged = []
    dls = synthetic_dataloaders(2000, 20, 30, bs=32, seed=0)
    rows = bench.bench_rows(dls, None, ("sparse",), epochs=1, n_factors=4, log=logged.append)
    assert {r["mode"] for r in rows} == {"sparse"} and {r["backend"] for r in rows} == {"cpu", "parallel"}
    assert all(r["speedup_vs_torch"] is None for r in rows)
    assert any("skipping the PyTorch row" in line for line in logged)


def test_bench_per_rating_row_and_cornac():
    """per-rating runs per-rating SGD with its own recipe; cornac's row sits next to it."""
    pytest.importorskip("cornac")
    dls = synthetic_dataloaders(2000, 20, 30, bs=32, seed=0)
    rows = bench.bench_rows(dls, ["cpu", "cornac"], ("per-rating",), epochs=1, n_factors=4, log=None)
    assert [(r["backend"], r["mode"]) for r in rows] == [("cpu", "per-rating"), ("cornac", "per-rating")]
    assert dls.bs == 32  # the row trained on a copy of the loaders with bs 1
    for r in rows:
        assert 0 < r["valid_mse"] < 5 and r["seconds_per_epoch"] > 0


def test_old_mode_name_is_an_alias_with_a_deprecation_warning(tmp_path, capsys, monkeypatch):
    """0.1's ``sparse-sgd1`` still works for one release: as ``--mode`` and in rows read back."""
    monkeypatch.setattr(bench, "load_torch_loop", lambda: (None, "torch is not installed"))
    out = tmp_path / "rows.json"
    shape = TINY[: TINY.index("--epochs")]  # per-rating runs its own recipe: no --epochs
    assert cli.main(["bench", *shape, "--backend", "cpu", "--mode", "sparse-sgd1", "--json", str(out)]) == 0
    assert "'sparse-sgd1' is now called 'per-rating'" in capsys.readouterr().err
    rows = json.loads(out.read_text())
    assert [r["mode"] for r in rows] == ["per-rating"]
    rows[0]["mode"] = "sparse-sgd1"  # as 0.1 wrote it
    out.write_text(json.dumps(rows))
    with pytest.warns(DeprecationWarning, match="sparse-sgd1"):
        assert [r["mode"] for r in bench.read_json(out)] == ["per-rating"]


def test_library_does_not_import_torch():
    """Importing the package, the bench and the generator pulls in no torch (checked in a fresh process)."""
    import subprocess

    code = (
        "import sys, mfscratch, mfscratch.bench, mfscratch.synthetic, mfscratch.cli, mfscratch.torch_loop; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "argv", [["--ratings", "100"], ["--backend", "gpu0", *TINY], ["--sizes", "x", "--plot", "p.png"]]
)
def test_bench_bad_settings_exit_2(argv, capsys):
    assert cli.main(["bench", *argv]) == 2
    assert capsys.readouterr().err.startswith("error:")
