"""Sparse-mode training at ML-25M's shape on synthetic data: seconds per epoch and peak memory.

    python benchmarks/scale_ml25m.py --backend parallel --optimizer sgd --epochs 1
    python benchmarks/scale_ml25m.py --backend cpu --optimizer adam --epochs 1 --ratings 5000000
    python benchmarks/scale_ml25m.py --per-rating --blocks 16 --epochs 2

``--per-rating`` times the per-rating SGD kernel (sparse mode, SGD, bs 1) directly, not through the
learner, to measure the bare kernel (the learner's whole path, file to report, is
``benchmarks/ml25m_path.py``). The ratings are sorted in place into their blocks once
(``kernels.cpu.sort_by_block``) and each epoch reads them in sequence, with one learning rate for
every step and no loss array (the kernel's big-data settings); ``--blocks g`` sets the number of user
and item groups (default: ``backends.cpu.per_rating_groups``), whose blocks of each stratum train on
the Numba threads.

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
    p.add_argument("--per-rating", action="store_true", help="time the per-rating SGD kernel directly (see above)")
    p.add_argument("--blocks", type=int, default=None, help="--per-rating: user/item groups g (default: threads)")
    args = p.parse_args()
    if args.threads:
        numba.set_num_threads(args.threads)
    if args.per_rating:
        return per_rating(args)

    t0 = time.perf_counter()
    dls = synthetic_dataloaders(
        args.ratings,
        args.users,
        args.items,
        valid_pct=0.02,
        bs=args.bs,
        seed=0,
        rating_range=(0.5, 5.0),
        rating_step=0.5,
    )
    gen_seconds = time.perf_counter() - t0
    opt = Adam if args.optimizer == "adam" else SGD(mom=args.mom)
    lr = args.lr or (1e-2 if args.optimizer == "adam" else 0.5)
    learn = collab_learner(
        dls,
        n_factors=args.factors,
        y_range=(0.0, 5.5),
        seed=0,
        sparse=True,
        opt_func=opt,
        backend=args.backend,
        log=None,
    )
    learn.warmup()
    learn.fit_one_cycle(args.epochs, lr, wd=args.wd)
    train_s = min(learn.recorder.train_seconds)
    ratings_bytes = sum(a.nbytes for a in (dls.train_users.base, dls.train_items.base, dls.train_ratings.base))
    state_bytes = learn.model.params.nbytes * (3 if args.optimizer == "adam" else 2 if args.mom else 1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "ratings": args.ratings,
                "users": args.users,
                "items": args.items,
                "k": args.factors,
                "bs": args.bs,
                "optimizer": args.optimizer,
                "mom": args.mom if args.optimizer == "sgd" else None,
                "lr": lr,
                "backend": args.backend,
                "threads": numba.get_num_threads(),
                "generate_seconds": round(gen_seconds, 2),
                "seconds_per_epoch": round(train_s, 3),
                "ratings_per_second": round(dls.n_train / train_s),
                "valid_mse": round(learn.recorder.values[-1][1], 4),
                "peak_rss_mb": round(peak / 2**20),
                "ratings_mb": round(ratings_bytes / 2**20),
                "params_and_state_mb": round(state_bytes / 2**20),
                "epoch_seconds": [round(s, 3) for s in learn.recorder.train_seconds],
            }
        )
    )


def _training_peak_reset() -> bool:
    """Reset the kernel's peak-RSS mark (Linux ``clear_refs``), so that VmHWM then measures training alone."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _vm_hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def per_rating(args) -> None:
    import numpy as np

    from mfscratch.backends.cpu import per_rating_groups
    from mfscratch.kernels import cpu
    from mfscratch.kernels.records import BlockLayout, EpochOut, Groups, Ratings
    from mfscratch.model import EmbeddingDotBias

    t0 = time.perf_counter()
    dls = synthetic_dataloaders(
        args.ratings, args.users, args.items, valid_pct=0.02, bs=1, seed=0, rating_range=(0.5, 5.0), rating_step=0.5
    )
    gen_seconds = time.perf_counter() - t0
    n = dls.n_train
    data = Ratings(dls.train_users, dls.train_items, dls.train_ratings)
    model = EmbeddingDotBias(args.factors, dls.n_users, dls.n_items, y_range=(0.0, 5.5), seed=0)
    threads = numba.get_num_threads()
    groups = args.blocks or per_rating_groups(model.params.nbytes, threads)
    kernel = cpu.train_epoch_per_rating if threads == 1 else cpu.train_epoch_per_rating_parallel
    lr = np.array([args.lr or 0.02])  # one lr for every step, and no per-step losses: see the docstring
    no_losses = EpochOut(np.empty(0), np.zeros(1, dtype=np.int64))
    tiny = BlockLayout(np.arange(64, dtype=np.int64), np.array([0, 64]), 1)
    head = Ratings(*(a[:64] for a in data))
    kernel(model.params, model.shape, head, tiny, lr, args.wd, model.y_range_record, no_losses)  # compile first
    model = EmbeddingDotBias(args.factors, dls.n_users, dls.n_items, y_range=(0.0, 5.5), seed=0)
    peak_reset = _training_peak_reset()
    # Once for the fit: the ratings moved in place into their blocks (no index array, and an
    # epoch reads them in sequence; within a block, the data's order, random for this set).
    t0 = time.perf_counter()
    user_group = cpu.balanced_groups(data.users, model.n_users, groups)
    block_start = cpu.sort_by_block(
        data, Groups(user_group, cpu.balanced_groups(data.items, model.n_items, groups), groups)
    )
    in_place = BlockLayout(np.empty(0, dtype=np.int64), block_start, groups)
    layout_seconds = time.perf_counter() - t0
    seconds = []
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        done = kernel(model.params, model.shape, data, in_place, lr, args.wd, model.y_range_record, no_losses)
        seconds.append(time.perf_counter() - t0)
        assert done == n, "diverged"
    training_peak = _vm_hwm_bytes() if peak_reset else None
    valid = Ratings(dls.valid_users, dls.valid_items, dls.valid_ratings)
    mse = cpu.evaluate_mse(model.kernel_tables(), valid, model.y_range_record)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ratings_bytes = sum(a.nbytes for a in (data.users.base, data.items.base, data.ratings.base))
    mb = 2**20
    print(
        json.dumps(
            {
                "ratings": args.ratings,
                "users": args.users,
                "items": args.items,
                "k": args.factors,
                "per_rating": True,
                "groups": groups,
                "threads": threads,
                "lr": float(lr[0]),
                "wd": args.wd,
                "generate_seconds": round(gen_seconds, 2),
                "layout_seconds": round(layout_seconds, 2),
                "seconds_per_epoch": round(min(seconds), 3),
                "ratings_per_second": round(n / min(seconds)),
                "valid_mse": round(float(mse), 4),
                "peak_rss_mb": round(peak / mb),
                "training_peak_rss_mb": None if training_peak is None else round(training_peak / mb),
                "ratings_mb": round(ratings_bytes / mb),
                "params_mb": round(model.params.nbytes / mb),
                "epoch_seconds": [round(x, 3) for x in seconds],
            }
        )
    )


if __name__ == "__main__":
    main()
