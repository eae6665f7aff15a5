"""Per-rating SGD at ML-25M's shape on a Dask LocalCluster (1 and 2 single-thread workers) against the
parallel backend on the same cores, with the bytes the workers send each other.

    python benchmarks/dask_ml25m.py                          # 25,000,095 ratings, 3 rounds
    python benchmarks/dask_ml25m.py --ratings 2000000 --rounds 2

The ratings are ``mfscratch.synthetic``'s ML-25M-like set (162,541 users, 59,047 items, half stars),
written once as ``--files`` Parquet files into a cache folder outside the repository
(``--cache``, default ``~/.cache/mfscratch/synthetic``) and read from there by the workers
(``mfscratch.distributed.read_ratings``, 20% held out per file). Each cluster trains k = 64
per-rating SGD (``DsgdTrainer``, its default groups); the local run is the learner on the parallel
backend (Numba threads = ``--threads``) given the 2-worker cluster's training and validation rows
and initial weights, so its layout, and its weights, are the 2-worker run's. After a warm-up epoch
each, the three alternate one epoch at a time (``fit(1, lr)``) for ``--rounds`` rounds; the table
gives the median and best epoch (training and validation, as each reports its epoch), the ratings
per second of the median, and the bytes sent per epoch: measured (Dask's
``transfer_outgoing_bytes_total`` on every worker) and predicted (each item group crosses ``W``
workers an epoch, and the validation pass sends every worker the other workers' item rows:
``W + (W - 1)`` item tables of ``n_items * (k + 1) * 4`` bytes, none for one worker).
One JSON line per variant follows the table (``--json PATH`` writes them to a file too).
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

from mfscratch import SGD, CollabDataLoaders
from mfscratch.learner import Learner
from mfscratch.model import EmbeddingDotBias
from mfscratch.synthetic import ML_25M_SHAPE, synthetic_ratings


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
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        memory_limit=0,
        silence_logs=logging.WARNING,
    )
    return cluster, Client(cluster)


def local_learner(trainer, k: int, params: np.ndarray) -> Learner:
    """The parallel backend on the trainer's rows (training rows in its block order) and initial weights."""
    r = trainer.ratings
    train, valid = trainer.training_rows(), trainer.valid_rows()
    users, items, ratings = (np.concatenate([a, b]) for a, b in zip(train, valid))
    n = train[0].shape[0]
    rows = (users, items, ratings, np.arange(n), np.arange(n, users.shape[0]))
    classes = {r.user_name: range(r.n_users), r.item_name: range(r.n_items)}  # sizes only: no names needed
    dls = CollabDataLoaders(*rows, classes, r.user_name, r.item_name, r.rating_name, bs=1)
    model = EmbeddingDotBias(k, r.n_users, r.n_items, y_range=trainer.y_range, params=params)
    return Learner(dls, model, opt_func=SGD, seed=0, sparse=True, backend="parallel", log=None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ratings", type=int, default=ML_25M_SHAPE[0])
    p.add_argument("--users", type=int, default=ML_25M_SHAPE[1])
    p.add_argument("--items", type=int, default=ML_25M_SHAPE[2])
    p.add_argument("--factors", type=int, default=64)
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--wd", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=2, help="Numba threads of the local parallel run")
    p.add_argument("--cache", type=Path, default=default_cache())
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    import numba

    from mfscratch.distributed import DsgdTrainer, read_ratings

    numba.set_num_threads(args.threads)
    load = [os.getloadavg()]
    t0 = time.perf_counter()
    folder = parquet_parts(args.cache, args.ratings, args.users, args.items, args.files)
    print(f"data: {folder} ({time.perf_counter() - t0:.1f} s)", flush=True)
    setups, variants = {}, {}
    for n_workers in (1, 2):
        t0 = time.perf_counter()
        cluster, client = start_cluster(n_workers)
        ratings = read_ratings(client, folder, valid_pct=0.2, seed=0)
        t1 = time.perf_counter()
        trainer = DsgdTrainer(ratings, n_factors=args.factors, y_range=(0.0, 5.5), bs=1, seed=0, log=None)
        t2 = time.perf_counter()
        start = trainer.model().params  # the initial weights, for the local run
        trainer.fit(1, args.lr, wd=args.wd)  # warm-up: the workers load the compiled kernels
        setups[n_workers] = dict(read_s=t1 - t0, layout_s=t2 - t1, warmup_epoch_s=trainer.epoch_seconds[-1])
        variants[f"dask-{n_workers}"] = (cluster, client, trainer)
        print(f"dask-{n_workers}: {trainer!r}, {ratings!r}, {setups[n_workers]}", flush=True)
    learn = local_learner(variants["dask-2"][2], args.factors, start)
    learn.fit(1, args.lr, wd=args.wd)  # warm-up
    seconds: dict = {name: [] for name in ("parallel", *variants)}
    for _ in range(args.rounds):
        learn.fit(1, args.lr, wd=args.wd)
        seconds["parallel"].append(learn.recorder.epoch_seconds[-1])
        for name, (_, _, trainer) in variants.items():
            trainer.fit(1, args.lr, wd=args.wd)
            seconds[name].append(trainer.epoch_seconds[-1])
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
                groups=trainer.n_groups if trainer else int(learn.backend._blocks[0]),
                epochs=times,
                median_s=statistics.median(times),
                best_s=min(times),
                ratings_per_s=n_train / statistics.median(times),
                bytes_per_epoch=int(np.median(trainer.bytes_sent[-args.rounds :])) if trainer else 0,
                predicted_bytes=(2 * w - 1) * table_bytes if w > 1 else 0,
                valid_mse=(trainer.values[-1][1] if trainer else learn.recorder.values[-1][1]),
                **(setups[w] if trainer else {}),
            )
        )
    print(f"\nload average before / after: {load[0]} / {load[1]}; n_train {n_train}; k {k}")
    print(f"parallel and dask-2 weights equal after {args.rounds + 1} epochs: {same}\n")
    print("| variant | groups | median s/epoch | best s/epoch | ratings/s | MB sent/epoch (measured / predicted) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        mb = f"{r['bytes_per_epoch'] / 1e6:.1f} / {r['predicted_bytes'] / 1e6:.1f}"
        print(
            f"| {r['variant']} | {r['groups']} | {r['median_s']:.3f} | {r['best_s']:.3f} | "
            f"{r['ratings_per_s'] / 1e6:.1f} M | {mb} |"
        )
    lines = [json.dumps(dict(r, load=load, weights_equal=same)) for r in rows]
    print("\n".join(lines))
    if args.json:
        args.json.write_text("\n".join(lines) + "\n")
    for cluster, client, _ in variants.values():
        client.close()
        cluster.close()


if __name__ == "__main__":
    main()
