"""Time the ``cuda`` backend's epochs directly, without ``mfscratch bench``: one JSON line per run.

Used by ``benchmarks/gpu_check.sh`` on a machine with an NVIDIA GPU (and runnable under the
simulator on tiny sizes, to check the script itself; simulator times mean nothing). Each run:

1. builds the loaders: the real ML-100k (``--data ml-100k``, read through ``MFSCRATCH_DATA``) or a
   synthetic set of the given shape (``--data synthetic --ratings N --users N --items N``);
2. fits ``collab_learner(..., backend='cuda')`` with one-cycle for ``--epochs`` epochs (the learner's
   own timings: ``train_seconds`` per epoch includes the host permutation and the uploads);
3. times one more epoch through the backend's epoch runner alone (upload of ``order`` included), and
   the upload of ``order`` by itself, so the kernel time can be read off.

Example: ``python benchmarks/cuda_timing.py --data synthetic --ratings 25000095 --users 162541
--items 59047 --mode sparse --bs 65536 --epochs 2``.

``--mode per-rating`` runs per-rating SGD with its documented recipe (plain SGD, bs 1, lr 0.02,
wd 0.08 unless given) once per combination of ``--schedule`` and ``--storage`` (comma lists, e.g.
``--schedule stratified,hogwild --storage fp32,fp16,bf16``) on the same loaders in one process; the
epoch's kernels are also timed alone (``kernel_seconds``: the strata launches after the order is on
the device, synchronised), apart from the host's layout shuffle and upload.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def _loaders(args):
    from mfscratch.data import CollabDataLoaders

    if args.data == "ml-100k":
        from mfscratch.cli.train import load_movielens_frame

        df, user_name, item_name, rating_name = load_movielens_frame("ml-100k")
        return CollabDataLoaders.from_df(
            df, valid_pct=0.2, user_name=user_name, item_name=item_name, rating_name=rating_name, seed=42, bs=args.bs
        )
    rng = np.random.default_rng(0)
    # Uniform codes and ratings: the cost of an epoch depends on the shape, not on the values.
    users = rng.integers(0, args.users, args.ratings, dtype=np.int32)
    items = rng.integers(0, args.items, args.ratings, dtype=np.int32)
    ratings = rng.integers(1, 6, args.ratings).astype(np.float32)
    return CollabDataLoaders.from_codes(
        users, items, ratings, args.users, args.items, valid_pct=0.2, seed=42, bs=args.bs
    )


def run(args, dls, data_seconds: float, schedule: str = "stratified", storage: str = "fp32") -> dict:
    from numba import cuda

    from mfscratch.backends import CudaBackend
    from mfscratch.learner import collab_learner

    per_rating = args.mode == "per-rating"
    learn = collab_learner(
        dls,
        n_factors=args.factors,
        y_range=(0.0, 5.5),
        seed=42,
        sparse=args.mode != "exact",
        opt_func="sgd" if per_rating else "adam",
        backend="cuda",
        log=None,
    )
    learn.backend = CudaBackend(
        args.loop, args.group, args.max_blocks, schedule=schedule, storage=storage, allow_bf16=True
    )
    learn.backend.per_rating_n_groups = args.per_rating_groups
    learn.backend.hogwild_per_worker = args.hogwild_per_worker
    t0 = time.perf_counter()
    learn.warmup()
    compile_seconds = time.perf_counter() - t0
    learn.fit_one_cycle(args.epochs, args.lr, wd=args.wd)
    loop_used = learn.backend.loop  # 'host' if the cooperative launch was refused

    # One more epoch through the backend's runner alone (weights already trained: only the time matters).
    steps = dls.n_train // dls.bs
    order = np.random.default_rng(1).permutation(dls.n_train)
    lrs, moms = np.full(steps, args.lr / 25), np.full(steps, 0.9)
    backend = learn.backend
    backend.bind(learn.model, learn.opt_state, dls)
    runner = backend.runner(learn.opt, learn.mode, dls.bs)
    t0 = time.perf_counter()
    runner.train_epoch(np.random.default_rng(1), lrs, moms, learn.opt_state.step)
    direct = time.perf_counter() - t0
    t0 = time.perf_counter()
    d_order = cuda.to_device(order)
    cuda.synchronize()
    upload = time.perf_counter() - t0
    kernel_seconds = None
    if per_rating:  # the kernels alone, on an order already on the device
        d_lrs = cuda.to_device(lrs)
        cuda.synchronize()
        t0 = time.perf_counter()
        runner.launch(d_order, d_lrs)
        cuda.synchronize()
        kernel_seconds = time.perf_counter() - t0

    device = cuda.get_current_device()
    name = getattr(device, "name", "CUDA simulator")
    name = name.decode() if isinstance(name, bytes) else str(name)
    rec = learn.recorder
    kernel = kernel_seconds if kernel_seconds is not None else direct - upload
    return {
        "card": name,
        "data": args.data,
        "mode": args.mode,
        "schedule": schedule if per_rating else None,
        "storage": storage,
        "per_rating_groups": getattr(runner, "n_groups", None),
        "hogwild_per_worker": getattr(runner, "per_worker", None) if per_rating and schedule == "hogwild" else None,
        "lanes_per_rating": getattr(runner, "lanes", None),
        "loop": loop_used,
        "group": backend.group_size() if loop_used == "device" else None,
        "blocks": backend.blocks,
        "threads_per_block": backend.ck.THREADS,
        "n_train": dls.n_train,
        "n_users": dls.n_users,
        "n_items": dls.n_items,
        "factors": args.factors,
        "bs": dls.bs,
        "steps": steps,
        "epochs": args.epochs,
        "data_seconds": round(data_seconds, 3),
        "compile_seconds": round(compile_seconds, 3),
        "epoch_train_seconds": [round(s, 5) for s in rec.train_seconds],
        "epoch_seconds": [round(s, 5) for s in rec.epoch_seconds],
        "train_loss": [v[0] for v in rec.values],
        "valid_loss": [v[1] for v in rec.values],
        "train_epoch_direct_seconds": round(direct, 5),
        "order_upload_seconds": round(upload, 5),
        "kernel_seconds_estimate": round(kernel, 5),
        "kernel_seconds_measured": kernel_seconds is not None,
        "ratings_per_second": round(dls.n_train / max(kernel, 1e-9)),
        "us_per_step": round(1e6 * kernel / max(steps, 1), 2),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", choices=("ml-100k", "synthetic"), default="synthetic")
    p.add_argument("--ratings", type=int, default=100_000)
    p.add_argument("--users", type=int, default=944)
    p.add_argument("--items", type=int, default=1665)
    p.add_argument("--factors", type=int, default=50)
    p.add_argument("--bs", type=int, help="batch size (default 64; per-rating: 1)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--mode", choices=("exact", "sparse", "per-rating"), default="exact")
    p.add_argument("--schedule", default="stratified", help="per-rating: stratified, hogwild, or both comma-separated")
    p.add_argument("--storage", default="fp32", help="per-rating: fp32, fp16, bf16, or several comma-separated")
    p.add_argument("--per-rating-groups", type=int, help="stratified: user (and item) groups (default: the backend's)")
    p.add_argument("--hogwild-per-worker", type=int, help="hogwild: ratings per thread block (default: the backend's)")
    p.add_argument("--loop", choices=("device", "host"), default="device")
    p.add_argument("--group", type=int, help="threads per rating in the forward phase (default: the backend's)")
    p.add_argument("--max-blocks", type=int, help="cap on the cooperative grid (default: as many as fit)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 5e-3; per-rating: 0.02)")
    p.add_argument("--wd", type=float, help="weight decay (default 0.1; per-rating: 0.08)")
    p.add_argument("--json-lines", metavar="PATH", help="append the result as one JSON line to PATH")
    args = p.parse_args(argv)
    per_rating = args.mode == "per-rating"
    for name, default, per_rating_default in (("bs", 64, 1), ("lr", 5e-3, 0.02), ("wd", 0.1, 0.08)):
        if getattr(args, name) is None:
            setattr(args, name, per_rating_default if per_rating else default)
    t0 = time.perf_counter()
    dls = _loaders(args)
    data_seconds = time.perf_counter() - t0
    combos = [("stratified", "fp32")]
    if per_rating:
        # storage-major: both schedules at fp32 come first, should a time limit cut the run short
        combos = [(a, b) for b in args.storage.split(",") for a in args.schedule.split(",")]
    for schedule, storage in combos:
        line = json.dumps(run(args, dls, data_seconds, schedule, storage))
        print(line, flush=True)
        if args.json_lines:
            with open(args.json_lines, "a") as f:
                f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
