"""Peak RSS of each phase of the data path (read, check, encode, split, init), in one process (issue 17).

    python -m benchmarks.data_memory                  # the 25,000,095-row file of benchmarks.ml25m_path
    python -m benchmarks.data_memory --rows 1000000   # a smaller file of the same shape
    python -m benchmarks.data_memory --quick          # 1,000,000 rows: a check that it runs

The file is read as ``mfscratch train --ratings FILE`` reads it (``cli.train.load_training_data``), then the
learner of the per-rating recipe is made (``collab_learner``). Before each phase the kernel's peak-RSS
counter is reset (``5`` written to ``/proc/self/clear_refs``), after it ``VmHWM`` (the phase's peak) and
``VmRSS`` (what stays) are read, so each phase's peak is its own, not the run's so far. Phases inside
``CollabDataLoaders.from_df`` are told apart by wrapping the functions it calls. ``B`` is the RSS after
``import mfscratch`` with the data kernels and the per-rating kernels compiled (a tiny warm-up fit).
Linux only. Prints JSON, a Markdown table and the load average at the start and the end.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from typing import Any

RECIPE_ARGS = dict(factors=64, optimizer="sgd", mode="sparse", backend="parallel")


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


PHASES: list[dict[str, Any]] = []


def _measured(label: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        gap_peak = _status("VmHWM")  # the peak since the previous phase ended (the code between phases)
        _reset_peak()
        before = _status("VmRSS")
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            PHASES.append(
                {
                    "phase": label,
                    "gap_peak_gb": round(gap_peak / 1e9, 3),
                    "seconds": round(time.perf_counter() - t0, 3),
                    "rss_before_gb": round(before / 1e9, 3),
                    "peak_gb": round(_status("VmHWM") / 1e9, 3),
                    "rss_after_gb": round(_status("VmRSS") / 1e9, 3),
                }
            )

    return wrapper


def _warm_up() -> None:
    """Compile (or load from the cache) every kernel the path uses, on a tiny table, so that B includes them."""
    import numpy as np
    import pandas as pd

    from mfscratch import collab_learner
    from mfscratch.data import CollabDataLoaders

    rng = np.random.default_rng(0)
    n = 2000
    df = pd.DataFrame(
        {
            "userId": rng.integers(1, 50, n),
            "movieId": rng.integers(1, 80, n),
            "rating": rng.integers(1, 11, n) / 2.0,
        }
    )
    dls = CollabDataLoaders.from_df(df, seed=0, bs=1, consume=True)
    learn = collab_learner(dls, n_factors=8, y_range=(0, 5.5), opt_func="sgd", sparse=True, backend="parallel")
    learn.fit_one_cycle(1, 0.02, wd=0.01)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help="rows of the file (default: ML-25M's 25,000,095)")
    parser.add_argument("--quick", action="store_true", help="1,000,000 rows")
    args = parser.parse_args(argv)
    load_start = os.getloadavg()

    from benchmarks.ml25m_path import ML_25M_ROWS, cached_csv

    rows = args.rows or (1_000_000 if args.quick else ML_25M_ROWS)
    csv = cached_csv(rows)

    import mfscratch
    from mfscratch import collab_learner, data, validate
    from mfscratch.cli import train as cli_train

    _warm_up()
    import gc

    gc.collect()
    baseline = _status("VmRSS")

    # The phases inside from_df: the names it looks up at call time (module attributes).
    for name in ("check_rating_values", "check_id_values", "check_distinct", "warn_repeated_pairs"):
        setattr(validate, name, _measured(f"check: {name}", getattr(validate, name)))
    data._encode = _measured("encode", data._encode)
    split = data.CollabDataLoaders._split.__func__
    data.CollabDataLoaders._split = classmethod(_measured("split", split))
    from mfscratch import readers

    readers_read = readers.read_ratings
    readers.read_ratings = _measured("read", readers_read)

    ns = argparse.Namespace(
        ratings=str(csv),
        user_col="userId",
        item_col="movieId",
        rating_col="rating",
        items=None,
        item_key=None,
        title_col=None,
        header=None,
        encoding=None,
        sep=None,
        data=None,
        split=None,
        valid_pct=None,
        seed=None,
        bs=1,
        quiet=True,
    )
    t0 = time.perf_counter()
    _reset_peak()
    dls, _ = cli_train.load_training_data(ns)
    data_seconds = time.perf_counter() - t0
    learn = _measured("init (collab_learner)", collab_learner)(
        dls,
        n_factors=RECIPE_ARGS["factors"],
        y_range=(0, 5.5),
        opt_func=RECIPE_ARGS["optimizer"],
        sparse=True,
        backend=RECIPE_ARGS["backend"],
    )
    del learn
    ratings_bytes = 12 * rows
    params_bytes = (dls.n_users + dls.n_items) * (RECIPE_ARGS["factors"] + 1) * 4
    bound = baseline + 2 * (ratings_bytes + params_bytes)
    data_peak = max(max(p["peak_gb"], p["gap_peak_gb"]) for p in PHASES) * 1e9
    out = {
        "file": str(csv),
        "rows": rows,
        "mfscratch": mfscratch.__version__ if hasattr(mfscratch, "__version__") else None,
        "baseline_rss_gb": round(baseline / 1e9, 3),
        "ratings_gb": round(ratings_bytes / 1e9, 3),
        "params_gb": round(params_bytes / 1e9, 3),
        "bound_gb": round(bound / 1e9, 3),
        "data_and_init_peak_gb": round(data_peak / 1e9, 3),
        "under_bound": data_peak <= bound,
        "data_seconds": round(data_seconds, 3),
        "phases": PHASES,
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
    }
    print(json.dumps(out, indent=1))
    print()
    print("| phase | seconds | peak since the last phase (GB) | RSS before (GB) | peak (GB) | RSS after (GB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for p in PHASES:
        print(
            f"| {p['phase']} | {p['seconds']} | {p['gap_peak_gb']} | {p['rss_before_gb']} | {p['peak_gb']} "
            f"| {p['rss_after_gb']} |"
        )
    print()
    print(
        f"B {out['baseline_rss_gb']} GB, bound {out['bound_gb']} GB, peak of the data phases and init "
        f"{out['data_and_init_peak_gb']} GB ({'under' if out['under_bound'] else 'OVER'} the bound)"
    )
    print(f"load average: start {load_start}, end {out['loadavg_end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
