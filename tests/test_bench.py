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


def _fake_driver(tmp_path, lines="0.010 0.060\n0.011 0.071\n0.012 0.052\n"):
    """A stand-in for the LIBMF epoch-timing driver: checks its arguments, prints canned timings."""
    driver = tmp_path / "fake_libmf_driver"
    driver.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        "rows, m, n, k, threads, bins, epochs, repeats = sys.argv[1:]\n"
        "assert os.path.getsize(rows) % 12 == 0 and int(epochs) == 10 and int(repeats) == 3\n"
        "open(os.environ['FAKE_LIBMF_ARGS'], 'w').write(' '.join([str(os.path.getsize(rows) // 12), m, n, k, threads]))\n"
        f"sys.stdout.write({lines!r})\n"
    )
    driver.chmod(0o755)
    return driver


def test_libmf_row_from_a_driver(tmp_path, monkeypatch):
    """The libmf row: the driver's (t(1 + E) - t(1)) / E per repeat, median and best, the same training rows."""
    monkeypatch.setenv("FAKE_LIBMF_ARGS", str(tmp_path / "args.txt"))
    dls = synthetic_dataloaders(2000, 20, 30, bs=32, seed=0)
    rows = bench.bench_rows(
        dls, ["cpu", "libmf"], ("per-rating",), epochs=1, n_factors=4, log=None, libmf=_fake_driver(tmp_path)
    )
    assert [(r["backend"], r["mode"]) for r in rows] == [("cpu", "per-rating"), ("libmf", "per-rating")]
    libmf = rows[1]
    assert list(libmf) == list(bench.KEYS)
    assert libmf["seconds_per_epoch"] == pytest.approx(0.005)  # median of 0.005, 0.006, 0.004
    assert libmf["best_seconds_per_epoch"] == pytest.approx(0.004)
    assert libmf["epochs_timed"] == 30 and libmf["valid_mse"] is None
    assert libmf["ratings_per_second"] == pytest.approx(dls.n_train / 0.005)
    assert (tmp_path / "args.txt").read_text() == f"{dls.n_train} 20 30 4 1"
    cpu_row = rows[0]
    assert cpu_row["epochs_timed"] == bench.PER_RATING_RECIPE["epochs"]
    assert cpu_row["best_seconds_per_epoch"] <= cpu_row["seconds_per_epoch"]


def test_libmf_row_skips_with_one_line_without_a_path(monkeypatch):
    monkeypatch.setattr(bench, "load_torch_loop", lambda: (None, "torch is not installed"))
    logged = []
    dls = synthetic_dataloaders(2000, 20, 30, bs=32, seed=0)
    rows = bench.bench_rows(dls, None, ("per-rating",), epochs=1, n_factors=4, log=logged.append)
    assert "libmf" not in {r["backend"] for r in rows}
    assert sum("skipping the libmf row" in line for line in logged) == 1


def test_bench_cli_libmf_row_and_table(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_LIBMF_ARGS", str(tmp_path / "args.txt"))
    out = tmp_path / "rows.json"
    shape = TINY[: TINY.index("--epochs")]
    argv = ["bench", *shape, "--backend", "cpu", "--backend", "libmf", "--mode", "per-rating"]
    assert cli.main([*argv, "--libmf", str(_fake_driver(tmp_path)), "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "median s/epoch" in table and "best s/epoch" in table and "libmf" in table
    assert [r["backend"] for r in json.loads(out.read_text())] == ["cpu", "libmf"]


@pytest.mark.parametrize(
    "extra",
    [
        ["--backend", "libmf", "--mode", "per-rating"],  # no --libmf
        ["--backend", "libmf", "--mode", "exact", "--libmf", "x"],  # no per-rating
        ["--backend", "cpu", "--libmf", "x"],  # libmf row left out
        ["--libmf-threads", "2"],  # no --libmf
    ],
)
def test_bench_cli_libmf_bad_settings_exit_2(extra, capsys):
    assert cli.main(["bench", *TINY[: TINY.index("--epochs")], *extra]) == 2
    assert capsys.readouterr().err.startswith("error:")


def test_libmf_driver_with_bad_output_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_LIBMF_ARGS", str(tmp_path / "args.txt"))
    dls = synthetic_dataloaders(2000, 20, 30, bs=32, seed=0)
    with pytest.raises(bench.ConfigError, match="expected 3 lines"):
        bench.libmf_row(dls, _fake_driver(tmp_path, lines="garbage\n"), n_factors=4)
    with pytest.raises(bench.ConfigError, match="no such file"):
        bench.libmf_row(dls, tmp_path / "missing", n_factors=4)
