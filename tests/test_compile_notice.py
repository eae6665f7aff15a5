"""The 'compiling kernels (first run only)' line: shown when Numba compiles, never for kernels from its cache."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numba
import pytest
from conftest import make_ratings

from mfscratch import notices
from mfscratch.cli import main

SCRIPT = textwrap.dedent("""
    import importlib.util, sys
    sys.path.insert(0, sys.argv[1])
    spec = importlib.util.spec_from_file_location("notices", sys.argv[2])  # without the package's imports
    notices = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(notices)
    with notices.compile_notice(lambda line: print("NOTICE", line)):
        import tiny_kernel
        print(tiny_kernel.double(21))
""")


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(notices, "_compile_said", False)


def test_a_compile_is_announced_once(fresh):
    said = []

    @numba.njit
    def add(a, b):
        return a + b

    with notices.compile_notice(said.append):
        add(1, 2)
        add(1.5, 2.5)  # a second signature compiles too: still one line
    assert said == [notices.COMPILE_LINE]


def test_kernels_from_the_disk_cache_are_not_announced(tmp_path):
    (tmp_path / "tiny_kernel.py").write_text(
        "import numba\n\n@numba.njit(cache=True)\ndef double(x):\n    return 2 * x\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    argv = [sys.executable, "-c", SCRIPT, str(tmp_path), notices.__file__]
    runs = [subprocess.run(argv, capture_output=True, text=True, env=env, check=True) for _ in range(2)]
    assert runs[0].stdout.splitlines() == [f"NOTICE {notices.COMPILE_LINE}", "42"]  # first run: compiled
    assert runs[1].stdout.splitlines() == ["42"]  # second run: loaded from the cache, no line


def test_cli_says_nothing_when_nothing_compiles(fresh, tmp_path, capsys):
    make_ratings(n_ratings=300).to_csv(tmp_path / "r.csv", index=False)
    argv = ["train", "--ratings", str(tmp_path / "r.csv"), "--epochs", "1", "--factors", "3", "--bs", "16"]
    assert main(argv) == 0  # compiles or loads whatever this process has not used yet
    capsys.readouterr()
    notices._compile_said = False
    assert main(argv) == 0
    assert "compiling kernels" not in capsys.readouterr().err
