"""Sparse-mode training at ML-25M's shape on synthetic data: seconds per epoch and peak memory.

    python benchmarks/scale_ml25m.py --backend parallel --optimizer sgd --epochs 1
    python benchmarks/scale_ml25m.py --backend cpu --optimizer adam --epochs 1 --ratings 5000000

Generates MovieLens-like ratings (``mfscratch.synthetic``: 25,000,095 ratings, 162,541 users,
59,047 items by default, 2% held out), trains ``--epochs`` epochs of one-cycle in sparse mode
(compile excluded), and prints one JSON line: seconds per epoch, ratings per second, valid MSE,
and the process's peak resident memory next to the size of the ratings and of the parameters.
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import numba

from mfscratch import SGD, Adam, collab_learner
from mfscratch.synthetic import ML_25M_SHAPE, synthetic_dataloaders


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ratings", type=int, default=ML_25M_SHAPE[0])
    p.add_argument("--users", type=int, default=ML_25M_SHAPE[1])
    p.add_argument("--items", type=int, default=ML_25M_SHAPE[2])
    p.add_argument("--factors", type=int, default=64)
    p.add_argument("--bs", type=int, default=256)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="sgd")
    p.add_argument("--mom", type=float, default=0.9, help="SGD momentum (0: plain SGD, one table touch less)")
    p.add_argument("--lr", type=float, default=None, help="peak lr (default 1e-2 adam, 0.5 sgd)")
    p.add_argument("--wd", type=float, default=0.01)
    p.add_argument("--backend", default="parallel")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        numba.set_num_threads(args.threads)

    t0 = time.perf_counter()
    dls = synthetic_dataloaders(args.ratings, args.users, args.items, valid_pct=0.02, bs=args.bs, seed=0,
                                rating_range=(0.5, 5.0), rating_step=0.5)
    gen_seconds = time.perf_counter() - t0
    opt = Adam if args.optimizer == "adam" else SGD(mom=args.mom)
    lr = args.lr or (1e-2 if args.optimizer == "adam" else 0.5)
    learn = collab_learner(dls, n_factors=args.factors, y_range=(0.0, 5.5), seed=0, sparse=True, opt_func=opt,
                           backend=args.backend, log=None)
    learn.backend.warmup(learn.model.dtype)
    learn.fit_one_cycle(args.epochs, lr, wd=args.wd)
    train_s = min(learn.recorder.train_seconds)
    ratings_bytes = sum(a.nbytes for a in (dls.train_users.base, dls.train_items.base, dls.train_ratings.base))
    state_bytes = learn.model.params.nbytes * (3 if args.optimizer == "adam" else 2 if args.mom else 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "ratings": args.ratings, "users": args.users, "items": args.items, "k": args.factors, "bs": args.bs,
        "optimizer": args.optimizer, "mom": args.mom if args.optimizer == "sgd" else None, "lr": lr, "backend": args.backend, "threads": numba.get_num_threads(),
        "generate_seconds": round(gen_seconds, 2), "seconds_per_epoch": round(train_s, 3),
        "ratings_per_second": round(dls.n_train / train_s), "valid_mse": round(learn.recorder.values[-1][1], 4),
        "peak_rss_mb": round(peak / 2**20), "ratings_mb": round(ratings_bytes / 2**20),
        "params_and_state_mb": round(state_bytes / 2**20),
        "epoch_seconds": [round(s, 3) for s in learn.recorder.train_seconds],
    }))


if __name__ == "__main__":
    main()
