"""Per-rating epochs with per-step arrays against the learning rate made and the losses summarised in the kernel.

    python -m benchmarks.per_step_values [--quick] [--ratings 5000000] [--rounds 3] [--json PATH]

A per-rating ``fit_one_cycle`` (sparse, SGD, bs 1, k = 64, lr 0.02, wd 0.01: the ML-25M recipe) on a
synthetic table of ML-25M's users and items (162,541 x 59,047: 58 MB of tables, so the blocked
layout of the ML-25M path) and ``--ratings`` ratings, on the ``cpu`` backend and the ``parallel`` one
(all Numba threads), each fit in two ways, alternated round by round:

* ``arrays``: the learner hands the per-rating runner each epoch's slice of the one-cycle schedule
  (a float64 a step, made when the epoch starts: set-up) and the runner keeps one loss a step;
* ``in-kernel``: the kernel makes each step's learning rate (``records.StepLrs``) and keeps the
  recorder's sample, the last losses and the block sums (``records.LossSummary``): no per-step array.

Both give the same weights bit for bit (checked here). Reported per way: the median and best
training seconds of an epoch (``recorder.train_seconds``), the set-up per epoch (``setup_seconds``
over the epochs: the schedule's slices in the ``arrays`` way) and their sum, with the load average at
the start and the end; a JSON summary and a Markdown table. In a tree without the in-kernel path (the
runner has no ``steps_in_kernel``) only ``arrays`` runs, so the same command gives a baseline.
A full run takes about 1-2 minutes on 2 cores; ``--quick`` runs a small problem once (checks that
the script works; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import numpy as np

ML25M_USERS, ML25M_ITEMS = 162_541, 59_047


def fit(dls, backend: str, in_kernel: bool, epochs: int) -> dict:
    """One per-rating fit; its epochs' training and set-up seconds and its final weights."""
    from mfscratch import SGD, collab_learner
    from mfscratch.backends import cpu

    runner = cpu._PerRatingRunner
    had = runner.__dict__.get("steps_in_kernel")
    if had is not None:
        runner.steps_in_kernel = in_kernel  # type: ignore[attr-defined]
    try:
        learn = collab_learner(dls, n_factors=64, y_range=(0.5, 5.5), opt_func=SGD, sparse=True, seed=1,
                               backend=backend, log=None)  # fmt: skip
        learn.warmup()
        learn.fit_one_cycle(epochs, 0.02, wd=0.01)
    finally:
        if had is not None:
            runner.steps_in_kernel = had  # type: ignore[attr-defined]
    rec = learn.recorder
    return {
        "train_s": list(rec.train_seconds),
        "setup_s": rec.setup_seconds,
        "train_loss": rec.values[-1][0],
        "params": learn.model.params.copy(),
    }


def run(n_ratings: int, rounds: int, epochs: int, log=print) -> dict:
    from mfscratch.backends import cpu
    from mfscratch.synthetic import synthetic_dataloaders

    load_start = [round(v, 2) for v in os.getloadavg()]
    log(f"load average at start: {load_start}")
    users, items = (ML25M_USERS, ML25M_ITEMS) if n_ratings >= 1_000_000 else (3000, 2000)
    dls = synthetic_dataloaders(n_ratings, users, items, bs=1, seed=0)
    ways = ["arrays", "in-kernel"] if "steps_in_kernel" in cpu._PerRatingRunner.__dict__ else ["arrays"]
    results: dict[tuple[str, str], dict] = {}
    for rnd in range(rounds):
        for backend in ("cpu", "parallel"):
            weights = {}
            for way in ways:
                r = fit(dls, backend, way == "in-kernel", epochs)
                weights[way] = r.pop("params")
                acc = results.setdefault((backend, way), {"train_s": [], "setup_s": [], "train_loss": None})
                acc["train_s"] += r["train_s"]
                acc["setup_s"].append(r["setup_s"] / epochs)
                acc["train_loss"] = r["train_loss"]
                log(f"  round {rnd} {backend} {way}: epochs {[round(t, 3) for t in r['train_s']]} s, "
                    f"set-up {r['setup_s']:.3f} s")  # fmt: skip
            if len(ways) == 2:
                assert np.array_equal(weights["arrays"], weights["in-kernel"]), "the two ways differ"
    summary = []
    for (backend, way), acc in results.items():
        med, setup = statistics.median(acc["train_s"]), statistics.median(acc["setup_s"])
        summary.append({"backend": backend, "way": way, "epochs_timed": len(acc["train_s"]), "median_train_s": med,
                        "best_train_s": min(acc["train_s"]), "setup_s_per_epoch": setup,
                        "train_plus_setup_s": med + setup, "train_loss": acc["train_loss"]})  # fmt: skip
    load_end = [round(v, 2) for v in os.getloadavg()]
    log(f"load average at end: {load_end}")
    return {"n_train": dls.n_train, "summary": summary, "load_start": load_start, "load_end": load_end}


def markdown(result: dict) -> str:
    lines = [
        f"n_train = {result['n_train']:,}; load {result['load_start']} -> {result['load_end']}",
        "",
        "| backend | way | epochs | median train s | best train s | set-up s/epoch | train + set-up s | train_loss |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["summary"]:
        lines.append(f"| {r['backend']} | {r['way']} | {r['epochs_timed']} | {r['median_train_s']:.4f} | "
                     f"{r['best_train_s']:.4f} | {r['setup_s_per_epoch']:.4f} | {r['train_plus_setup_s']:.4f} | "
                     f"{r['train_loss']:.6f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ratings", type=int, default=5_000_000, help="synthetic ratings (default 5,000,000)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="a small problem, one round")
    p.add_argument("--json", type=Path, help="also write the JSON summary here")
    args = p.parse_args(argv)
    if args.quick:
        result = run(60_000, 1, 2)
    else:
        result = run(args.ratings, args.rounds, args.epochs)
    print(json.dumps(result))
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
