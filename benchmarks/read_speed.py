"""How much ``read_ratings`` costs over a plain ``pd.read_csv`` (C engine) on a large synthetic CSV.

``read_ratings`` does more than parse: it sniffs the encoding, separator and header, counts every
line, reads the id columns as text and types them by the id rule (``mfscratch.ids.parse_ids``), so
``007`` and ``7`` stay apart. This script writes a ML-25M-shaped CSV (``userId,movieId,rating,timestamp``,
synthetic ratings from ``mfscratch.synthetic``) once, then alternates the readers round by round and
prints the best and the median of each, with the load average (the machine may be shared)::

    python benchmarks/read_speed.py                 # 5M rows, 5 rounds
    python benchmarks/read_speed.py --rows 25000000 --rounds 3 --gzip

The file is kept in ``--dir`` (default: the system's temporary folder) for the next run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mfscratch.readers import read_ratings
from mfscratch.synthetic import ML_25M_SHAPE, synthetic_ratings


def write_csv(path: Path, n_rows: int, compress: bool) -> Path:
    n25, u25, i25 = ML_25M_SHAPE
    users, items, ratings = synthetic_ratings(
        n_rows, max(50, round(n_rows * u25 / n25)), max(50, round(n_rows * i25 / n25)),
        rating_range=(0.5, 5.0), rating_step=0.5, seed=0,
    )
    stamps = np.random.default_rng(0).integers(800_000_000, 1_700_000_000, n_rows)
    df = pd.DataFrame({"userId": users + 1, "movieId": items + 1, "rating": ratings, "timestamp": stamps})
    tmp = path.with_name(path.name + ".part")
    df.to_csv(tmp, index=False, compression="gzip" if compress else None)
    os.replace(tmp, path)
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=5_000_000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--gzip", action="store_true", help="time a gzip-compressed file instead")
    p.add_argument("--dir", default=tempfile.gettempdir())
    args = p.parse_args(argv)
    path = Path(args.dir) / f"mfscratch_read_speed_{args.rows}.csv{'.gz' if args.gzip else ''}"
    if not path.is_file():
        print(f"writing {path} ...")
        write_csv(path, args.rows, args.gzip)
    print(f"{path}: {path.stat().st_size / 1e6:.0f} MB, {args.rows:,} rows")

    def plain():
        df = pd.read_csv(path, usecols=["userId", "movieId", "rating"])
        return len(df)

    def ours():
        return len(read_ratings(path, "userId", "movieId", "rating").df)

    readers = {"pd.read_csv (C engine)": plain, "mfscratch read_ratings": ours}
    ours()  # compile the id and line-count kernels (cached on disk after the first run)
    times: dict[str, list[float]] = {name: [] for name in readers}
    loads = []
    for _ in range(args.rounds):
        for name, read in readers.items():
            t0 = time.perf_counter()
            n = read()
            times[name].append(time.perf_counter() - t0)
            assert n == args.rows, (name, n)
        loads.append(Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?")
    base = statistics.median(times["pd.read_csv (C engine)"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<26} best {min(ts):.3f} s   median {med:.3f} s   ({med / base:.2f}x the plain read)")
    print(f"load average (1 min) after each round: {' '.join(loads)}")


if __name__ == "__main__":
    main()
