"""``mfscratch bench``: the backends side by side (the timing itself lives in ``mfscratch.bench``)."""

from __future__ import annotations

import sys

from ..errors import ConfigError
from .args import add_debug_arg, nonneg_float, positive_float, positive_int, seed
from .train import load_movielens_frame


def add_bench_parser(sub) -> None:
    """``mfscratch bench``: backends side by side (logic in ``mfscratch.bench``)."""
    bench = sub.add_parser(
        "bench",
        help="time the backends (and PyTorch) side by side",
        description="Time every backend and mode, and the PyTorch reference loop, on ML-100k "
        "or synthetic data; compile time excluded; the median and the best epoch reported, and how many "
        "epochs were timed.",
    )
    bench.add_argument("--data", help="a MovieLens set by name, when no synthetic shape is given (default ml-100k)")
    bench.add_argument("--ratings", type=positive_int, help="synthetic data: number of ratings")
    bench.add_argument("--users", type=positive_int, help="synthetic data: number of users")
    bench.add_argument("--items", type=positive_int, help="synthetic data: number of items")
    bench.add_argument("--factors", type=positive_int, default=50, help="embedding size k (default 50)")
    bench.add_argument("--epochs", type=positive_int, help="epochs timed per row (default 5)")
    bench.add_argument("--bs", type=positive_int, help="batch size (default 64)")
    bench.add_argument("--lr", type=positive_float, help="peak learning rate of the one-cycle schedule (default 5e-3)")
    bench.add_argument("--wd", type=nonneg_float, help="weight decay (default 0.1)")
    bench.add_argument("--seed", type=seed, default=42, help="fixes the split, the initial weights and the batch order")
    bench.add_argument(
        "--mode",
        choices=("exact", "sparse", "per-rating", "sparse-sgd1"),
        action="append",
        help="only this mode (repeatable; default all three; per-rating: sparse mode, plain SGD, bs 1, with its "
        "own recipe lr 0.02, wd 0.08, 12 epochs: --bs/--lr/--wd/--epochs apply to the other modes; sparse-sgd1: "
        "its old name, deprecated)",
    )
    bench.add_argument(
        "--backend",
        action="append",
        help="only this backend (repeatable): cpu, parallel, cuda, torch (the PyTorch reference loop, "
        "exact mode), cornac (cornac's biased MF, next to per-rating) or libmf (LIBMF, next to per-rating; "
        "needs --libmf); default: all that can run here",
    )
    bench.add_argument(
        "--libmf",
        metavar="PATH",
        help="add a libmf row next to per-rating: PATH is a LIBMF build folder (with mf-train) or an "
        "epoch-timing driver (benchmarks/libmf_vs_mfscratch.py --build-only DIR builds one); never searched for",
    )
    bench.add_argument("--libmf-threads", type=positive_int, help="threads for the libmf row (default 1)")
    bench.add_argument(
        "--torch-threads",
        type=positive_int,
        help="threads for the PyTorch row (default 1: faster than 2 for batches of 64)",
    )
    bench.add_argument("--json", metavar="PATH", help="write the rows as a JSON list")
    bench.add_argument(
        "--plot",
        metavar="PATH",
        help="also time synthetic data of --sizes and plot seconds/epoch against size (matplotlib)",
    )
    bench.add_argument(
        "--sizes",
        help="comma-separated rating counts for --plot (default 100000,400000,1600000)",
    )
    add_debug_arg(bench)
    bench.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    import platform
    import warnings

    import numba

    from .. import bench

    shape = (args.ratings, args.users, args.items)
    if any(v is not None for v in shape) and None in shape:
        raise ConfigError("synthetic data needs all of --ratings, --users and --items")
    if args.data is not None and args.ratings is not None:
        raise ConfigError("give either --data NAME or a synthetic shape (--ratings, --users, --items), not both")
    if args.sizes is not None and not args.plot:
        raise ConfigError("--sizes sets the data sizes of the --plot sweep; add --plot PATH (or leave out --sizes)")
    try:
        sizes = [int(float(v)) for v in (args.sizes or "100000,400000,1600000").split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--sizes must be comma-separated numbers, got {args.sizes!r}") from None
    from ..data import DATASETS, data_dir
    from ..outputs import Output, check_outputs, dataset_inputs

    data = args.data or ("ml-100k" if args.ratings is None else None)
    inputs = dataset_inputs(data_dir() / DATASETS[data].folder) if data in DATASETS else []
    for note in check_outputs([Output("--json", args.json), Output("--plot", args.plot)], inputs):
        print(f"note: {note}", file=sys.stderr)
    backends = list(dict.fromkeys(args.backend)) if args.backend else None
    with warnings.catch_warnings():
        warnings.simplefilter("always", DeprecationWarning)  # an old mode name says so on the command line
        names, modes = bench.check_names(backends, args.mode or bench.MODES)  # before any data is read
    recipe = {"epochs": args.epochs, "bs": args.bs, "lr": args.lr, "wd": args.wd}
    given = [f"--{k}" for k, v in recipe.items() if v is not None]
    if modes == ("per-rating",) and given:
        raise ConfigError(
            f"{', '.join(given)} do not apply to per-rating, which runs its own recipe (bs 1, lr 0.02, wd 0.08, "
            "12 epochs); leave them out or add another --mode"
        )
    epochs, bs = args.epochs or 5, args.bs or 64
    lr, wd = args.lr or 5e-3, 0.1 if args.wd is None else args.wd
    if args.plot and (not sizes or min(sizes) < 2 * bs):
        raise ConfigError(f"--sizes must be rating counts of at least {2 * bs}, got {args.sizes!r}")
    if args.libmf_threads is not None and args.libmf is None:
        raise ConfigError("--libmf-threads sets the libmf row's threads; add --libmf PATH (or leave it out)")
    if args.libmf is not None and "libmf" not in names:
        raise ConfigError("--libmf adds the libmf row, which this run leaves out; add --backend libmf")
    if "libmf" in names and args.libmf is not None and "per-rating" not in modes:
        raise ConfigError("the libmf row sits next to the per-rating mode; add --mode per-rating")
    if backends is not None and "libmf" in names and args.libmf is None:
        raise ConfigError("--backend libmf needs --libmf PATH (a LIBMF build folder or an epoch-timing driver)")
    if args.torch_threads is not None and "torch" not in names:
        raise ConfigError("--torch-threads sets the PyTorch row's threads; this run has no torch row")
    if args.ratings is not None:
        from ..synthetic import synthetic_dataloaders

        dls = synthetic_dataloaders(args.ratings, args.users, args.items, bs=bs, seed=args.seed)
        what, y_range = (
            f"synthetic data ({args.ratings:,} ratings, {args.users:,} users, {args.items:,} items)",
            (0.5, 5.5),
        )
    else:
        from ..data import CollabDataLoaders

        df, user_name, item_name, rating_name = load_movielens_frame(args.data or "ml-100k")
        dls = CollabDataLoaders.from_df(
            df, user_name=user_name, item_name=item_name, rating_name=rating_name, seed=args.seed, bs=bs
        )
        what, y_range = f"{args.data or 'ml-100k'} (seed split {args.seed})", (0.0, 5.5)
    print(
        f"{what}, k={args.factors}, bs={bs}, {epochs} epoch{'s' if epochs != 1 else ''} of one-cycle lr {lr} wd {wd}; "
        f"{numba.get_num_threads()} threads on {platform.machine()} ({numba.config.NUMBA_NUM_THREADS} cores seen)"  # type: ignore[attr-defined]
    )
    rows = bench.bench_rows(
        dls,
        backends,
        modes,
        epochs,
        args.factors,
        lr,
        wd,
        y_range,
        args.seed,
        torch_threads=args.torch_threads or 1,
        libmf=args.libmf,
        libmf_threads=args.libmf_threads or 1,
    )
    print()
    print(bench.format_table(rows))
    if args.json:
        bench.write_json(args.json, rows)
        print(f"wrote {args.json}")
    if args.plot:
        sweep = bench.size_sweep(sizes, args.factors, 1, backends, modes, args.seed)
        bench.plot_sweep(sweep, args.plot)
        print(f"wrote {args.plot}")
    return 0
