"""Helpers for the robustness tests: a synthetic stand-in for the ML-100k folder, and CLI runs.

The fake folder has ML-100k's file layout (``u.data`` tab-separated, ``u.item`` pipe-separated)
filled with random synthetic ratings, so that ``mfscratch train`` can run end to end through
``MFSCRATCH_DATA`` without the real data (and without any MovieLens content in the repository).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mfscratch.cli import main


def write_fake_ml100k(root: Path, n_users=40, n_items=50, n_ratings=1200, seed=0, extra_lines=()) -> Path:
    """Write ``root/ml-100k/{u.data,u.item}`` with random ratings 1-5 of distinct (user, item) pairs;
    ``extra_lines`` are appended to u.data as they are."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "ml-100k"
    folder.mkdir(parents=True, exist_ok=True)
    pairs = rng.choice(n_users * n_items, n_ratings, replace=False)
    users, items = pairs // n_items + 1, pairs % n_items + 1
    ratings = np.clip(np.round(3 + rng.normal(size=n_ratings) + 0.05 * (users % 7) - 0.05 * (items % 5)), 1, 5)
    lines = [f"{u}\t{i}\t{int(r)}\t{874965758 + n}" for n, (u, i, r) in enumerate(zip(users, items, ratings))]
    (folder / "u.data").write_text("\n".join([*lines, *extra_lines]) + "\n")
    (folder / "u.item").write_text(
        "".join(f"{i}|Synthetic film {i:03d} (2000)|01-Jan-2000||\n" for i in range(1, n_items + 1)), encoding="latin-1"
    )
    return folder


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``mfscratch.cli.main(argv)``: its return code, stdout and stderr."""
    capsys.readouterr()  # drop anything printed before
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(err: str, *fragments: str) -> None:
    """stderr is exactly one ``error: ...`` line (no traceback) holding every fragment."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
