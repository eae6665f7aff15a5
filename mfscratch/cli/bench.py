"""``mfscratch bench``: the backends side by side (the timing itself lives in ``mfscratch.bench``)."""

from __future__ import annotations

from ..errors import ConfigError
from .args import add_debug_arg, nonneg_float, positive_float, positive_int
from .train import load_movielens_frame


def add_bench_parser(sub) -> None:
    """``mfscratch bench``: backends side by side (logic in ``mfscratch.bench``)."""
    bench = sub.add_parser(
        "bench",
        help="time the backends (and PyTorch) side by side",
        description="Time every backend and mode, and the PyTorch reference loop, on ML-100k "
        "or synthetic data; compile time excluded, best epoch reported.",
    )
    bench.add_argument("--data", default="ml-100k", help="dataset when no synthetic shape is given (default ml-100k)")
    bench.add_argument("--ratings", type=positive_int, help="synthetic data: number of ratings")
    bench.add_argument("--users", type=positive_int, help="synthetic data: number of users")
    bench.add_argument("--items", type=positive_int, help="synthetic data: number of items")
    bench.add_argument("--factors", type=positive_int, default=50, help="embedding size k (default 50)")
    bench.add_argument("--epochs", type=positive_int, default=5, help="epochs timed per row (default 5)")
    bench.add_argument("--bs", type=positive_int, default=64)
    bench.add_argument("--lr", type=positive_float, default=5e-3)
    bench.add_argument("--wd", type=nonneg_float, default=0.1)
    bench.add_argument("--seed", type=int, default=42)
    bench.add_argument(
        "--mode",
        choices=("exact", "sparse", "per-rating", "sparse-sgd1"),
        action="append",
        help="only this mode (repeatable; default all three; per-rating: sparse mode, plain SGD, "
        "bs 1, lr 0.02, wd 0.08, 12 epochs, whatever --bs/--lr/--wd/--epochs say; sparse-sgd1: its "
        "old name, deprecated)",
    )
    bench.add_argument(
        "--backend",
        action="append",
        help="only this backend (repeatable; 'torch' is the PyTorch row, 'cornac' cornac's biased "
        "MF next to per-rating; default all)",
    )
    bench.add_argument(
        "--torch-threads",
        type=positive_int,
        default=1,
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
        default="100000,400000,1600000",
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
    try:
        sizes = [int(float(v)) for v in args.sizes.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--sizes must be comma-separated numbers, got {args.sizes!r}") from None
    if args.plot and (not sizes or min(sizes) < 2 * args.bs):
        raise ConfigError(f"--sizes must be rating counts of at least {2 * args.bs}, got {args.sizes!r}")
    backends = list(dict.fromkeys(args.backend)) if args.backend else None
    with warnings.catch_warnings():
        warnings.simplefilter("always", DeprecationWarning)  # an old mode name says so on the command line
        _, modes = bench.check_names(backends, args.mode or bench.MODES)  # before any data is read
    if args.ratings is not None:
        from ..synthetic import synthetic_dataloaders

        dls = synthetic_dataloaders(args.ratings, args.users, args.items, bs=args.bs, seed=args.seed)
        what, y_range = (
            f"synthetic data ({args.ratings:,} ratings, {args.users:,} users, {args.items:,} items)",
            (0.5, 5.5),
        )
    else:
        from ..data import CollabDataLoaders

        df, user_name, item_name, rating_name = load_movielens_frame(args.data)
        dls = CollabDataLoaders.from_df(
            df, user_name=user_name, item_name=item_name, rating_name=rating_name, seed=args.seed, bs=args.bs
        )
        what, y_range = f"{args.data} (seed split {args.seed})", (0.0, 5.5)
    print(
        f"{what}, k={args.factors}, bs={args.bs}, {args.epochs} epochs of one-cycle lr {args.lr} wd {args.wd}; "
        f"{numba.get_num_threads()} threads on {platform.machine()} ({numba.config.NUMBA_NUM_THREADS} cores seen)"
    )
    rows = bench.bench_rows(
        dls,
        backends,
        modes,
        args.epochs,
        args.factors,
        args.lr,
        args.wd,
        y_range,
        args.seed,
        torch_threads=args.torch_threads,
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
