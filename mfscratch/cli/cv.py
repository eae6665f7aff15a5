"""``mfscratch cv``: ML-100k's five u1..u5 folds, RMSE and MAE per fold, their mean and spread."""

from __future__ import annotations

import sys
import time
from typing import Any

from ..errors import ConfigError
from .args import add_debug_arg, add_output_args, add_train_args, check_y_range, resolve_recipe


def add_cv_parser(sub) -> None:
    """``mfscratch cv``."""
    cv = sub.add_parser(
        "cv",
        help="ML-100k's 5-fold protocol (u1..u5): RMSE and MAE per fold, mean and spread",
        description="Train on each of ML-100k's u1..u5 base files and test on its .test file.",
    )
    add_train_args(cv, valid_pct=False)
    add_output_args(cv, "write a JSON report of the folds")
    add_debug_arg(cv)
    cv.set_defaults(func=cmd_cv)


def cmd_cv(args) -> int:
    """ML-100k u1..u5: train on each base file, test on its test file; RMSE/MAE per fold, mean and std."""
    import numpy as np

    from ..backends import get_backend
    from ..data import data_dir
    from ..io import write_json
    from ..learner import collab_learner, format_time
    from ..metrics import rating_errors
    from ..outputs import Output, check_outputs, dataset_inputs
    from ..readers import default_y_range, loaders_from_split, read_ml100k_split

    if (args.data or "ml-100k") != "ml-100k":
        raise ConfigError(f"cv runs ML-100k's u1..u5 folds; --data {args.data} has no such folds")
    y_range = check_y_range(args.y_range)
    resolve_recipe(args)
    get_backend(args.backend, args.threads, args.per_rating_scheduler)  # settings it cannot take, before any fold
    say = (lambda *a, **k: None) if args.quiet else print
    for note in check_outputs([Output("--json", args.json)], dataset_inputs(data_dir() / "ml-100k")):
        say(f"note: {note}", file=sys.stderr)
    folds: list[dict[str, Any]] = []
    say(f"{'fold':<6}{'rmse':<10}{'mae':<10}{'n_test':<8}{'time':<8}")
    for split in ("u1", "u2", "u3", "u4", "u5"):
        t0 = time.perf_counter()
        dls = loaders_from_split(*read_ml100k_split(split), bs=args.bs)
        if y_range is None:
            y_range = default_y_range(np.concatenate([dls.train_ratings, dls.valid_ratings]))
            say(f"note: y_range {y_range} derived from the ratings; set --y-range LO HI to choose it", file=sys.stderr)
        learn = collab_learner(
            dls,
            n_factors=args.factors,
            y_range=y_range,
            opt_func=args.optimizer,
            seed=args.seed,
            sparse=args.mode != "exact",
            backend=args.backend,
            log=None,
            threads=args.threads,
            per_rating_scheduler=args.per_rating_scheduler,
        )
        learn.fit_one_cycle(args.epochs, args.lr, wd=args.wd)
        errors = rating_errors(learn.model, dls.valid_users, dls.valid_items, dls.valid_ratings)
        seconds = time.perf_counter() - t0
        folds.append({"fold": split, **errors, "n_test": dls.n_valid, "seconds": seconds})
        say(f"{split:<6}{errors['rmse']:<10.4f}{errors['mae']:<10.4f}{dls.n_valid:<8}{format_time(seconds):<8}")
    summary: dict[str, Any] = {}
    for metric in ("rmse", "mae"):
        values = np.array([f[metric] for f in folds])
        summary[metric] = {"mean": float(values.mean()), "std": float(values.std(ddof=1))}
    # The five test files partition the 100,000 ratings, so the errors pooled over all of them are also defined.
    n = sum(f["n_test"] for f in folds)
    summary["pooled_rmse"] = float(np.sqrt(sum(f["mse"] * f["n_test"] for f in folds) / n))
    summary["pooled_mae"] = float(sum(f["mae"] * f["n_test"] for f in folds) / n)
    say(
        f"mean  rmse {summary['rmse']['mean']:.4f} +/- {summary['rmse']['std']:.4f}   "
        f"mae {summary['mae']['mean']:.4f} +/- {summary['mae']['std']:.4f}   (std over the 5 folds, ddof=1)"
    )
    say(f"pooled over all 100,000 test ratings: rmse {summary['pooled_rmse']:.4f}  mae {summary['pooled_mae']:.4f}")
    if args.json:
        report = {
            "folds": folds,
            "summary": summary,
            "settings": {
                "data": "ml-100k",
                "protocol": "u1..u5",
                "epochs": args.epochs,
                "lr": args.lr,
                "wd": args.wd,
                "factors": args.factors,
                "bs": args.bs,
                "y_range": None if y_range is None else list(y_range),
                "optimizer": args.optimizer,
                "seed": args.seed,
                "mode": args.mode,
                "backend": args.backend,
            },
        }
        write_json(args.json, report)
        say(f"wrote report to {args.json}")
    return 0
