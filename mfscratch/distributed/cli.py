"""``mfscratch train --backend dask``: read ratings files on a cluster's workers and train there (DSGD).

``--scheduler tcp://HOST:8786`` joins a running cluster (``dask scheduler`` / ``dask worker``);
``--scheduler local:N`` starts a ``LocalCluster`` of ``N`` single-thread worker processes on loopback
for this run and shuts it down at the end, also when the run fails. ``--ratings`` names a file, a
folder or a glob of CSV/TSV/Parquet files that the workers read (each through the project's reader);
the client holds only the factor tables it is asked to save (``--save``, ``--checkpoint``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time

from ..errors import ConfigError
from . import DsgdTrainer, read_ratings, resume

__all__ = ["train_on_cluster", "cluster_client"]

#: Options of ``mfscratch train`` that a cluster run does not take, and why.
NOT_ON_A_CLUSTER = {
    "data": "the MovieLens sets by name are read on this machine; give their ratings file(s) as --ratings",
    "split": "ML-100k's own splits are read on this machine; use --ratings and --valid-pct",
    "items": "item titles are joined on this machine",
    "item_key": "item titles are joined on this machine",
    "title_col": "item titles are joined on this machine",
    "threads": "each worker process runs one thread; size the cluster instead",
    "plot": "the plots need the learner's per-step values",
    "early_stop": "the cluster trains a fixed number of epochs",
    "keep_best": "the cluster trains a fixed number of epochs",
    "ranking_k": "the ranking metrics need the validation rows on this machine",
}

_LOCAL = re.compile(r"^local:(\d+)$")


def local_cluster(n_workers: int, **options):
    """A ``LocalCluster`` of ``n_workers`` single-thread worker processes on 127.0.0.1, no dashboard, a
    failed task's log silenced (it is reported once, as the error line); ``options`` override these."""
    from distributed import LocalCluster

    settings = dict(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},  # its HTTP port: loopback, free
        silence_logs=logging.CRITICAL,
    )
    settings.update(options)
    return LocalCluster(**settings)


@contextlib.contextmanager
def cluster_client(scheduler: str, timeout: float = 60.0):
    """A ``distributed.Client`` for ``scheduler``: an address, or ``local:N`` (a LocalCluster of ``N``
    single-thread worker processes on 127.0.0.1, closed when the block ends, also on an error)."""
    from distributed import Client

    match = _LOCAL.match(scheduler)
    if match is None and scheduler.startswith("local:"):
        raise ConfigError(f"--scheduler {scheduler!r}: write local:N with N worker processes, e.g. local:2")
    if match is None:
        try:
            client = Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError) as e:
            raise ConfigError(
                f"no Dask scheduler answers at {scheduler} ({type(e).__name__}); start one (dask scheduler) "
                "and its workers (dask worker ADDRESS), or use --scheduler local:N"
            ) from None
        try:
            yield client
        finally:
            client.close()
        return
    n = int(match.group(1))
    if n < 1:
        raise ConfigError("--scheduler local:N needs N >= 1 worker processes")
    cluster = local_cluster(n)
    try:
        client = Client(cluster, timeout=timeout)
        try:
            client.wait_for_workers(n, timeout=timeout)
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def _check_args(args) -> None:
    if not args.scheduler:
        raise ConfigError("--backend dask needs --scheduler ADDRESS (a running scheduler) or --scheduler local:N")
    if args.mode == "exact":
        raise ConfigError(
            "--backend dask does not train exact mode: every step updates every row of the tables, so every worker "
            "would need the whole tables at every step; use --mode per-rating (or --mode sparse)"
        )
    if not args.ratings:
        raise ConfigError("--backend dask reads --ratings FILE|FOLDER|GLOB on the workers; give one")
    for option, why in NOT_ON_A_CLUSTER.items():
        value = getattr(args, option, None)
        if value not in (None, False):
            raise ConfigError(f"--{option.replace('_', '-')} does not apply to --backend dask: {why}")
    if args.resume and not args.checkpoint:
        raise ConfigError("--resume needs --checkpoint DIR (the folder the interrupted run saved to)")


def _check_outputs(args) -> None:
    """Every file the run writes, checked before the cluster starts: against each other and the ratings files."""
    from ..checkpoint import FILE_NAME
    from ..outputs import Output, check_outputs
    from .data import list_sources

    outputs = [
        Output("--save", args.save),
        Output("--json", args.json),
        Output("--checkpoint", args.checkpoint, folder=True, files=(FILE_NAME,)),
    ]
    for note in check_outputs(outputs, [("--ratings", f) for f in list_sources(args.ratings)]):
        if not args.quiet:
            print(f"note: {note}", file=sys.stderr)


def _col(value, default):
    return default if value is None else value


def train_on_cluster(args, y_range) -> int:
    """``mfscratch train --backend dask`` (``args`` resolved by ``resolve_recipe``; ``y_range`` checked)."""
    from ..io import write_json

    _check_args(args)
    _check_outputs(args)
    say = (lambda *a: None) if args.quiet else print
    valid_pct = 0.2 if args.valid_pct is None else args.valid_pct
    with cluster_client(args.scheduler) as client:
        try:
            t0 = time.perf_counter()
            ratings = read_ratings(
                client,
                args.ratings,
                _col(args.user_col, 0),
                _col(args.item_col, 1),
                _col(args.rating_col, 2),
                header=args.header,
                encoding=args.encoding,
                valid_pct=valid_pct,
                seed=args.seed,
                sep="\t" if args.sep in ("tab", "\\t") else args.sep,
            )
            read_seconds = time.perf_counter() - t0
            if y_range is None:
                y_range = ratings.default_y_range()
                if not args.quiet:
                    lo, hi = ratings.rating_range
                    print(
                        f"note: y_range {y_range} derived from the ratings ({lo:g} to {hi:g}); "
                        "set --y-range LO HI to choose it",
                        file=sys.stderr,
                    )
            say(f"read {ratings!r} on {len(client.scheduler_info()['workers'])} workers")
            trainer = DsgdTrainer(
                ratings,
                n_factors=args.factors,
                y_range=y_range,
                opt_func=args.optimizer,
                bs=args.bs,
                seed=args.seed,
                sparse=args.mode != "exact",
                log=None if args.quiet else print,
            )
            start_epoch = 0
            if args.checkpoint:
                if args.resume:
                    expect = {"method": "fit_one_cycle", "n_epoch": args.epochs, "lr_max": args.lr, "wd": args.wd}
                    start = resume.restore(trainer, args.checkpoint, expect)
                    if start is None:
                        print(f"note: no checkpoint in {args.checkpoint} yet; starting at epoch 0", file=sys.stderr)
                    else:
                        start_epoch = start
                        say(f"resuming from {args.checkpoint} at epoch {start_epoch} of {args.epochs}")
                trainer.after_epoch.append(resume.Checkpoint(args.checkpoint))
            t0 = time.perf_counter()
            trainer.fit_one_cycle(args.epochs, args.lr, wd=args.wd, start_epoch=start_epoch)
            train_seconds = time.perf_counter() - t0
            if args.save:
                trainer.save(args.save)
                say(f"saved model to {args.save}")
        except TimeoutError as e:
            raise ConfigError(f"{e}; the cluster is overloaded or a worker hangs") from None
        say(trainer)
        if args.json:
            report = {
                "epochs": [
                    {"epoch": i, "train_loss": tl, "valid_loss": vl, "seconds": s, "bytes_sent": b}
                    for i, ((tl, vl), s, b) in enumerate(
                        zip(trainer.values[start_epoch:], trainer.epoch_seconds[start_epoch:], trainer.bytes_sent),
                        start=start_epoch,
                    )
                ],
                "read_seconds": read_seconds,
                "train_seconds": train_seconds,
                "n_users": ratings.n_users,
                "n_items": ratings.n_items,
                "n_train": ratings.n_train,
                "n_valid": ratings.n_valid,
                "settings": {
                    "data": args.ratings,
                    "files": len(ratings.sources),
                    "epochs": args.epochs,
                    "lr": args.lr,
                    "wd": args.wd,
                    "factors": args.factors,
                    "bs": args.bs,
                    "y_range": list(y_range),
                    "optimizer": args.optimizer,
                    "valid_pct": valid_pct,
                    "seed": args.seed,
                    "mode": args.mode,
                    "backend": "dask",
                    "scheduler": args.scheduler,
                    "workers": len(trainer.workers),
                    "n_groups": trainer.n_groups,
                    "schedule": "one_cycle",
                },
            }
            write_json(args.json, report)
            say(f"wrote report to {args.json}")
    return 0
