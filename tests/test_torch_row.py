"""The PyTorch reference loop ships in the package (torch imported only when it runs), and bench refuses rows
and options it cannot honour with one error line."""

from __future__ import annotations

import pytest

from mfscratch import bench, cli, torch_loop

TINY = ["--ratings", "3000", "--users", "30", "--items", "40", "--factors", "4"]


def test_the_loop_is_part_of_the_package():
    # (test_bench's test_library_does_not_import_torch checks that importing it imports no torch)
    if torch_loop.available() is None:
        assert bench.load_torch_loop()[0] is torch_loop
    else:
        assert bench.load_torch_loop() == (None, torch_loop.available())


def test_a_backend_that_cannot_run_is_an_error_not_an_empty_table(monkeypatch, capsys):
    monkeypatch.setattr(torch_loop, "available", lambda: "torch is not installed (pip install torch)")
    assert cli.main(["bench", *TINY, "--backend", "torch"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "error: --backend torch cannot run: torch is not installed (pip install torch)\n"
    assert "valid MSE" not in captured.out  # no table
    assert cli.main(["bench", *TINY, "--backend", "cornac", "--mode", "exact"]) == 2
    assert "add --mode per-rating" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["--sizes", "1000,2000"], "--sizes sets the data sizes of the --plot sweep"),
        (["--backend", "cpu", "--torch-threads", "2"], "this run has no torch row"),
        (["--mode", "per-rating", "--lr", "0.1"], "--lr do not apply to per-rating"),
        (["--data", "ml-1m"], "not both"),
    ],
)
def test_options_that_would_be_ignored_are_refused(argv, fragment, capsys):
    assert cli.main(["bench", *TINY, *argv]) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.splitlines()) == 1


def test_one_epoch_is_singular(capsys):
    assert cli.main(["bench", *TINY, "--epochs", "1", "--backend", "cpu", "--mode", "sparse"]) == 0
    assert "1 epoch of one-cycle" in capsys.readouterr().out
