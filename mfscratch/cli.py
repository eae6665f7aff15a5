"""The ``mfscratch`` command. It parses, validates, calls the library, and maps errors to exit codes.

Exit codes: 0 success, 2 bad input or settings (one-line ``error: ...`` on stderr; ``--debug``
shows the traceback), 1 anything unexpected.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

from .errors import ConfigError, MfscratchError

__all__ = ["main", "build_parser"]

SEED_TITLE = "Silence of the Lambs, The (1991)"


# --- small validators: reject bad settings before any work starts ------------------------------
def _number(text: str, convert, ok, what: str):
    """Parse ``text`` with ``convert`` and check it with ``ok``; NaN and inf fail every check below."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
    return value


def _positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def _positive_float(text: str) -> float:
    return _number(text, float, lambda v: 0 < v < float("inf"), "a positive number")


def _nonneg_float(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v < float("inf"), "a number >= 0")


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
    g.add_argument("--data", default=None, metavar="NAME",
                   help="a MovieLens set by name: ml-100k (default), ml-1m, ml-10m, ml-20m, ml-25m, ml-latest-small")
    g.add_argument("--epochs", type=_positive_int, default=5)
    g.add_argument("--lr", type=_positive_float, default=5e-3, help="peak learning rate of the one-cycle schedule")
    g.add_argument("--wd", type=_nonneg_float, default=0.1, help="weight decay (decoupled for Adam)")
    g.add_argument("--factors", type=_positive_int, default=50, help="embedding size k")
    g.add_argument("--bs", type=_positive_int, default=64, help="batch size")
    g.add_argument("--y-range", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                   help="output range of the sigmoid (default: from the ratings, (0, 1.1 * max): (0, 5.5) for 1-5 stars)")
    g.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    g.add_argument("--valid-pct", type=_fraction, default=0.2)
    g.add_argument("--seed", type=int, default=42, help="fixes split, init and batch order (default 42)")
    g.add_argument("--mode", choices=("exact", "sparse"), default="exact",
                   help="exact: every row updated each step (the fastai recipe); sparse: only the batch's rows. "
                        "Sparse with --optimizer sgd --bs 1 is per-rating SGD (a fused kernel, the fastest "
                        "setting); documented: --mode sparse --optimizer sgd --bs 1 --lr 0.02 --wd 0.08 "
                        "--epochs 12 (valid MSE 0.813 on ML-100k, seed 42)")
    g.add_argument("--backend", default="cpu",
                   help="where the kernels run: cpu, or cuda (an NVIDIA GPU; needs the cuda extra) (default cpu)")


def add_output_args(p: argparse.ArgumentParser, json_help: str):
    """The ``output`` group every training command has: ``--json`` and ``--quiet``."""
    out = p.add_argument_group("output")
    out.add_argument("--json", metavar="PATH", help=json_help)
    out.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return out


def add_debug_arg(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: without it the subcommand's default (False) would override 'mfscratch --debug CMD'.
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mfscratch", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train the seed recipe (or any settings) and report",
                           description="Train the biased dot-product model and print fastai's results table.")
    add_train_args(train)
    out = add_output_args(train, "write a JSON report of the run")
    out.add_argument("--save", metavar="PATH", help="write the weights and vocabularies to a .npz")
    add_data_args(train)
    add_usage_output_args(out)
    out.add_argument("--checkpoint", metavar="DIR", help="save the full training state to DIR after each epoch")
    out.add_argument("--resume", action="store_true",
                     help="continue from the checkpoint in --checkpoint DIR (same settings; starts afresh if none)")
    add_debug_arg(train)
    train.set_defaults(func=cmd_train)
    add_usage_commands(sub)
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
    bench.add_argument("--mode", choices=("exact", "sparse", "sparse-sgd1"), action="append",
                       help="only this mode (repeatable; default all three; sparse-sgd1: sparse per-rating SGD, "
                            "bs 1, lr 0.02, wd 0.08, 12 epochs, whatever --bs/--lr/--wd/--epochs say)")
    bench.add_argument("--backend", action="append",
                       help="only this backend (repeatable; 'torch' is the PyTorch row, 'cornac' cornac's biased "
                            "MF next to sparse-sgd1; default all)")
    bench.add_argument("--torch-threads", type=_positive_int, default=1,
                       help="threads for the PyTorch row (default 1: faster than 2 for batches of 64)")
    bench.add_argument("--json", metavar="PATH", help="write the rows as a JSON list")
    bench.add_argument("--plot", metavar="PATH",
                       help="also time synthetic data of --sizes and plot seconds/epoch against size (matplotlib)")
    bench.add_argument("--sizes", default="100000,400000,1600000",
                       help="comma-separated rating counts for --plot (default 100000,400000,1600000)")
    add_debug_arg(bench)
    bench.set_defaults(func=cmd_bench)


# --- commands -----------------------------------------------------------------------------------
def _check_y_range(y_range) -> tuple[float, float] | None:
    if y_range is None:
        return None  # derived from the data once it is read
    lo, hi = y_range
    if not lo < hi or abs(lo) == float("inf") or abs(hi) == float("inf"):
        raise ConfigError(f"--y-range needs finite LO < HI, got {lo} {hi}")
    return lo, hi


def _check_train_settings(args) -> None:
    """What argparse's types cannot see, checked before any data is read."""
    from .backends import BACKENDS, get_backend

    if args.backend not in BACKENDS:
        raise ConfigError(f"unknown --backend {args.backend!r}: use one of {', '.join(BACKENDS)}")
    get_backend(args.backend)  # a backend this machine cannot run (cuda without a GPU) says so now
    if args.resume and not args.checkpoint:
        raise ConfigError("--resume needs --checkpoint DIR (the folder the interrupted run saved to)")
    from .validate import check_output_path

    for flag, path, folder in (("--save", args.save, False), ("--json", args.json, False),
                               ("--checkpoint", args.checkpoint, True)):
        if path:
            check_output_path(flag, path, folder)


def load_movielens_frame(name: str):
    """A MovieLens set as ``(df, user_name, item_name, rating_name)`` (ML-100k: the seed recipe's title merge)."""
    from .readers import read_movielens

    t = read_movielens(name)
    return t.df, t.user, t.item, t.rating


def _checkpointing(args, learn, say) -> int:
    """Restore ``--checkpoint DIR`` when ``--resume`` is given, and save there after each epoch."""
    if not args.checkpoint:
        return 0
    from . import checkpoint

    start_epoch = 0
    if args.resume:
        expect = {"method": "fit_one_cycle", "n_epoch": args.epochs, "lr_max": args.lr, "wd": args.wd}
        start_epoch = checkpoint.restore(learn, args.checkpoint, expect)
        if start_epoch is None:
            print(f"note: no checkpoint in {args.checkpoint} yet; starting at epoch 0", file=sys.stderr)
            start_epoch = 0
        else:
            say(f"resuming from {args.checkpoint} at epoch {start_epoch} of {args.epochs}")
    learn.after_epoch.append(checkpoint.Checkpoint(args.checkpoint))
    return start_epoch


def cmd_train(args) -> int:
    import numpy as np

    from . import analysis
    from .io import atomic_write, save_model
    from .learner import collab_learner

    y_range = _check_y_range(args.y_range)
    _check_train_settings(args)
    say = (lambda *a: None) if args.quiet else print
    _check_plot_dir(args)
    dls, data_label = load_training_data(args)
    user_name, item_name = dls.user_name, dls.item_name
    y_range = _y_range_for(args, y_range, dls)
    learn = collab_learner(dls, n_factors=args.factors, y_range=y_range, opt_func=args.optimizer,
                           seed=args.seed, sparse=args.mode == "sparse", backend=args.backend,
                           log=None if args.quiet else print)
    t0 = time.perf_counter()
    learn.warmup()
    compile_seconds = time.perf_counter() - t0
    start_epoch = _checkpointing(args, learn, say)
    t0 = time.perf_counter()
    learn.fit_one_cycle(args.epochs, args.lr, wd=args.wd, start_epoch=start_epoch)
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

    ranking = None
    if args.ranking_k or args.json:
        ranking = learn.ranking(args.ranking_k or 10, args.ranking_threshold)
        ranking = {k: None if v != v else v for k, v in ranking.items()}  # NaN (no relevant item) is not JSON
    if args.ranking_k:
        say(_ranking_line(ranking) if ranking["n_users"] else
            f"Ranking: no validation rating is >= {args.ranking_threshold:g}, so there is nothing to find")
    if args.plot:
        for path in _write_plots(learn, args.plot):
            say(f"wrote {path}")

    if args.save:
        save_model(args.save, learn.model, dls.classes, user_name, item_name, extra=_model_extras(dls))
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
            "ranking": ranking,
            "settings": {"data": data_label, "split": args.split, "epochs": args.epochs, "lr": args.lr, "wd": args.wd,
                         "factors": args.factors, "bs": args.bs, "y_range": list(y_range), "y_range_from_data": args.y_range is None,
                         "optimizer": args.optimizer, "valid_pct": args.valid_pct, "seed": args.seed,
                         "mode": args.mode, "backend": args.backend, "schedule": "one_cycle"},
        }
        text = json.dumps(report, indent=2, default=lambda o: o.item() if isinstance(o, np.generic) else str(o))
        atomic_write(args.json, lambda f: f.write(text.encode() + b"\n"))
        say(f"wrote report to {args.json}")
    return 0


# --- any ratings data, the usage commands, cross-validation (issue 5) ----------------------------
def add_data_args(p: argparse.ArgumentParser) -> None:
    """Where the ratings come from: a MovieLens set (``--data``, ``--split``) or any file (``--ratings``)."""
    g = p.add_argument_group("data (default: ML-100k with titles, a random 80/20 split)")
    g.add_argument("--split", choices=("u1", "u2", "u3", "u4", "u5", "ua", "ub"),
                   help="ML-100k's own base/test files instead of a random split (valid = the .test file)")
    g.add_argument("--ratings", metavar="FILE", help="a ratings file: CSV, TSV, '::'-separated or Parquet")
    g.add_argument("--user-col", metavar="COL", help="user column of --ratings: a name or a 0-based position (default 0)")
    g.add_argument("--item-col", metavar="COL", help="item column (default 1)")
    g.add_argument("--rating-col", metavar="COL", help="rating column (default 2)")
    g.add_argument("--header", action=argparse.BooleanOptionalAction, default=None,
                   help="whether --ratings/--items start with a header line (default: detect)")
    g.add_argument("--items", metavar="FILE", help="an items file whose titles name the items of --ratings")
    g.add_argument("--item-key", metavar="COL", help="column of --items matching the item column (default 0)")
    g.add_argument("--title-col", metavar="COL", help="column of --items holding the title (default 1)")


def add_usage_output_args(g) -> None:
    g.add_argument("--ranking-k", type=_positive_int, metavar="K",
                   help="print precision@K, recall@K and NDCG@K on the validation split (--json always has them, K=10 by default)")
    g.add_argument("--ranking-threshold", type=float, default=4.0, metavar="T",
                   help="a validation rating >= T counts as relevant for the ranking metrics (default 4)")
    g.add_argument("--plot", metavar="DIR", help="write losses.png, schedule.png and item_pca.png to DIR (needs matplotlib)")


def add_usage_commands(sub) -> None:
    def model_cmd(name, help_, func):
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--model", required=True, metavar="PATH", help="a model saved by 'mfscratch train --save'")
        add_debug_arg(p)
        p.set_defaults(func=func)
        return p

    p = model_cmd("recommend", "a user's top-N unseen items with their predicted ratings", cmd_recommend)
    p.add_argument("--user", required=True, help="the user's id as in the ratings")
    p.add_argument("-n", type=_positive_int, default=10, help="how many items (default 10)")
    p = model_cmd("similar", "the items nearest to one item by cosine similarity of their embeddings", cmd_similar)
    p.add_argument("item", metavar="TITLE", help="the item's name (MovieLens: the title with its year)")
    p.add_argument("-n", type=_positive_int, default=10, help="how many items (default 10)")
    p.add_argument("--min-ratings", type=int, default=0, metavar="N",
                   help="skip items rated fewer than N times in training: their embeddings are mostly noise")
    p = model_cmd("biases", "the items with the highest and lowest learned bias", cmd_biases)
    p.add_argument("-n", type=_positive_int, default=10, help="how many of each (default 10)")
    p = model_cmd("predict", "predicted ratings of one user for some items (unknown ones fall back to biases)",
                  cmd_predict)
    p.add_argument("--user", required=True, help="the user's id as in the ratings")
    p.add_argument("items", nargs="+", metavar="ITEM", help="item names")

    cv = sub.add_parser("cv", help="ML-100k's 5-fold protocol (u1..u5): RMSE and MAE per fold, mean and spread",
                        description="Train on each of ML-100k's u1..u5 base files and test on its .test file.")
    add_train_args(cv)
    add_output_args(cv, "write a JSON report of the folds")
    add_debug_arg(cv)
    cv.set_defaults(func=cmd_cv)


def load_training_data(args):
    """The loaders a ``train`` run asks for, and a label for the report (dataset name or file)."""
    from .readers import attach_titles, loaders_from_split, read_items, read_ml100k_split, read_movielens, read_ratings

    file_only = [f"--{n.replace('_', '-')}" for n in ("user_col", "item_col", "rating_col", "items", "item_key",
                                                       "title_col") if getattr(args, n, None) is not None]
    if args.ratings is None and file_only:
        raise ConfigError(f"{', '.join(file_only)} only apply to --ratings FILE")
    if args.items is None and (args.item_key is not None or args.title_col is not None):
        raise ConfigError("--item-key and --title-col describe an --items FILE; give one")
    if args.ratings is not None:
        if args.data is not None or args.split is not None:
            raise ConfigError("give either --ratings FILE or --data NAME/--split, not both")
        table = read_ratings(args.ratings, _col(args.user_col, 0), _col(args.item_col, 1), _col(args.rating_col, 2),
                             header=args.header)
        if args.items is not None:
            items = read_items(args.items, _col(args.item_key, 0), _col(args.title_col, 1), header=args.header)
            table = attach_titles(table, items, items_source=args.items)
        return table.loaders(args.valid_pct, args.seed, args.bs), args.ratings
    name = args.data or "ml-100k"
    if args.split is not None:
        if name != "ml-100k":
            raise ConfigError(f"--split {args.split} is one of ML-100k's own splits; it does not apply to --data {name}")
        return loaders_from_split(*read_ml100k_split(args.split), bs=args.bs), f"{name}/{args.split}"
    return read_movielens(name).loaders(args.valid_pct, args.seed, args.bs), name


def _col(value, default):
    return default if value is None else value


def _y_range_for(args, y_range, dls):
    """The given ``--y-range``, or one derived from the ratings' scale (and a line saying so)."""
    import numpy as np

    from .readers import default_y_range

    if y_range is not None:
        return y_range
    ratings = np.concatenate([dls.train_ratings, dls.valid_ratings])
    y_range = default_y_range(ratings)
    if not args.quiet:  # on stderr, like the other notes: stdout keeps the seed recipe's shape (table first)
        print(f"note: y_range {y_range} derived from the ratings ({ratings.min():g} to {ratings.max():g}); "
              "set --y-range LO HI to choose it", file=sys.stderr)
    return y_range


def _model_extras(dls) -> dict:
    from .metrics import SeenItems

    return SeenItems.from_loaders(dls).arrays()


def _ranking_line(r: dict) -> str:
    k = r["k"]
    return (f"Ranking of all unseen items for {r['n_users']} validation users (relevant: rated >= {r['threshold']:g}): "
            f"precision@{k} {r['precision']:.4f}  recall@{k} {r['recall']:.4f}  NDCG@{k} {r['ndcg']:.4f}")


def _check_plot_dir(args) -> None:
    """Fail before training, not after, when plots are asked for but cannot be drawn."""
    if getattr(args, "plot", None):
        from .plots import _figure

        _figure((1, 1))


def _write_plots(learn, folder):
    from .plots import write_all

    return write_all(learn, folder)


def _print_frame(df, empty: str) -> None:
    if len(df) == 0:
        print(empty)
    else:
        print(df.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def cmd_recommend(args) -> int:
    from .analysis import Trained

    _print_frame(Trained.load(args.model).recommend(args.user, args.n), "no unseen items left to recommend")
    return 0


def cmd_similar(args) -> int:
    from .analysis import Trained

    df = Trained.load(args.model).similar(args.item, args.n, args.min_ratings)
    _print_frame(df, f"no item is rated at least {args.min_ratings} times")
    return 0


def cmd_biases(args) -> int:
    from .analysis import Trained

    _print_frame(Trained.load(args.model).biases(args.n), "the model has no items")
    return 0


def cmd_predict(args) -> int:
    import pandas as pd

    from .analysis import Trained

    preds = Trained.load(args.model).predict([args.user] * len(args.items), args.items)
    _print_frame(pd.DataFrame({"item": args.items, "predicted_rating": preds}), "")
    return 0


def cmd_cv(args) -> int:
    """ML-100k u1..u5: train on each base file, test on its test file; RMSE/MAE per fold, mean and std."""
    import numpy as np

    from .io import atomic_write
    from .learner import collab_learner
    from .metrics import rating_errors
    from .readers import default_y_range, loaders_from_split, read_ml100k_split

    if (args.data or "ml-100k") != "ml-100k":
        raise ConfigError(f"cv runs ML-100k's u1..u5 folds; --data {args.data} has no such folds")
    y_range = _check_y_range(args.y_range)
    say = (lambda *a, **k: None) if args.quiet else print
    folds = []
    say(f"{'fold':<6}{'rmse':<10}{'mae':<10}{'n_test':<8}{'time':<8}")
    for split in ("u1", "u2", "u3", "u4", "u5"):
        t0 = time.perf_counter()
        dls = loaders_from_split(*read_ml100k_split(split), bs=args.bs)
        if y_range is None:
            y_range = default_y_range(np.concatenate([dls.train_ratings, dls.valid_ratings]))
            say(f"note: y_range {y_range} derived from the ratings; set --y-range LO HI to choose it", file=sys.stderr)
        learn = collab_learner(dls, n_factors=args.factors, y_range=y_range, opt_func=args.optimizer,
                               seed=args.seed, sparse=args.mode == "sparse", backend=args.backend, log=None)
        learn.fit_one_cycle(args.epochs, args.lr, wd=args.wd)
        errors = rating_errors(learn.model, dls.valid_users, dls.valid_items, dls.valid_ratings)
        seconds = time.perf_counter() - t0
        folds.append({"fold": split, **errors, "n_test": dls.n_valid, "seconds": seconds})
        say(f"{split:<6}{errors['rmse']:<10.4f}{errors['mae']:<10.4f}{dls.n_valid:<8}{seconds:<8.1f}")
    summary = {}
    for metric in ("rmse", "mae"):
        values = np.array([f[metric] for f in folds])
        summary[metric] = {"mean": float(values.mean()), "std": float(values.std(ddof=1))}
    # The five test files partition the 100,000 ratings, so the errors pooled over all of them are also defined.
    n = sum(f["n_test"] for f in folds)
    summary["pooled_rmse"] = float(np.sqrt(sum(f["mse"] * f["n_test"] for f in folds) / n))
    summary["pooled_mae"] = float(sum(f["mae"] * f["n_test"] for f in folds) / n)
    say(f"mean  rmse {summary['rmse']['mean']:.4f} +/- {summary['rmse']['std']:.4f}   "
        f"mae {summary['mae']['mean']:.4f} +/- {summary['mae']['std']:.4f}   (std over the 5 folds, ddof=1)")
    say(f"pooled over all 100,000 test ratings: rmse {summary['pooled_rmse']:.4f}  mae {summary['pooled_mae']:.4f}")
    if args.json:
        report = {"folds": folds, "summary": summary,
                  "settings": {"data": "ml-100k", "protocol": "u1..u5", "epochs": args.epochs, "lr": args.lr,
                               "wd": args.wd, "factors": args.factors, "bs": args.bs, "y_range": list(y_range),
                               "optimizer": args.optimizer, "seed": args.seed, "mode": args.mode,
                               "backend": args.backend}}
        atomic_write(args.json, lambda f: f.write(json.dumps(report, indent=2).encode() + b"\n"))
        say(f"wrote report to {args.json}")
    return 0


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings as one stderr line, printed when they happen: ``note:`` for a fallback the user asked
    for (an unknown user or item), ``warning:`` for everything else."""
    from .analysis import FallbackWarning

    kind = "note" if issubclass(category, FallbackWarning) else "warning"
    print(f"{kind}: {message}", file=sys.stderr)


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
    modes = tuple(dict.fromkeys(args.mode)) if args.mode else bench.MODES
    backends = list(dict.fromkeys(args.backend)) if args.backend else None
    bench.check_names(backends, modes)  # before any data is read
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
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # bad arguments (2) or --help (0): return the code instead of raising
        return e.code if isinstance(e.code, int) else 2
    try:
        with warnings.catch_warnings():
            from .analysis import FallbackWarning

            warnings.simplefilter("always", FallbackWarning)  # one note per unknown name, not one per place
            if not args.debug:
                warnings.showwarning = _one_line_warning
            return args.func(args)
    except MfscratchError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = f" (resume from the last finished epoch with --checkpoint {args.checkpoint} --resume)" \
            if getattr(args, "checkpoint", None) else ""
        print(f"error: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
