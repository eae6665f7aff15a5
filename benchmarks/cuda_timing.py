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


def run(args) -> dict:
    from numba import cuda

    from mfscratch.backends import CudaBackend
    from mfscratch.learner import collab_learner

    t0 = time.perf_counter()
    dls = _loaders(args)
    data_seconds = time.perf_counter() - t0
    learn = collab_learner(
        dls, n_factors=args.factors, y_range=(0.0, 5.5), seed=42, sparse=args.mode == "sparse", backend="cuda", log=None
    )
    learn.backend = CudaBackend(args.loop, args.group, args.max_blocks)
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
    cuda.to_device(order)
    cuda.synchronize()
    upload = time.perf_counter() - t0

    device = cuda.get_current_device()
    name = getattr(device, "name", "CUDA simulator")
    name = name.decode() if isinstance(name, bytes) else str(name)
    rec = learn.recorder
    return {
        "card": name,
        "data": args.data,
        "mode": args.mode,
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
        "kernel_seconds_estimate": round(direct - upload, 5),
        "ratings_per_second": round(dls.n_train / max(direct - upload, 1e-9)),
        "us_per_step": round(1e6 * (direct - upload) / max(steps, 1), 2),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", choices=("ml-100k", "synthetic"), default="synthetic")
    p.add_argument("--ratings", type=int, default=100_000)
    p.add_argument("--users", type=int, default=944)
    p.add_argument("--items", type=int, default=1665)
    p.add_argument("--factors", type=int, default=50)
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--mode", choices=("exact", "sparse"), default="exact")
    p.add_argument("--loop", choices=("device", "host"), default="device")
    p.add_argument("--group", type=int, help="threads per rating in the forward phase (default: the backend's)")
    p.add_argument("--max-blocks", type=int, help="cap on the cooperative grid (default: as many as fit)")
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--json-lines", metavar="PATH", help="append the result as one JSON line to PATH")
    args = p.parse_args(argv)
    result = run(args)
    line = json.dumps(result)
    print(line)
    if args.json_lines:
        with open(args.json_lines, "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
