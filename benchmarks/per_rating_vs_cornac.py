"""Per-rating SGD on ML-100k (k = 50): mfscratch's kernel and learner against cornac's biased MF.

    MFSCRATCH_DATA=../shared/data python -m benchmarks.per_rating_vs_cornac [--repeats 30]

Prints one JSON line per row, best epoch of ``--repeats``, on the seed recipe's training rows
(seed split 42, 80,000 ratings):

* ``kernel``: ``cpu.train_epoch_per_rating`` (serial) and its parallel twin on its blocks
  (``backends.cpu.per_rating_groups``), timed alone on a fixed shuffled order: what cornac's number measures.
* ``kernel+order``: the same, plus the epoch's order as the learner gets it: a fresh permutation
  (NumPy's shuffle; serial), or the blocks shuffled in place (parallel): the backend's epoch runner.
* ``learner``: ``fit_one_cycle`` with the documented setting (``mfscratch bench``'s row: the
  recorder's ``train_seconds``).
* cornac 3.x ``MF(k=50, max_iter=25, learning_rate=0.01, lambda_reg=0.02, use_bias=True)``: with
  ``seed=42`` (cornac then uses one thread) and with ``seed=None, num_threads=2`` (Hogwild
  ``prange``); its fit divided by 25 epochs. Skipped when cornac is not installed.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import time

import numpy as np

from mfscratch import SGD, collab_learner
from mfscratch.bench import PER_RATING_RECIPE, cornac_row
from mfscratch.cli.train import load_movielens_frame
from mfscratch.data import CollabDataLoaders
from mfscratch.kernels.records import EpochOut


def _best(fn, repeats: int) -> float:
    fn()  # compile, warm the caches
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    df, user_name, item_name, rating_name = load_movielens_frame("ml-100k")
    dls = CollabDataLoaders.from_df(
        df, user_name=user_name, item_name=item_name, rating_name=rating_name, seed=42, bs=1
    )
    n = dls.n_train

    def emit(what, backend, seconds, **extra):
        print(
            json.dumps(
                {
                    "what": what,
                    "backend": backend,
                    "seconds_per_epoch": round(seconds, 5),
                    "ratings_per_second": round(n / seconds),
                    **extra,
                }
            ),
            flush=True,
        )

    for backend in ("cpu", "parallel"):
        learn = collab_learner(
            dls, n_factors=50, y_range=(0.0, 5.5), seed=42, sparse=True, opt_func=SGD, backend=backend, log=None
        )
        learn.warmup()
        b = learn.backend
        b.bind(learn.model, learn.opt_state, dls)
        runner = b.runner(SGD(wd=0.08), "per-rating", 1)
        threads, groups = b.n_threads(), runner.layout.n_groups
        lrs = np.full(n, 0.01)
        rng = np.random.default_rng(0)
        runner.train_epoch(rng, lrs, lrs, 0)  # one epoch's order (blocks, or a permutation), kept fixed
        fixed = runner.layout._replace(order=runner.order.copy())
        out = EpochOut(np.empty(n), np.zeros(1, dtype=np.int64))
        params = learn.model.params.copy()

        def epoch(runner=runner, b=b, params=params, fixed=fixed, lrs=lrs, out=out):
            runner.kernel(params, b.shape, b.data, fixed, lrs, 0.08, b.y_range, out)

        emit("kernel", backend, _best(epoch, args.repeats), threads=threads, groups=groups)
        # what the learner runs: the epoch's order drawn (blocks shuffled, or a permutation), then the kernel
        best = _best(lambda runner=runner, rng=rng, lrs=lrs: runner.train_epoch(rng, lrs, lrs, 0), args.repeats)
        emit("kernel+order", backend, best, threads=threads, groups=groups)

        run_dls = copy.copy(dls)
        learn = collab_learner(
            run_dls, n_factors=50, y_range=(0.0, 5.5), seed=42, sparse=True, opt_func=SGD, backend=backend, log=None
        )
        learn.warmup()
        learn.fit_one_cycle(PER_RATING_RECIPE["epochs"], PER_RATING_RECIPE["lr"], wd=PER_RATING_RECIPE["wd"])
        emit(
            "learner",
            backend,
            min(learn.recorder.train_seconds),
            threads=threads,
            valid_mse=round(learn.recorder.values[-1][1], 4),
        )

    if importlib.util.find_spec("cornac") is None:
        print(json.dumps({"what": "cornac", "skipped": "cornac is not installed"}))
        return
    one = cornac_row(dls, seed=42, repeats=5)
    emit("fit/25", "cornac", one["seconds_per_epoch"], threads=1, valid_mse=round(one["valid_mse"], 4))
    two = cornac_row(dls, seed=None, repeats=5, num_threads=2)
    emit("fit/25", "cornac", two["seconds_per_epoch"], threads=2, valid_mse=round(two["valid_mse"], 4))


if __name__ == "__main__":
    main()
