"""The accuracy cost of storing per-rating SGD's rows as fp16 or bf16, on real ML-100k, on the CPU.

Runs the documented per-rating recipe (``mfscratch train --mode per-rating``: plain SGD, bs 1, lr 0.02,
wd 0.08, 12 epochs, one-cycle, the seed recipe's split and seed) three times through the CLI, each with
the ``cpu`` backend's per-rating kernel replaced by ``kernels/cpu/half.py``'s (rows stored through
fp32 = no rounding, fp16, bf16 rounding), and prints the valid MSE of each as JSON and a Markdown
table, with the load average at start and end. The bar for offering a half storage on the GPU is a
final valid MSE within 0.002 of fp32 (docs/cuda.md). Accuracy only: the timings here mean nothing.

Run from the repository root: ``MFSCRATCH_DATA=<folder holding ml-100k/> python benchmarks/half_storage_ml100k.py``
(about 15 s on 2 cores a seed). ``--seed N`` (repeatable; default 42, the recipe's) runs the three
storages for each seed (the seed fixes the initial weights and the order; the split stays the
recipe's). ``--quick``: 2 epochs, to check that the script works.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

BAR = 0.002


def storage_backend(code: int, groups: int | None = None):
    """A ``cpu`` backend class whose per-rating epochs store rows as storage ``code`` (``kernels.cpu.half``),
    over ``groups`` user (and item) groups (None: the backend's choice, one group for ML-100k)."""
    from mfscratch.backends import CpuBackend
    from mfscratch.kernels.cpu.half import train_epoch_per_rating_half

    def epoch(params, shape, data, layout, lrs, wd, y_range, out):
        return train_epoch_per_rating_half(params, shape, data, layout, lrs, wd, y_range, out, code)

    return type(
        f"CpuBackendStorage{code}",
        (CpuBackend,),
        {"_per_rating_epoch": staticmethod(epoch), "per_rating_n_groups": groups},
    )


def run(storage: str, epochs: int | None, seed: int, groups: int | None = None) -> dict:
    from mfscratch import backends
    from mfscratch.cli import main
    from mfscratch.kernels.cpu.half import STORAGE_CODES

    saved = backends.BACKENDS["cpu"]
    backends.BACKENDS["cpu"] = storage_backend(STORAGE_CODES[storage], groups)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "report.json")
            argv = ["train", "--mode", "per-rating", "--quiet", "--json", path, "--seed", str(seed)]
            if epochs:
                argv += ["--epochs", str(epochs)]
            t0 = time.perf_counter()
            rc = main(argv)
            seconds = time.perf_counter() - t0
            if rc != 0:
                raise SystemExit(f"mfscratch train failed for {storage} (exit status {rc})")
            with open(path) as f:
                report = json.load(f)
    finally:
        backends.BACKENDS["cpu"] = saved
    valid = [e["valid_loss"] for e in report["epochs"]]
    return {
        "seed": seed,
        "groups": groups or 1,
        "storage": storage,
        "valid_mse": valid[-1],
        "best_valid_mse": min(valid),
        "valid_by_epoch": valid,
        "seconds": round(seconds, 2),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 epochs: check the script, not the numbers")
    p.add_argument("--seed", type=int, action="append", help="seed of the fit (repeatable; default 42)")
    p.add_argument(
        "--groups",
        type=int,
        action="append",
        help="per-rating SGD's user (and item) groups, the block layout the GPU's stratified schedule trains "
        "(repeatable; default 1: the learner's permutation)",
    )
    args = p.parse_args()
    load0 = os.getloadavg()
    rows = []
    for seed in args.seed or [42]:
        for groups in args.groups or [None]:
            runs = [run(s, 2 if args.quick else None, seed, groups) for s in ("fp32", "fp16", "bf16")]
            for r in runs:
                r["diff_vs_fp32"] = r["valid_mse"] - runs[0]["valid_mse"]
                r["within_bar"] = abs(r["diff_vs_fp32"]) <= BAR
            rows += runs
    load1 = os.getloadavg()
    print(
        json.dumps(
            {
                "recipe": "per-rating (mfscratch train --mode per-rating)",
                "quick": args.quick,
                "bar": BAR,
                "rows": rows,
                "loadavg_start": load0,
                "loadavg_end": load1,
            },
            indent=1,
        )
    )
    print()
    print("| seed | groups | storage | final valid MSE | best valid MSE | vs fp32 | within 0.002 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['seed']} | {r['groups']} | {r['storage']} | {r['valid_mse']:.5f} | {r['best_valid_mse']:.5f} "
            f"| {r['diff_vs_fp32']:+.5f} | {'yes' if r['within_bar'] else 'no'} |"
        )
    print(f"\nload average: start {load0[0]:.2f}, end {load1[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
