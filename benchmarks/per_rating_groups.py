"""Per-rating SGD on the parallel backend: how many groups per thread, quiet and under load.

    MFSCRATCH_DATA=../shared/data python -m benchmarks.per_rating_groups [--quick] [--per-thread 1,2,4]

On ML-100k (k = 50, the seed split) the default layout on 2 threads is 2 user groups x 2 item groups
(4 blocks): when the busy process takes a thread's core, the dynamic scheduler has little else to hand
the other thread. This script times the learner's epochs (``recorder.train_seconds``, per-rating
``fit_one_cycle``, the harness's recipe) of the parallel backend with ``per_rating_groups_per_thread``
= each value of ``--per-thread``, and of the serial ``cpu`` backend, quiet and with one busy process
pinned to core 0 (``taskset -c 0 python -c "while 1: pass"``), the settings alternated round by round.
Prints one line per fit, then a JSON summary and a Markdown table of median and best epoch seconds,
with the load average at the start and the end. A full run takes well under a minute on 2 cores;
``--quick`` runs a small synthetic problem (checks that the script works; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

from benchmarks import libmf_vs_mfscratch as harness
from benchmarks.goals_libmf import busy_process


def epoch_seconds(dls, k, y_range, epochs, threads: int, per_thread: int) -> tuple[list[float], float, int]:
    """Training seconds of each epoch of a per-rating fit, its last valid MSE and its number of groups."""
    from mfscratch import SGD, collab_learner
    from mfscratch.backends.cpu import per_rating_groups
    from mfscratch.bench import PER_RATING_RECIPE

    run_dls = copy.copy(dls)
    run_dls.bs = 1
    backend = "cpu" if threads == 1 else "parallel"
    learn = collab_learner(run_dls, n_factors=k, y_range=y_range, seed=42, sparse=True, opt_func=SGD,
                           backend=backend, threads=None if threads == 1 else threads, log=None)  # fmt: skip
    learn.backend.per_rating_groups_per_thread = per_thread
    learn.warmup()
    learn.fit_one_cycle(epochs, PER_RATING_RECIPE["lr"], wd=PER_RATING_RECIPE["wd"])
    groups = per_rating_groups(learn.model.params.nbytes, threads, per_thread)
    return list(learn.recorder.train_seconds), float(learn.recorder.values[-1][1]), groups


def run(per_thread_values: list[int], rounds: int, quick: bool, log=print) -> dict:
    load_start = harness.load_average()
    log(f"load average at start: {load_start}")
    dls, k, y_range, epochs, _, _ = harness.load_shape("ml100k", quick, Path("/nonexistent"), log)
    settings = [(1, 1)] + [(2, g) for g in per_thread_values]  # (threads, groups per thread)
    times: dict[tuple[str, int, int], list[float]] = {}
    info: dict[tuple[str, int, int], tuple[float, int]] = {}
    for condition in ("quiet", "loaded"):
        busy = busy_process() if condition == "loaded" else None
        try:
            if busy is not None:
                time.sleep(0.5)
            for rnd in range(rounds):
                for threads, g in settings:
                    secs, mse, groups = epoch_seconds(dls, k, y_range, epochs, threads, g)
                    times.setdefault((condition, threads, g), []).extend(secs)
                    info[(condition, threads, g)] = (mse, groups)
                    log(f"  {condition} round {rnd} threads {threads} per-thread {g} ({groups} groups): "
                        f"median {statistics.median(secs) * 1e3:.2f} ms, valid MSE {mse:.5f}")  # fmt: skip
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
    n = dls.n_train
    summary = []
    for (condition, threads, g), secs in times.items():
        mse, groups = info[(condition, threads, g)]
        med = statistics.median(secs)
        summary.append({"condition": condition, "threads": threads, "per_thread": g, "groups": groups,
                        "epochs_timed": len(secs), "median_s": med, "best_s": min(secs),
                        "median_ratings_per_s": n / med, "valid_mse": mse})  # fmt: skip
    load_end = harness.load_average()
    log(f"load average at end: {load_end}")
    return {"summary": summary, "load_start": load_start, "load_end": load_end, "n_train": n}


def markdown(result: dict) -> str:
    lines = [
        "| condition | threads | groups per thread | groups | epochs | median ms | best ms | median ratings/s "
        "| valid MSE |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["summary"]:
        lines.append(f"| {r['condition']} | {r['threads']} | {r['per_thread'] if r['threads'] > 1 else '-'} | "
                     f"{r['groups']} | {r['epochs_timed']} | {r['median_s'] * 1e3:.2f} | {r['best_s'] * 1e3:.2f} | "
                     f"{r['median_ratings_per_s'] / 1e6:.1f}M | {r['valid_mse']:.5f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-thread", default="1,2,4", help="groups per thread to try (default 1,2,4)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="a small synthetic problem, one round")
    p.add_argument("--json", type=Path, help="also write the JSON summary here")
    args = p.parse_args(argv)
    result = run([int(v) for v in args.per_thread.split(",")], 1 if args.quick else args.rounds, args.quick)
    print(json.dumps(result))
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
