"""The command line's surface: full help texts, --version, and options that would be ignored are refused."""

from __future__ import annotations

import argparse
import json

import pytest
from conftest import make_ratings

from mfscratch import __version__
from mfscratch.backends import BACKENDS
from mfscratch.cli import build_parser, main


def subcommands():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


def test_every_option_has_help_and_backend_lists_every_backend():
    for name, parser in subcommands().items():
        for action in parser._actions:
            if action.option_strings and action.help != argparse.SUPPRESS:
                assert action.help, f"mfscratch {name} {action.option_strings[0]} has no help"
        backend = [a for a in parser._actions if "--backend" in a.option_strings]
        if name in ("train", "cv"):
            assert all(b in backend[0].help for b in BACKENDS), backend[0].help
    assert "--valid-pct" not in subcommands()["cv"].format_help()  # cv validates on the u1..u5 test files


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"mfscratch {__version__}"


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["train", "--split", "u1", "--valid-pct", "0.5"], "--valid-pct does not apply"),
        (["cv", "--valid-pct", "0.5"], "unrecognized arguments: --valid-pct"),
        (["train", "--ranking-threshold", "3"], "add --ranking-k K"),
        (["train", "--data", "ml-100k", "--no-header"], "only apply to --ratings"),
    ],
)
def test_ignored_options_are_refused(argv, fragment, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err and len(err.splitlines()) == 1


def test_valid_pct_is_honoured_and_recorded(tmp_path):
    make_ratings(n_ratings=400).to_csv(tmp_path / "r.csv", index=False)
    report = tmp_path / "r.json"
    argv = ["train", "--ratings", str(tmp_path / "r.csv"), "--epochs", "1", "--factors", "2", "--bs", "16"]
    assert main([*argv, "--valid-pct", "0.5", "--json", str(report), "--quiet"]) == 0
    r = json.loads(report.read_text())
    assert r["settings"]["valid_pct"] == 0.5 and r["n_valid"] == 200
