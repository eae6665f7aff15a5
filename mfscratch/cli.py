"""The ``mfscratch`` command. It parses, validates, calls the library, and maps errors to exit codes.

Exit codes: 0 success, 2 bad input or settings (one-line ``error: ...`` on stderr; ``--debug``
shows the traceback), 1 anything unexpected.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from .errors import ConfigError, MfscratchError

__all__ = ["main", "build_parser"]

SEED_TITLE = "Silence of the Lambs, The (1991)"


# --- small validators: reject bad settings before any work starts ------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _nonneg_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse that exits with status 2 and a one-line message (its default is also 2)."""

    def error(self, message):  # pragma: no cover - exercised through the CLI tests
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def add_train_args(p: argparse.ArgumentParser) -> None:
    """The recipe's hyper-parameters (defaults: the fastai book's seed recipe)."""
    g = p.add_argument_group("recipe (defaults: the fastai book's seed recipe)")
    g.add_argument("--data", default="ml-100k", help="dataset name (default ml-100k)")
    g.add_argument("--epochs", type=_positive_int, default=5)
    g.add_argument("--lr", type=_positive_float, default=5e-3, help="peak learning rate of the one-cycle schedule")
    g.add_argument("--wd", type=_nonneg_float, default=0.1, help="weight decay (decoupled for Adam)")
    g.add_argument("--factors", type=_positive_int, default=50, help="embedding size k")
    g.add_argument("--bs", type=_positive_int, default=64, help="batch size")
    g.add_argument("--y-range", type=float, nargs=2, metavar=("LO", "HI"), default=(0.0, 5.5))
    g.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    g.add_argument("--valid-pct", type=_fraction, default=0.2)
    g.add_argument("--seed", type=int, default=42, help="fixes split, init and batch order (default 42)")
    g.add_argument("--mode", choices=("exact", "sparse"), default="exact",
                   help="exact: every row updated each step (the fastai recipe); sparse: only the batch's rows")
    g.add_argument("--backend", default="cpu", help="where the kernels run (default cpu)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mfscratch", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train the seed recipe (or any settings) and report",
                           description="Train the biased dot-product model and print fastai's results table.")
    add_train_args(train)
    out = train.add_argument_group("output")
    out.add_argument("--save", metavar="PATH", help="write the weights and vocabularies to a .npz")
    out.add_argument("--json", metavar="PATH", help="write a JSON report of the run")
    out.add_argument("--quiet", action="store_true", help="print nothing but errors")
    train.add_argument("--debug", action="store_true", help="show tracebacks")
    train.set_defaults(func=cmd_train)
    add_bench_parser(sub)
    return parser


def add_bench_parser(sub) -> None:
    """``mfscratch bench``: backends side by side (logic in ``mfscratch.bench``)."""
    bench = sub.add_parser("bench", help="time the backends (and PyTorch) side by side",
                           description="Time every backend and mode, and the PyTorch reference loop, on ML-100k "
                                       "or synthetic data; compile time excluded, best epoch reported.")
    bench.add_argument("--data", default="ml-100k", help="dataset when no synthetic shape is given (default ml-100k)")
    bench.add_argument("--ratings", type=_positive_int, help="synthetic data: number of ratings")
    bench.add_argument("--users", type=_positive_int, help="synthetic data: number of users")
    bench.add_argument("--items", type=_positive_int, help="synthetic data: number of items")
    bench.add_argument("--factors", type=_positive_int, default=50, help="embedding size k (default 50)")
    bench.add_argument("--epochs", type=_positive_int, default=5, help="epochs timed per row (default 5)")
    bench.add_argument("--bs", type=_positive_int, default=64)
    bench.add_argument("--lr", type=_positive_float, default=5e-3)
    bench.add_argument("--wd", type=_nonneg_float, default=0.1)
    bench.add_argument("--seed", type=int, default=42)
    bench.add_argument("--mode", choices=("exact", "sparse"), action="append",
                       help="only this mode (repeatable; default both)")
    bench.add_argument("--backend", action="append",
                       help="only this backend (repeatable; 'torch' is the PyTorch row; default all)")
    bench.add_argument("--torch-threads", type=_positive_int, default=1,
                       help="threads for the PyTorch row (default 1: faster than 2 for batches of 64)")
    bench.add_argument("--json", metavar="PATH", help="write the rows as a JSON list")
    bench.add_argument("--plot", metavar="PATH",
                       help="also time synthetic data of --sizes and plot seconds/epoch against size (matplotlib)")
    bench.add_argument("--sizes", default="100000,400000,1600000",
                       help="comma-separated rating counts for --plot (default 100000,400000,1600000)")
    bench.add_argument("--debug", action="store_true", help="show tracebacks")
    bench.set_defaults(func=cmd_bench)


# --- commands -----------------------------------------------------------------------------------
def _check_y_range(y_range) -> tuple[float, float]:
    lo, hi = y_range
    if not lo < hi:
        raise ConfigError(f"--y-range needs LO < HI, got {lo} {hi}")
    return lo, hi


def load_movielens_frame(name: str):
    """The seed recipe's table: ML-100k ratings merged with the titles from ``u.item``."""
    import pandas as pd

    from .data import untar_data

    if name != "ml-100k":
        raise ConfigError(f"--data {name}: only ml-100k is supported by 'train' in this build")
    path = untar_data(name)
    ratings = pd.read_csv(path / "u.data", delimiter="\t", header=None,
                          names=["user", "movie", "rating", "timestamp"])
    movies = pd.read_csv(path / "u.item", delimiter="|", encoding="latin-1", usecols=(0, 1),
                         names=("movie", "title"), header=None)
    return ratings.merge(movies), "user", "title", "rating"


def cmd_train(args) -> int:
    import numpy as np

    from . import analysis
    from .data import CollabDataLoaders
    from .io import atomic_write, save_model
    from .learner import collab_learner

    y_range = _check_y_range(args.y_range)
    say = (lambda *a: None) if args.quiet else print
    df, user_name, item_name, rating_name = load_movielens_frame(args.data)
    dls = CollabDataLoaders.from_df(df, valid_pct=args.valid_pct, user_name=user_name, item_name=item_name,
                                    rating_name=rating_name, seed=args.seed, bs=args.bs)
    learn = collab_learner(dls, n_factors=args.factors, y_range=y_range, opt_func=args.optimizer,
                           seed=args.seed, sparse=args.mode == "sparse", backend=args.backend,
                           log=None if args.quiet else print)
    t0 = time.perf_counter()
    learn.backend.warmup(learn.model.dtype)
    compile_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    learn.fit_one_cycle(args.epochs, args.lr, wd=args.wd)
    train_seconds = time.perf_counter() - t0

    vocab = dls.classes[item_name]
    say()
    say(learn.model)
    say()
    say("Highest learned item biases:")
    for name, bias in analysis.top_biases(learn.model, vocab, 5):
        say(f"  {bias:+.4f}  {name}")
    if SEED_TITLE in vocab.o2i:
        (near, sim), = analysis.cosine_neighbours(learn.model, vocab, SEED_TITLE, 1)
        say(f"Nearest to {SEED_TITLE!r} by cosine similarity: {near!r} ({sim:.3f})")

    if args.save:
        save_model(args.save, learn.model, dls.classes, user_name, item_name)
        say(f"saved model to {args.save}")
    if args.json:
        report = {
            "epochs": [{"epoch": i, "train_loss": tl, "valid_loss": vl, "seconds": s}
                       for i, ((tl, vl), s) in enumerate(zip(learn.recorder.values, learn.recorder.epoch_seconds))],
            "train_seconds": train_seconds,
            "compile_seconds": compile_seconds,
            "n_users": dls.n_users,
            "n_items": dls.n_items,
            "n_train": dls.n_train,
            "n_valid": dls.n_valid,
            "settings": {"data": args.data, "epochs": args.epochs, "lr": args.lr, "wd": args.wd,
                         "factors": args.factors, "bs": args.bs, "y_range": list(y_range),
                         "optimizer": args.optimizer, "valid_pct": args.valid_pct, "seed": args.seed,
                         "mode": args.mode, "backend": args.backend, "schedule": "one_cycle"},
        }
        text = json.dumps(report, indent=2, default=lambda o: o.item() if isinstance(o, np.generic) else str(o))
        atomic_write(args.json, lambda f: f.write(text.encode() + b"\n"))
        say(f"wrote report to {args.json}")
    return 0


def cmd_bench(args) -> int:
    import platform

    import numba

    from . import bench

    shape = (args.ratings, args.users, args.items)
    if any(v is not None for v in shape) and None in shape:
        raise ConfigError("synthetic data needs all of --ratings, --users and --items")
    try:
        sizes = [int(float(v)) for v in args.sizes.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--sizes must be comma-separated numbers, got {args.sizes!r}") from None
    if args.plot and (not sizes or min(sizes) < 2 * args.bs):
        raise ConfigError(f"--sizes must be rating counts of at least {2 * args.bs}, got {args.sizes!r}")
    if args.ratings is not None:
        from .synthetic import synthetic_dataloaders

        dls = synthetic_dataloaders(args.ratings, args.users, args.items, bs=args.bs, seed=args.seed)
        what, y_range = f"synthetic data ({args.ratings:,} ratings, {args.users:,} users, {args.items:,} items)", (0.5, 5.5)
    else:
        from .data import CollabDataLoaders

        df, user_name, item_name, rating_name = load_movielens_frame(args.data)
        dls = CollabDataLoaders.from_df(df, user_name=user_name, item_name=item_name, rating_name=rating_name,
                                        seed=args.seed, bs=args.bs)
        what, y_range = f"{args.data} (seed split {args.seed})", (0.0, 5.5)
    print(f"{what}, k={args.factors}, bs={args.bs}, {args.epochs} epochs of one-cycle lr {args.lr} wd {args.wd}; "
          f"{numba.get_num_threads()} threads on {platform.machine()} ({numba.config.NUMBA_NUM_THREADS} cores seen)")
    modes = tuple(dict.fromkeys(args.mode)) if args.mode else bench.MODES
    backends = list(dict.fromkeys(args.backend)) if args.backend else None
    rows = bench.bench_rows(dls, backends, modes, args.epochs, args.factors, args.lr, args.wd, y_range, args.seed,
                            torch_threads=args.torch_threads)
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


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MfscratchError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
