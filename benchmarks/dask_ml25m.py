"""Per-rating SGD at ML-25M's shape on a Dask LocalCluster (1 and 2 single-thread workers) against the
parallel backend on the same cores, with the bytes the workers send each other.

    python benchmarks/dask_ml25m.py                          # 25,000,095 ratings, 3 rounds within --budget 240 s
    python benchmarks/dask_ml25m.py --quick                  # 200,000 ratings, 1 round: checks the script
    python benchmarks/dask_ml25m.py --prepare                # only writes the data set (once, about a minute)

The ratings are ``mfscratch.synthetic``'s ML-25M-like set (162,541 users, 59,047 items, half stars),
written once as ``--files`` Parquet files into a cache folder outside the repository
(``--cache``, default ``~/.cache/mfscratch/synthetic``) and read from there by the workers
(``mfscratch.distributed.read_ratings``, 20% held out per file). Each cluster trains k = 64
per-rating SGD (``DsgdTrainer``, its default groups); the local run is the learner on the parallel
backend (Numba threads = ``--threads``) handed the 2-worker cluster's split, block layout, weights
and seeds (``DsgdTrainer.reference_learner``), so its weights stay the 2-worker run's bit for bit. After a warm-up epoch
each, the three alternate one epoch at a time (``fit(1, lr)``) for ``--rounds`` rounds (fewer when
another would take the run past ``--budget`` seconds); the table
gives the median and best epoch (training and validation, as each reports its epoch), the ratings
per second of the median, and the bytes sent per epoch: measured (Dask's
``transfer_outgoing_bytes_total`` on every worker) and predicted (each item group crosses ``W``
workers an epoch, and the validation pass sends every worker the other workers' item rows:
``W + (W - 1)`` item tables of ``n_items * (k + 1) * 4`` bytes, none for one worker).
One JSON line per variant follows the table (``--json PATH`` writes them to a file too), then the
load average at the start and the end and the whole run's wall time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path

import numpy as np

from mfscratch.synthetic import ML_25M_SHAPE, synthetic_ratings

#: Seconds kept for gathering the weights, closing the clusters and printing after the last round.
TEARDOWN_S = 20.0


def default_cache() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "mfscratch" / "synthetic"


def parquet_parts(cache: Path, n: int, n_users: int, n_items: int, n_files: int) -> Path:
    """The synthetic set as ``n_files`` Parquet files, written once (a finished folder is renamed into place)."""
    import pandas as pd

    folder = cache / f"ratings-{n}-{n_users}-{n_items}-{n_files}files-seed0"
    if folder.is_dir():
        return folder
    tmp = folder.with_name(folder.name + f".part{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    users, items, ratings = synthetic_ratings(n, n_users, n_items, rating_range=(0.5, 5.0), rating_step=0.5, seed=0)
    for f, rows in enumerate(np.array_split(np.arange(n), n_files)):
        part = pd.DataFrame({"user": users[rows], "item": items[rows], "rating": ratings[rows]})
        part.to_parquet(tmp / f"part-{f:03d}.parquet", index=False)
    os.replace(tmp, folder)
    return folder


def start_cluster(n_workers: int):
    from distributed import Client

    from mfscratch.distributed.cli import local_cluster

    cluster = local_cluster(n_workers, memory_limit=0, silence_logs=logging.ERROR)
    return cluster, Client(cluster)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ratings", type=int, default=ML_25M_SHAPE[0])
    p.add_argument("--users", type=int, default=ML_25M_SHAPE[1])
    p.add_argument("--items", type=int, default=ML_25M_SHAPE[2])
    p.add_argument("--factors", type=int, default=64)
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--budget", type=float, default=240.0, help="seconds for the whole run: fewer rounds once a round would pass it"
    )
    p.add_argument("--prepare", action="store_true", help="write the data set into --cache and stop")
    p.add_argument("--quick", action="store_true", help="200,000 ratings, 20,000 users, 5,000 items, 1 round")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--wd", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=2, help="Numba threads of the local parallel run")
    p.add_argument("--cache", type=Path, default=default_cache())
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    logging.getLogger("distributed").setLevel(logging.ERROR)  # the table, not the cluster's chatter
    if args.quick:
        args.ratings, args.users, args.items, args.rounds = 200_000, 20_000, 5_000, 1
    import numba

    from mfscratch.distributed import DsgdTrainer, read_ratings

    numba.set_num_threads(args.threads)
    load = [os.getloadavg()]
    started = time.perf_counter()
    t0 = time.perf_counter()
    folder = parquet_parts(args.cache, args.ratings, args.users, args.items, args.files)
    print(f"data: {folder} ({time.perf_counter() - t0:.1f} s)", flush=True)
    if args.prepare:
        return
    setups, variants = {}, {}
    for n_workers in (1, 2):
        t0 = time.perf_counter()
        cluster, client = start_cluster(n_workers)
        ratings = read_ratings(client, folder, valid_pct=0.2, seed=0)
        t1 = time.perf_counter()
        trainer = DsgdTrainer(ratings, n_factors=args.factors, y_range=(0.0, 5.5), bs=1, seed=0, log=None)
        t2 = time.perf_counter()
        trainer.fit(1, args.lr, wd=args.wd)  # warm-up: the workers load the compiled kernels
        setups[n_workers] = dict(read_s=t1 - t0, layout_s=t2 - t1, warmup_epoch_s=trainer.epoch_seconds[-1])
        variants[f"dask-{n_workers}"] = (cluster, client, trainer)
        print(f"dask-{n_workers}: {trainer!r}, {ratings!r}, {setups[n_workers]}", flush=True)
    learn = variants["dask-2"][2].reference_learner()  # from here on in step with dask-2
    learn.warmup()
    seconds: dict = {name: [] for name in ("parallel", *variants)}
    round_seconds = 0.0
    for done in range(args.rounds):
        round_start = time.perf_counter()
        if done and (round_start - started) + round_seconds + TEARDOWN_S > args.budget:
            print(f"stopping after {done} round(s): another would pass --budget {args.budget:g} s", flush=True)
            break
        learn.fit(1, args.lr, wd=args.wd)
        seconds["parallel"].append(learn.recorder.epoch_seconds[-1])
        for name, (_, _, trainer) in variants.items():
            trainer.fit(1, args.lr, wd=args.wd)
            seconds[name].append(trainer.epoch_seconds[-1])
        round_seconds = time.perf_counter() - round_start
    load.append(os.getloadavg())
    k, n_items, n_train = args.factors, variants["dask-2"][2].ratings.n_items, learn.dls.n_train
    table_bytes = n_items * (k + 1) * 4
    same = np.array_equal(learn.model.params, variants["dask-2"][2].model().params)
    rows = []
    for name, times in seconds.items():
        trainer = variants[name][2] if name in variants else None
        w = len(trainer.workers) if trainer else 0
        rows.append(
            dict(
                variant=name,
                groups=trainer.n_groups if trainer else learn.backend.per_rating_n_groups,
                epochs=times,
                median_s=statistics.median(times),
                best_s=min(times),
                ratings_per_s=n_train / statistics.median(times),
                bytes_per_epoch=int(np.median(trainer.bytes_sent[-len(times) :])) if trainer else 0,
                predicted_bytes=(2 * w - 1) * table_bytes if w > 1 else 0,
                valid_mse=(trainer.values[-1][1] if trainer else learn.recorder.values[-1][1]),
                **(setups[w] if trainer else {}),
            )
        )
    print(f"\nload average before / after: {load[0]} / {load[1]}; n_train {n_train}; k {k}")
    print(f"parallel and dask-2 weights equal after {len(seconds['parallel'])} epochs in step: {same}\n")
    print("| variant | groups | median s/epoch | best s/epoch | ratings/s | MB sent/epoch (measured / predicted) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        mb = f"{r['bytes_per_epoch'] / 1e6:.1f} / {r['predicted_bytes'] / 1e6:.1f}"
        print(
            f"| {r['variant']} | {r['groups']} | {r['median_s']:.3f} | {r['best_s']:.3f} | "
            f"{r['ratings_per_s'] / 1e6:.1f} M | {mb} |"
        )
    for name in ("distributed", "distributed.nanny", "distributed.scheduler", "distributed.core"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # the clusters' closing lines
    for cluster, client, _ in variants.values():
        client.close()
        cluster.close()
    load.append(os.getloadavg())
    wall = time.perf_counter() - started
    lines = [json.dumps(dict(r, load=load, weights_equal=same, wall_s=wall)) for r in rows]
    print("\n".join(lines))
    if args.json:
        args.json.write_text("\n".join(lines) + "\n")
    print(
        f"load average at start / after the epochs / at the end: {load[0]} / {load[1]} / {load[2]}; wall {wall:.0f} s"
    )


if __name__ == "__main__":
    main()
