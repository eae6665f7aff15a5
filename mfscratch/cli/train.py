"""``mfscratch train``: read the data, train, print fastai's table and the seed chapter's lines, write outputs."""

from __future__ import annotations

import sys
import time

from ..errors import ConfigError
from .args import (
    add_data_args,
    add_debug_arg,
    add_output_args,
    add_scheduler_arg,
    add_train_args,
    add_usage_output_args,
    check_y_range,
    positive_int,
    resolve_recipe,
)

SEED_TITLE = "Silence of the Lambs, The (1991)"
#: The popularity floor of the nearest-item line: a barely rated item's embedding is mostly its random
#: start, so its cosine similarity to anything is noise (unfloored, ML-100k's answer is a film rated 3 times).
NEAREST_MIN_RATINGS = 50


def add_train_parser(sub) -> None:
    """``mfscratch train``: the seed recipe, or any settings and data."""
    train = sub.add_parser(
        "train",
        help="train the seed recipe (or any settings) and report",
        description="Train the biased dot-product model and print fastai's results table.",
    )
    add_train_args(train)
    add_scheduler_arg(train)
    out = add_output_args(train, "write a JSON report of the run")
    out.add_argument("--save", metavar="PATH", help="write the weights and vocabularies to a .npz")
    add_data_args(train)
    add_usage_output_args(out)
    out.add_argument("--checkpoint", metavar="DIR", help="save the full training state to DIR after each epoch")
    out.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint in --checkpoint DIR (same settings; starts afresh if none)",
    )
    watch = train.add_argument_group("watching the validation loss (fastai's EarlyStoppingCallback, SaveModelCallback)")
    watch.add_argument(
        "--early-stop",
        type=positive_int,
        metavar="PATIENCE",
        help="stop when valid_loss has not improved for PATIENCE epochs in a row",
    )
    watch.add_argument(
        "--keep-best", action="store_true", help="end with the weights of the epoch with the lowest valid_loss"
    )
    add_debug_arg(train)
    train.set_defaults(func=cmd_train)


def _check_train_settings(args) -> None:
    """What argparse's types cannot see, checked before any data is read."""
    from ..backends import BACKENDS, get_backend

    if args.backend not in BACKENDS:
        raise ConfigError(f"unknown --backend {args.backend!r}: use one of {', '.join(BACKENDS)}")
    get_backend(
        args.backend, args.threads, args.per_rating_scheduler
    )  # a backend this machine cannot run (cuda without a GPU) says so now
    if args.split is not None and args.valid_pct is not None:
        raise ConfigError(
            f"--split {args.split} validates on ML-100k's {args.split}.test file, so --valid-pct does not apply; "
            "leave it out"
        )
    if args.ranking_threshold is not None and not (args.ranking_k or args.json):
        raise ConfigError("--ranking-threshold applies to the ranking metrics; add --ranking-k K (or --json PATH)")
    if args.ranking_users is not None and not (args.ranking_k or args.json):
        raise ConfigError("--ranking-users applies to the ranking metrics; add --ranking-k K (or --json PATH)")
    if args.resume and not args.checkpoint:
        raise ConfigError("--resume needs --checkpoint DIR (the folder the interrupted run saved to)")
    _check_outputs(args)


def _check_outputs(args) -> None:
    """Every file the run will write, checked now against its inputs and each other (``mfscratch.outputs``)."""
    from ..checkpoint import FILE_NAME
    from ..data import DATASETS, data_dir
    from ..outputs import Output, check_outputs, dataset_inputs
    from ..plots import PLOT_FILES

    outputs = [
        Output("--save", args.save),
        Output("--json", args.json),
        Output("--plot", args.plot, folder=True, files=PLOT_FILES),
        Output("--checkpoint", args.checkpoint, folder=True, files=(FILE_NAME,)),
    ]
    inputs = [("--ratings", args.ratings), ("--items", args.items)]
    if args.ratings is None and (args.data or "ml-100k") in DATASETS:
        inputs += dataset_inputs(data_dir() / DATASETS[args.data or "ml-100k"].folder)
    for note in check_outputs(outputs, inputs):
        if not args.quiet:
            print(f"note: {note}", file=sys.stderr)


def load_movielens_frame(name: str):
    """A MovieLens set as ``(df, user_name, item_name, rating_name)`` (ML-100k: the seed recipe's title merge)."""
    from ..readers import read_movielens

    t = read_movielens(name)
    return t.df, t.user, t.item, t.rating


def _checkpointing(args, learn, say) -> int:
    """Restore ``--checkpoint DIR`` when ``--resume`` is given, and save there after each epoch."""
    if not args.checkpoint:
        return 0
    from .. import checkpoint

    start_epoch = 0
    if args.resume:
        expect = {"method": "fit_one_cycle", "n_epoch": args.epochs, "lr_max": args.lr, "wd": args.wd}
        restored = checkpoint.restore(learn, args.checkpoint, expect)
        if restored is None:
            print(f"note: no checkpoint in {args.checkpoint} yet; starting at epoch 0", file=sys.stderr)
        else:
            say(f"resuming from {args.checkpoint} at epoch {restored} of {args.epochs}")
        start_epoch = restored or 0
    learn.after_epoch.append(checkpoint.Checkpoint(args.checkpoint))
    return start_epoch


def cmd_train(args) -> int:
    from .. import analysis
    from ..io import write_json
    from ..learner import collab_learner

    t_start = time.perf_counter()
    y_range = check_y_range(args.y_range)
    resolve_recipe(args)
    if args.backend == "dask":  # read and trained on a cluster's workers (mfscratch.distributed)
        if args.per_rating_scheduler:
            raise ConfigError("--per-rating-scheduler applies to --backend parallel; drop it with --backend dask")
        from ..distributed.cli import train_on_cluster

        return train_on_cluster(args, y_range)
    if args.scheduler:
        raise ConfigError("--scheduler applies to --backend dask; add it or drop --scheduler")
    _check_train_settings(args)
    say = (lambda *a: None) if args.quiet else print
    _check_plot_dir(args)
    t0 = time.perf_counter()
    dls, data_label = load_training_data(args)
    data_phases = dict(getattr(dls, "phase_seconds", {}))  # check, encode, split (CollabDataLoaders.from_df)
    read_seconds = time.perf_counter() - t0 - sum(data_phases.values())
    t0 = time.perf_counter()
    item_name = dls.item_name
    y_range = _y_range_for(args, y_range, dls)
    learn = collab_learner(
        dls,
        n_factors=args.factors,
        y_range=y_range,
        opt_func=args.optimizer,
        seed=args.seed,
        sparse=args.mode != "exact",
        backend=args.backend,
        log=None if args.quiet else print,
        threads=args.threads,
        per_rating_scheduler=args.per_rating_scheduler,
    )
    init_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    learn.warmup()
    ranks = bool(args.ranking_k or args.json)
    threshold = 4.0 if args.ranking_threshold is None else args.ranking_threshold
    if ranks:  # the ranking's kernels too: its seconds are then its work
        learn.warm_ranking(args.ranking_k or 10, threshold)
    compile_seconds = time.perf_counter() - t0
    start_epoch = _checkpointing(args, learn, say)
    t0 = time.perf_counter()
    learn.fit_one_cycle(args.epochs, args.lr, wd=args.wd, start_epoch=start_epoch, cbs=_watchers(args))
    train_seconds = time.perf_counter() - t0
    if args.save:  # first, before any optional extra (ranking, report, plots) can fail
        learn.export(args.save)
        say(f"saved model to {args.save}")

    t_report = time.perf_counter()
    vocab = dls.classes[item_name]
    say()
    say(learn.model)
    say()
    say("Highest learned item biases:")
    for name, bias in analysis.top_biases(learn.model, vocab, 5):
        say(f"  {bias:+.4f}  {name}")
    if SEED_TITLE in vocab.o2i:
        nearest = learn.similar(SEED_TITLE, 1, min_ratings=NEAREST_MIN_RATINGS)
        if len(nearest):
            near, sim = nearest["item"].iloc[0], nearest["similarity"].iloc[0]
            say(
                f"Nearest to {SEED_TITLE!r} by cosine similarity, among items rated at least "
                f"{NEAREST_MIN_RATINGS} times: {near!r} ({sim:.3f})"
            )

    ranking = None
    if ranks:
        users = "auto" if args.ranking_users is None else args.ranking_users
        ranking = learn.ranking(args.ranking_k or 10, threshold, users=users, seed=args.seed or 0)
    if args.ranking_k and ranking is not None:
        say(
            _ranking_line(ranking)
            if ranking["n_users"]
            else f"Ranking: no validation rating is >= {threshold:g}, so there is nothing to find"
        )
    if args.json:
        rec = learn.recorder
        report = {
            "epochs": [
                {
                    "epoch": i,
                    "train_loss": tl,
                    "valid_loss": vl,
                    "seconds": s,
                    "train_seconds": ts,
                    "valid_seconds": vs,
                    "mean_loss": ml,
                }
                for i, ((tl, vl), s, ts, vs, ml) in enumerate(
                    zip(rec.values, rec.epoch_seconds, rec.train_seconds, rec.valid_seconds, rec.mean_losses)
                )
            ],
            "train_seconds": train_seconds,
            "compile_seconds": compile_seconds,
            "read_seconds": read_seconds,
            **{f"{phase}_seconds": data_phases.get(phase) for phase in ("check", "encode", "split")},
            "init_seconds": init_seconds,
            "setup_seconds": rec.setup_seconds,
            "report_seconds": time.perf_counter() - t_report,
            "total_seconds": time.perf_counter() - t_start,
            "n_users": dls.n_users,
            "n_items": dls.n_items,
            "n_train": dls.n_train,
            "n_valid": dls.n_valid,
            "ranking": ranking,
            "settings": {
                "data": data_label,
                "split": args.split,
                "epochs": args.epochs,
                "lr": args.lr,
                "wd": args.wd,
                "factors": args.factors,
                "bs": args.bs,
                "y_range": list(y_range),
                "y_range_from_data": args.y_range is None,
                "optimizer": args.optimizer,
                "valid_pct": None if args.split else _valid_pct(args),
                "seed": args.seed,
                "mode": args.mode,
                "backend": args.backend,
                "per_rating_scheduler": getattr(learn.backend, "per_rating_scheduler", None),
                "schedule": "one_cycle",
                "early_stop": args.early_stop,
                "keep_best": args.keep_best,
            },
        }
        write_json(args.json, report)
        say(f"wrote report to {args.json}")
    if args.plot:
        for path in _write_plots(learn, args.plot):
            say(f"wrote {path}")
    return 0


def _watchers(args) -> list:
    """The callbacks of ``--keep-best`` (first: it sees the last epoch before a stop) and ``--early-stop``."""
    from ..callbacks import EarlyStoppingCallback, SaveModelCallback

    cbs: list = [SaveModelCallback(fname=None)] if args.keep_best else []
    if args.early_stop:
        cbs.append(EarlyStoppingCallback(patience=args.early_stop))
    return cbs


def load_training_data(args):
    """The loaders a ``train`` run asks for, and a label for the report (dataset name or file)."""
    from ..readers import attach_titles, loaders_from_split, read_items, read_ml100k_split, read_movielens, read_ratings

    file_only = [
        f"--{n.replace('_', '-')}"
        for n in ("user_col", "item_col", "rating_col", "items", "item_key", "title_col", "header", "encoding", "sep")
        if getattr(args, n, None) is not None
    ]
    if args.ratings is None and file_only:
        raise ConfigError(f"{', '.join(file_only)} only apply to --ratings FILE")
    if args.items is None and (args.item_key is not None or args.title_col is not None):
        raise ConfigError("--item-key and --title-col describe an --items FILE; give one")
    if args.ratings is not None:
        if args.data is not None or args.split is not None:
            raise ConfigError("give either --ratings FILE or --data NAME/--split, not both")
        sep = "\t" if args.sep in ("tab", "\\t") else args.sep
        cols = (_col(args.user_col, 0), _col(args.item_col, 1), _col(args.rating_col, 2))
        # Ids as int32 where they fit: the table is only encoded (and named by title).
        table = read_ratings(args.ratings, *cols, header=args.header, encoding=args.encoding, sep=sep, narrow_ids=True)
        if table.info is not None and not args.quiet:
            print(f"note: {table.info.summary()}", file=sys.stderr)
        if args.items is not None:
            key_title = (_col(args.item_key, 0), _col(args.title_col, 1))
            items = read_items(args.items, *key_title, header=args.header, encoding=args.encoding, sep=sep)
            table = attach_titles(table, items, items_source=args.items)
        return table.loaders(_valid_pct(args), args.seed, args.bs, consume=True), args.ratings
    name = args.data or "ml-100k"
    if args.split is not None:
        if name != "ml-100k":
            raise ConfigError(
                f"--split {args.split} is one of ML-100k's own splits; it does not apply to --data {name}"
            )
        return loaders_from_split(*read_ml100k_split(args.split), bs=args.bs), f"{name}/{args.split}"
    return read_movielens(name, narrow_ids=True).loaders(_valid_pct(args), args.seed, args.bs, consume=True), name


def _valid_pct(args) -> float:
    return 0.2 if args.valid_pct is None else args.valid_pct


def _col(value, default):
    return default if value is None else value


def _y_range_for(args, y_range, dls):
    """The given ``--y-range``, or one derived from the ratings' scale (and a line saying so)."""
    import numpy as np

    from ..readers import default_y_range

    if y_range is not None:
        return y_range
    parts = [r for r in (dls.train_ratings, dls.valid_ratings) if len(r)]  # the extremes decide: no copy
    r_min, r_max = min(float(r.min()) for r in parts), max(float(r.max()) for r in parts)
    y_range = default_y_range(np.array([r_min, r_max]))
    if not args.quiet:  # on stderr, like the other notes: stdout keeps the seed recipe's shape (table first)
        print(
            f"note: y_range {y_range} derived from the ratings ({r_min:g} to {r_max:g}); "
            "set --y-range LO HI to choose it",
            file=sys.stderr,
        )
    return y_range


def _ranking_line(r: dict) -> str:
    k = r["k"]
    who = (
        f"{r['n_users']} of {r['n_users_eligible']} validation users (a sample, seed {r['sample_seed']})"
        if r.get("sampled")
        else f"{r['n_users']} validation users"
    )
    return (
        f"Ranking of all unseen items for {who} (relevant: rated >= {r['threshold']:g}): "
        f"precision@{k} {r['precision']:.4f}  recall@{k} {r['recall']:.4f}  NDCG@{k} {r['ndcg']:.4f}"
    )


def _check_plot_dir(args) -> None:
    """Fail before training, not after, when plots are asked for but cannot be drawn."""
    if getattr(args, "plot", None):
        from ..plots import _figure

        _figure((1, 1))


def _write_plots(learn, folder):
    from ..plots import write_all

    return write_all(learn, folder)
