"""The whole path at ML-25M's shape, as a user meets it: read, check, encode, train, report (issue 17).

    python -m benchmarks.ml25m_path                    # 25,000,095 rows: end to end (12 epochs) and flatness (3 vs 30)
    python -m benchmarks.ml25m_path --only e2e         # the 12-epoch run and the pandas read only
    python -m benchmarks.ml25m_path --only flat        # the 3- and 30-epoch runs only
    python -m benchmarks.ml25m_path --rows 5000000     # a smaller file of the same shape (users, items scaled)
    python -m benchmarks.ml25m_path --quick            # 1,000,000 rows, 3 epochs, flatness 2 vs 6: a check that it runs

The file (``userId,movieId,rating,timestamp``, half stars, ML-25M's 162,541 users and 59,047 items
scaled to ``--rows``) is generated once by ``mfscratch.synthetic`` and cached outside the repository
in ``$MFSCRATCH_CACHE`` (default ``~/.cache/mfscratch/bench``). The script then times
``pd.read_csv`` of it, and runs the documented per-rating recipe through ``mfscratch train ... --json``
in a subprocess, with warm caches as an installed package has them (the package's modules are
byte-compiled first, as ``pip install`` compiles them, and a 1-epoch run on a small file warms the
Numba cache); the child's peak RSS is read by the child itself at its exit (``VmHWM``). ``B`` is the
peak RSS of a child that imports mfscratch and loads the per-rating kernels from that warm cache (a
learner's warm-up on a tiny problem). It prints each phase's seconds (from the
report) as JSON and a Markdown table, the goals met or not met, and the load average at the start
and the end:

1. end to end (the child's wall time, 12 epochs, ``--json``) at most 6x the pandas read;
2. peak RSS at most B + 2 x (ratings + parameters), ratings 12 bytes a row (three 4-byte columns)
   and parameters ``(users + items) x (factors + 1) x 4`` bytes;
3. flat: the 30-epoch run's peak at most 1.05x the 3-epoch run's.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ML_25M_ROWS, ML_25M_USERS, ML_25M_ITEMS = 25_000_095, 162_541, 59_047
#: The documented per-rating recipe (docs/usage.md), on the file's column names.
RECIPE = [
    "--user-col", "userId", "--item-col", "movieId", "--rating-col", "rating",
    "--mode", "sparse", "--optimizer", "sgd", "--bs", "1", "--lr", "0.02", "--wd", "0.01",
    "--factors", "64", "--backend", "parallel",
]  # fmt: skip
_ROWS_PER_CHUNK = 1 << 20


def cache_dir() -> Path:
    """Where generated files live: ``$MFSCRATCH_CACHE`` or ``~/.cache/mfscratch/bench`` (never the repository)."""
    env = os.environ.get("MFSCRATCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mfscratch" / "bench"


def shape_for(rows: int) -> tuple[int, int, int]:
    """``(rows, users, items)``: ML-25M's users and items scaled by ``rows / 25M`` (at least 100 each)."""
    scale = rows / ML_25M_ROWS
    return rows, max(100, round(ML_25M_USERS * scale)), max(100, round(ML_25M_ITEMS * scale))


def write_ratings_csv(path: Path, rows: int, users: int, items: int, seed: int = 0) -> Path:
    """A MovieLens-25M-like ``ratings.csv`` at ``path`` (written to a temporary name, then renamed).

    User ids are ``1..users``; movie ids are ``items`` distinct sorted ids drawn from ``1..4 x items``
    (MovieLens' ids have gaps); ratings are half stars 0.5-5; timestamps increase with the row.
    """
    import pandas as pd

    from mfscratch.synthetic import synthetic_ratings

    u, i, r = synthetic_ratings(rows, users, items, rating_range=(0.5, 5.0), rating_step=0.5, seed=seed)
    rng = np.random.default_rng(seed + 1)
    movie_ids = np.sort(rng.choice(4 * items, items, replace=False)) + 1
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write("userId,movieId,rating,timestamp\n")
            for start in range(0, rows, _ROWS_PER_CHUNK):
                stop = min(start + _ROWS_PER_CHUNK, rows)
                chunk = pd.DataFrame(
                    {
                        "userId": u[start:stop] + 1,
                        "movieId": movie_ids[i[start:stop]],
                        "rating": r[start:stop],
                        "timestamp": np.arange(start, stop, dtype=np.int64) + 1_000_000_000,
                    }
                )
                chunk.to_csv(f, header=False, index=False, float_format="%.1f")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def cached_csv(rows: int) -> Path:
    """The cached file of ``rows`` rows, generated on first use."""
    rows, users, items = shape_for(rows)
    path = cache_dir() / f"ml25m_shape_{rows}_{users}_{items}.csv"
    if not path.is_file():
        t0 = time.perf_counter()
        write_ratings_csv(path, rows, users, items)
        print(f"generated {path} ({rows:,} rows) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return path


#: Runs ``-m MODULE ARGS...`` or ``-c CODE`` and writes the process's peak RSS (``VmHWM``, kB) to a file at
#: exit. Measured inside the child: a child's ``ru_maxrss`` (``os.wait4``) starts from its parent's RSS
#: at the fork, so a parent that has read the file with pandas would inflate every child's figure.
_MEASURED = """
import atexit, runpy, sys
peak_file, how, what, *rest = sys.argv[1:]

def _write_peak():
    with open('/proc/self/status') as status:
        peak = next(line.split()[1] for line in status if line.startswith('VmHWM:'))
    with open(peak_file, 'w') as out:
        out.write(peak)

atexit.register(_write_peak)
sys.argv = [what, *rest]
if how == '-m':
    runpy.run_module(what, run_name='__main__', alter_sys=True)
else:
    exec(compile(what, '<benchmark>', 'exec'), {'__name__': '__main__'})
"""


def run_child(argv: list[str]) -> tuple[int, float, int]:
    """Run ``python -m MODULE ...`` or ``python -c CODE`` (``argv``) and return ``(exit status, wall
    seconds, peak RSS in bytes)`` of that child alone (``VmHWM``, read by the child at its exit)."""
    root = Path(__file__).resolve().parents[1]  # the repository: ``-m mfscratch`` runs this checkout
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak"
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", _MEASURED, str(peak_file), *argv], stdout=subprocess.DEVNULL, cwd=root
        )
        wall = time.perf_counter() - t0
        peak = int(peak_file.read_text()) * 1024 if peak_file.is_file() else 0
    return proc.returncode, wall, peak


_BASELINE = """
import numpy as np
import mfscratch
from mfscratch import SGD, CollabDataLoaders, collab_learner
rng = np.random.default_rng(0)
users, items, ratings = rng.integers(0, 50, 2000), rng.integers(0, 60, 2000), rng.integers(1, 6, 2000)
dls = CollabDataLoaders.from_codes(users, items, ratings, 50, 60, bs=1)
learn = collab_learner(dls, n_factors=64, y_range=(0, 5.5), opt_func=SGD, sparse=True, backend="parallel", log=None)
learn.warmup()
"""


def train_run(csv: Path, epochs: int, report: Path) -> dict:
    """``mfscratch train`` with the recipe on ``csv`` in a child: its report, wall time and peak RSS."""
    argv = ["-m", "mfscratch", "train", "--ratings", str(csv), *RECIPE, "--epochs", str(epochs), "--quiet"]
    rc, wall, peak = run_child([*argv, "--json", str(report)])
    if rc != 0:
        raise SystemExit(f"error: mfscratch train exited with status {rc}: {' '.join(argv)}")
    result = json.loads(report.read_text())
    return {"epochs": epochs, "wall_seconds": wall, "peak_rss": peak, "report": result}


def phases_of(run: dict) -> dict:
    """The run's phase seconds from its report (per-epoch train and valid seconds summed)."""
    r = run["report"]
    phases = {k: r.get(f"{k}_seconds") for k in ("read", "check", "encode", "split", "init", "compile", "setup")}
    phases["train (all epochs)"] = sum(e["train_seconds"] for e in r["epochs"])
    phases["train (median epoch)"] = float(np.median([e["train_seconds"] for e in r["epochs"]]))
    phases["valid (all epochs)"] = sum(e["valid_seconds"] for e in r["epochs"])
    phases["report"] = r.get("report_seconds")
    phases["ranking"] = (r.get("ranking") or {}).get("seconds")
    phases["command (report's total)"] = r.get("total_seconds")
    phases["process wall (child)"] = run["wall_seconds"]
    return phases


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=ML_25M_ROWS, help="rows of the generated file (default ML-25M's)")
    p.add_argument("--epochs", type=int, default=12, help="epochs of the end-to-end run (default 12)")
    p.add_argument("--flat-epochs", default="3,30", help="the two runs of the flatness check (default 3,30)")
    p.add_argument("--only", choices=("e2e", "flat"), help="run one part only")
    p.add_argument("--quick", action="store_true", help="1,000,000 rows, 3 epochs, flatness 2 vs 6")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.epochs, args.flat_epochs = 1_000_000, 3, "2,6"
    load_start = os.getloadavg()
    csv = cached_csv(args.rows)
    warm = cached_csv(20_000)
    # Byte-compiled modules, as an installed package has them (where PYTHONDONTWRITEBYTECODE is set, a
    # checkout's modules would otherwise be compiled from source at every start: about 0.08 s).
    compileall.compile_dir(Path(__file__).resolve().parents[1] / "mfscratch", quiet=1)
    out: dict = {"rows": args.rows, "file": str(csv), "file_bytes": csv.stat().st_size, "load_start": load_start}

    import pandas as pd

    t0 = time.perf_counter()
    n_read = len(pd.read_csv(csv))
    out["pandas_read_seconds"] = time.perf_counter() - t0
    assert n_read == args.rows, (n_read, args.rows)

    with tempfile.TemporaryDirectory() as tmp:
        train_run(warm, 1, Path(tmp) / "warm.json")  # the Numba cache is warm for what follows
        # B with the kernels loaded from the warm cache (compiling them would take more memory)
        rc, _, baseline = run_child(["-c", _BASELINE])
        if rc != 0:
            raise SystemExit("error: the baseline child (import mfscratch, load the kernels) failed")
        out["baseline_rss"] = baseline
        runs = {}
        if args.only in (None, "e2e"):
            runs["e2e"] = train_run(csv, args.epochs, Path(tmp) / "e2e.json")
        if args.only in (None, "flat"):
            short, long = (int(e) for e in args.flat_epochs.split(","))
            runs["flat_short"] = train_run(csv, short, Path(tmp) / "short.json")
            runs["flat_long"] = train_run(csv, long, Path(tmp) / "long.json")

    goals = {}
    any_run = next(iter(runs.values()))["report"]
    n_params = (any_run["n_users"] + any_run["n_items"]) * (64 + 1)
    ratings_bytes, params_bytes = 12 * args.rows, 4 * n_params
    bound = baseline + 2 * (ratings_bytes + params_bytes)
    out.update(ratings_bytes=ratings_bytes, params_bytes=params_bytes, rss_bound=bound)
    if "e2e" in runs:
        e2e = runs["e2e"]
        ratio = e2e["wall_seconds"] / out["pandas_read_seconds"]
        goals["1. end to end <= 6x pandas read"] = {"ratio": round(ratio, 2), "met": ratio <= 6}
        goals["2. peak RSS <= B + 2 x (ratings + params)"] = {
            "peak_gb": round(e2e["peak_rss"] / 1e9, 3),
            "bound_gb": round(bound / 1e9, 3),
            "met": e2e["peak_rss"] <= bound,
        }
    if "flat_long" in runs:
        a, b = runs["flat_short"], runs["flat_long"]
        ratio = b["peak_rss"] / a["peak_rss"]
        goals[f"3. peak of {b['epochs']} epochs <= 1.05 x {a['epochs']} epochs"] = {
            "ratio": round(ratio, 3),
            "met": ratio <= 1.05,
        }
    out["runs"] = {
        name: {
            "epochs": run["epochs"],
            "peak_rss_gb": round(run["peak_rss"] / 1e9, 3),
            "phases": phases_of(run),
            "epoch_train_seconds": [e["train_seconds"] for e in run["report"]["epochs"]],
            "epoch_valid_seconds": [e["valid_seconds"] for e in run["report"]["epochs"]],
            "ranking": run["report"].get("ranking"),
        }
        for name, run in runs.items()
    }
    out["goals"] = goals
    out["load_end"] = os.getloadavg()
    print(json.dumps(out, indent=1, default=float))
    print()
    print(f"pandas read: {out['pandas_read_seconds']:.2f} s; B (import + kernels): {baseline / 1e9:.3f} GB")
    names = list(runs)
    print("| phase (s) | " + " | ".join(f"{n} ({runs[n]['epochs']} ep)" for n in names) + " |")
    print("| --- |" + " --- |" * len(names))
    for phase in phases_of(runs[names[0]]):
        cells = [out["runs"][n]["phases"].get(phase) for n in names]
        print(f"| {phase} | " + " | ".join("" if c is None else f"{c:.2f}" for c in cells) + " |")
    print("| peak RSS (GB) | " + " | ".join(f"{out['runs'][n]['peak_rss_gb']:.3f}" for n in names) + " |")
    print()
    for goal, result in goals.items():
        print(f"- {goal}: {'met' if result['met'] else 'NOT met'} ({result})")
    print(f"load average: start {load_start}, end {out['load_end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
