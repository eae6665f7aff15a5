"""Per-rating SGD: LIBMF (FPSGD) against mfscratch's learner, same training rows, alternated, three rounds.

    MFSCRATCH_DATA=../shared/data python -m benchmarks.libmf_vs_mfscratch [--quick] [--shapes ml100k,ml25m]

LIBMF is built from its upstream source (``--libmf-src``, default ``../shared/peers/libmf`` next to the
repository) into a temporary folder with the C++ compiler found on the PATH (without one the script
prints one ``skip:`` line and times mfscratch alone). LIBMF's code is compiled, never copied into the
repository. A small driver of this script's own (:data:`DRIVER_CPP`, written into the temporary
folder, linked to LIBMF's ``mf.o``) reads the training rows as binary ``(u, v, r)`` records and times
``mf_train`` with one iteration and with ``1 + E`` iterations: their difference over ``E`` is LIBMF's
epoch time alone (its reading, copying, gridding, shuffling and scaling cancel out).

mfscratch trains per-rating SGD (sparse mode, SGD, bs 1, the model with its biases and sigmoid) with
``fit_one_cycle``; its epoch time is the recorder's training seconds (order included, validation
excluded). One thread runs the ``cpu`` backend, more run ``parallel`` with ``threads=N``.

Shapes: ``ml100k`` (MovieLens 100k, seed split 42, 80,000 training ratings, k = 50; needs
MFSCRATCH_DATA) and ``ml25m`` (synthetic data of ML-25M's shape, 80% of 25M ratings for training,
k = 64; generated once and cached as ``.npy`` files in ``--cache``, outside the repository).
LIBMF gets its best ``-n`` (block grid) per shape and thread count from a short trial first (ML-100k: 4, 8,
12, 20); at the ML-25M shape it runs ``-n 21``, its best there in earlier measurements (a trial would
cost half a minute of the four).

Each round times LIBMF, then mfscratch, for each thread count; three rounds. Prints one JSON line per
(system, shape, threads, round), then a JSON summary and a Markdown table of median and best
ratings/s, and the load average at the start and the end. ``--quick`` runs small shapes (a smoke test).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
#: The ``ml25m`` shape's number of ratings; None: ML-25M's (``--ml25m-ratings`` sets it, for checks).
ML25M_RATINGS: int | None = None

#: The driver: times ``mf_train`` with 1 and with 1 + E iterations, ``repeats`` times; one line each.
DRIVER_CPP = r"""
// Times LIBMF's epochs alone: mf_train with 1 iteration and with 1 + E iterations, on rows read
// from a binary file of (int32 u, int32 v, float32 r) records. Prints "t1 tE" (seconds) per repeat.
#include "mf.h"
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>
using namespace mf;

static double seconds_of(mf_problem const &prob, mf_parameter param, int iters)
{
    param.nr_iters = iters;
    auto t0 = std::chrono::steady_clock::now();
    mf_model *model = mf_train(&prob, param);
    auto t1 = std::chrono::steady_clock::now();
    if(model == nullptr) { std::fprintf(stderr, "mf_train failed\n"); std::exit(1); }
    mf_destroy_model(&model);
    return std::chrono::duration<double>(t1 - t0).count();
}

int main(int argc, char **argv)
{
    if(argc != 9)
    {
        std::fprintf(stderr, "usage: %s ROWS.bin M N K THREADS BINS EPOCHS REPEATS\n", argv[0]);
        return 2;
    }
    FILE *f = std::fopen(argv[1], "rb");
    if(f == nullptr) { std::fprintf(stderr, "cannot open %s\n", argv[1]); return 2; }
    std::fseek(f, 0, SEEK_END);
    long long nnz = std::ftell(f) / (long long)sizeof(mf_node);
    std::fseek(f, 0, SEEK_SET);
    std::vector<mf_node> rows(nnz);
    if((long long)std::fread(rows.data(), sizeof(mf_node), nnz, f) != nnz)
    {
        std::fprintf(stderr, "short read\n");
        return 2;
    }
    std::fclose(f);
    mf_problem prob;
    prob.m = std::atoi(argv[2]);
    prob.n = std::atoi(argv[3]);
    prob.nnz = nnz;
    prob.R = rows.data();
    mf_parameter param = mf_get_default_param();
    param.k = std::atoi(argv[4]);
    param.nr_threads = std::atoi(argv[5]);
    param.nr_bins = std::atoi(argv[6]);
    param.eta = 0.05f;
    param.lambda_p2 = param.lambda_q2 = 0.05f;
    param.quiet = true;
    param.copy_data = true;
    int epochs = std::atoi(argv[7]), repeats = std::atoi(argv[8]);
    for(int r = 0; r < repeats; ++r)
    {
        double t1 = seconds_of(prob, param, 1);
        double te = seconds_of(prob, param, 1 + epochs);
        std::printf("%.9f %.9f\n", t1, te);
        std::fflush(stdout);
    }
    return 0;
}
"""


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def build_libmf(src: Path, dest: Path, log=print) -> Path | None:
    """Compile LIBMF's ``mf.cpp`` and :data:`DRIVER_CPP` in ``dest``; the driver's path, or None (says why)."""
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cxx is None:
        log("skip: no C++ compiler (g++ or c++) on the PATH: LIBMF is not timed")
        return None
    if not (src / "mf.cpp").is_file():
        log(f"skip: no LIBMF source at {src} (mf.cpp missing; give --libmf-src): LIBMF is not timed")
        return None
    for name in ("mf.cpp", "mf.h"):
        shutil.copy(src / name, dest / name)
    (dest / "driver.cpp").write_text(DRIVER_CPP)
    flags = ["-O3", "-pthread", "-std=c++11", "-march=native", "-mavx", "-fopenmp", "-DUSEAVX", "-DUSEOMP"]
    try:
        subprocess.run([cxx, *flags, "-c", "-o", "mf.o", "mf.cpp"], cwd=dest, check=True, capture_output=True)
        subprocess.run(
            [cxx, *flags, "-o", "libmf_epochs", "driver.cpp", "mf.o"], cwd=dest, check=True, capture_output=True
        )
    except subprocess.CalledProcessError as e:
        log(f"skip: building LIBMF failed ({e.stderr.decode(errors='replace').strip()[-300:]}): LIBMF is not timed")
        return None
    return dest / "libmf_epochs"


def write_rows(path: Path, users, items, ratings) -> None:
    """The training rows as LIBMF's ``mf_node`` records: int32 u, int32 v, float32 r."""
    rec = np.empty(len(users), dtype=[("u", "<i4"), ("v", "<i4"), ("r", "<f4")])
    rec["u"], rec["v"], rec["r"] = users, items, ratings
    rec.tofile(path)


def libmf_epoch_seconds(driver, rows: Path, m, n, k, threads, bins, epochs, repeats) -> list[float]:
    """LIBMF's seconds an epoch, one value per repeat: ``(t(1 + epochs) - t(1)) / epochs``."""
    cmd = [str(driver), str(rows), *(str(v) for v in (m, n, k, threads, bins, epochs, repeats))]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    pairs = [tuple(float(v) for v in line.split()) for line in out.splitlines() if line.strip()]
    return [max(te - t1, 1e-9) / epochs for t1, te in pairs]


def best_bins(driver, rows, m, n, k, threads, candidates, log=print) -> int:
    """LIBMF's fastest ``-n`` among ``candidates`` (one 2-epoch trial each)."""
    candidates = [b for b in candidates if b >= threads]
    if len(candidates) == 1:
        return candidates[0]
    trials = {b: libmf_epoch_seconds(driver, rows, m, n, k, threads, b, 2, 1)[0] for b in candidates}
    best = min(trials, key=trials.__getitem__)
    log(f"  LIBMF -n trial, {threads} thread(s): " + ", ".join(f"{b}: {s * 1e3:.2f} ms" for b, s in trials.items()))
    return best


def mfscratch_epoch_seconds(
    dls, k, threads, epochs, y_range, seed=42, scheduler: str | None = None
) -> tuple[list[float], float, str]:
    """The recorder's training seconds of each epoch of a per-rating ``fit_one_cycle``, the last valid MSE
    (``scheduler``: the parallel backend's ``per_rating_scheduler``; None: its default)."""
    from mfscratch import SGD, collab_learner
    from mfscratch.bench import PER_RATING_RECIPE

    run_dls = copy.copy(dls)
    run_dls.bs = 1
    backend = "cpu" if threads == 1 else "parallel"
    learn = collab_learner(
        run_dls,
        n_factors=k,
        y_range=y_range,
        seed=seed,
        sparse=True,
        opt_func=SGD,
        backend=backend,
        threads=None if threads == 1 else threads,
        per_rating_scheduler=None if threads == 1 else scheduler,
        log=None,
    )
    learn.warmup()
    learn.fit_one_cycle(epochs, PER_RATING_RECIPE["lr"], wd=PER_RATING_RECIPE["wd"])
    return list(learn.recorder.train_seconds), float(learn.recorder.values[-1][1]), backend


def load_shape(name: str, quick: bool, cache: Path, log=print):
    """``(dls, k, y_range, mfscratch epochs, LIBMF epochs, -n candidates)`` of one shape, or None (says why)."""
    from mfscratch.synthetic import ML_25M_SHAPE, synthetic_dataloaders

    if name == "ml100k":
        if quick:
            return synthetic_dataloaders(20_000, 300, 400, seed=0), 16, (0.0, 5.5), 3, 20, (4, 8, 20)
        from mfscratch.cli.train import load_movielens_frame
        from mfscratch.data import CollabDataLoaders

        try:
            df, un, iname, rn = load_movielens_frame("ml-100k")
        except Exception as e:  # noqa: BLE001 - the data may be missing; the other shape still runs
            log(f"skip: ml100k: {e} (set MFSCRATCH_DATA to the folder holding ml-100k)")
            return None
        dls = CollabDataLoaders.from_df(df, user_name=un, item_name=iname, rating_name=rn, seed=42, bs=1)
        return dls, 50, (0.0, 5.5), 12, 20, (4, 8, 12, 20)
    if name == "ml25m":
        if quick:
            return synthetic_dataloaders(200_000, 1_300, 470, seed=0), 16, (0.5, 5.5), 2, 10, (5, 10)
        n25, u25, i25 = ML_25M_SHAPE
        n = ML25M_RATINGS or n25  # a smaller count (--ml25m-ratings) checks this path at a small size
        nu, ni = round(u25 * n / n25), round(i25 * n / n25)
        cache.mkdir(parents=True, exist_ok=True)
        files = [cache / f"ml25m_shape_{n}_{col}.npy" for col in ("users", "items", "ratings")]
        if not all(f.is_file() for f in files):
            from mfscratch.synthetic import synthetic_ratings

            log(f"  generating the ML-25M shape into {cache} (once)")
            arrays = synthetic_ratings(n, nu, ni, rating_range=(0.5, 5.0), rating_step=0.5, seed=0)
            for f, a in zip(files, arrays):
                tmp = f.with_suffix(".tmp.npy")
                np.save(tmp, a)
                os.replace(tmp, f)
        users, items, ratings = (np.load(f) for f in files)
        from mfscratch.data import CollabDataLoaders

        n_valid = int(0.2 * n)
        classes = CollabDataLoaders.from_codes(users[:1], items[:1], ratings[:1], nu, ni, 0.0).classes
        dls = CollabDataLoaders(
            users, items, ratings, slice(n_valid, n), slice(0, n_valid), classes, "user", "item", "rating", 1, 0
        )
        return dls, 64, (0.5, 5.5), 5, 3, (21,)  # -n 21: LIBMF's best at this shape (0.96-1.02 s on 1 thread)
    raise SystemExit(f"error: unknown shape {name!r}: use ml100k or ml25m")


def summarise(rows) -> list[dict]:
    """Median and best ratings/s per (shape, threads, system) over every timed epoch of every round."""
    out = []
    keys = dict.fromkeys((r["shape"], r["threads"], r["system"]) for r in rows)
    for shape, threads, system in keys:
        sel = [r for r in rows if (r["shape"], r["threads"], r["system"]) == (shape, threads, system)]
        secs = [s for r in sel for s in r["epoch_seconds"]]
        n = sel[0]["n_train"]
        out.append(
            {
                "shape": shape,
                "threads": threads,
                "system": system,
                "epochs_timed": len(secs),
                "median_seconds": statistics.median(secs),
                "best_seconds": min(secs),
                "median_ratings_per_s": n / statistics.median(secs),
                "best_ratings_per_s": n / min(secs),
                **({"bins": sel[0]["bins"]} if "bins" in sel[0] else {}),
            }
        )
    for row in out:
        peer = [p for p in out if (p["shape"], p["threads"], p["system"]) == (row["shape"], row["threads"], "libmf")]
        if row["system"] == "mfscratch" and peer:
            row["median_vs_libmf"] = row["median_ratings_per_s"] / peer[0]["median_ratings_per_s"]
    return out


def markdown(summary) -> str:
    lines = [
        "| data | threads | system | epochs timed | median ratings/s | best ratings/s | median vs LIBMF |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in summary:
        ratio = f"{r['median_vs_libmf']:.2f}x" if "median_vs_libmf" in r else "-"
        lines.append(
            f"| {r['shape']} | {r['threads']} | {r['system']}{' -n ' + str(r['bins']) if 'bins' in r else ''} "
            f"| {r['epochs_timed']} | {r['median_ratings_per_s'] / 1e6:.1f}M | {r['best_ratings_per_s'] / 1e6:.1f}M "
            f"| {ratio} |"
        )
    return "\n".join(lines)


def run(shapes, threads_list, rounds, quick, libmf_src: Path, cache: Path, log=print) -> dict:
    """Everything the script prints, as one dict (``rows``, ``summary``, ``load_start``, ``load_end``)."""
    load_start = load_average()
    log(f"load average at start: {load_start}")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="libmf_bench_") as tmp:
        driver = build_libmf(libmf_src, Path(tmp), log)
        for name in shapes:
            loaded = load_shape(name, quick, cache, log)
            if loaded is None:
                continue
            dls, k, y_range, epochs, libmf_epochs, candidates = loaded
            n_train = int(dls.n_train)
            repeats = 3 if n_train < 1_000_000 else 1  # LIBMF samples a round (each an average of E epochs)
            rows_file = Path(tmp) / f"{name}.bin"
            m, n = dls.n_users, dls.n_items
            if driver is not None:
                write_rows(rows_file, dls.train_users, dls.train_items, dls.train_ratings)
                bins = {t: best_bins(driver, rows_file, m, n, k, t, candidates, log) for t in threads_list}
            for rnd in range(rounds):
                for t in threads_list:
                    if driver is not None:
                        secs = libmf_epoch_seconds(driver, rows_file, m, n, k, t, bins[t], libmf_epochs, repeats)
                        row = {"system": "libmf", "bins": bins[t], "epochs_per_sample": libmf_epochs}
                        rows.append({**row, "shape": name, "threads": t, "round": rnd, "n_train": n_train,
                                     "k": k, "epoch_seconds": secs})  # fmt: skip
                        log(json.dumps(rows[-1]))
                    secs, mse, backend = mfscratch_epoch_seconds(dls, k, t, epochs, y_range)
                    rows.append({"system": "mfscratch", "backend": backend, "shape": name, "threads": t,
                                 "round": rnd, "n_train": n_train, "k": k, "epoch_seconds": secs,
                                 "valid_mse": round(mse, 4)})  # fmt: skip
                    log(json.dumps(rows[-1]))
    summary = summarise(rows)
    load_end = load_average()
    return {"rows": rows, "summary": summary, "load_start": load_start, "load_end": load_end}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small synthetic shapes, one round: a smoke test")
    p.add_argument("--shapes", default="ml100k,ml25m", help="comma-separated: ml100k, ml25m (default both)")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--rounds", type=int, help="rounds (default 3; --quick: 1)")
    p.add_argument("--libmf-src", type=Path, default=REPO.parent / "shared" / "peers" / "libmf")
    p.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mfscratch-bench",
        help="where the ML-25M-shaped data is cached (default ~/.cache/mfscratch-bench)",
    )
    p.add_argument(
        "--build-only",
        type=Path,
        metavar="DIR",
        help="only build LIBMF and the driver into DIR and print the driver's path (for mfscratch bench --libmf)",
    )
    p.add_argument("--ml25m-ratings", type=int, help="the ml25m shape with this many ratings (a check of the path)")
    p.add_argument(
        "--json", type=Path, metavar="PATH", help="also write every row and the summary (goals_libmf --from)"
    )
    args = p.parse_args(argv)
    global ML25M_RATINGS
    ML25M_RATINGS = args.ml25m_ratings
    if args.build_only:
        args.build_only.mkdir(parents=True, exist_ok=True)
        driver = build_libmf(args.libmf_src, args.build_only)
        if driver is not None:
            print(driver)
        return {}
    t0 = time.perf_counter()
    result = run(
        [s.strip() for s in args.shapes.split(",") if s.strip()],
        [int(t) for t in args.threads.split(",")],
        args.rounds or (1 if args.quick else 3),
        args.quick,
        args.libmf_src,
        args.cache,
    )
    print(json.dumps({"summary": result["summary"], "load_start": result["load_start"],
                      "load_end": result["load_end"], "seconds": round(time.perf_counter() - t0, 1)}))  # fmt: skip
    if args.json:
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, args.json)
    print()
    print(markdown(result["summary"]))
    print(f"\nload average: start {result['load_start']}, end {result['load_end']}")
    return result


if __name__ == "__main__":
    main()
