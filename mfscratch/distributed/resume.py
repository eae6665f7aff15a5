"""Checkpoints of a fit on a cluster, in the format of ``mfscratch.checkpoint`` (``DIR/checkpoint.npz``).

After each epoch :class:`Checkpoint` gathers the tables (weights, and the moments of lazy Adam/SGD)
to the client and writes them with the epoch-seed generator's state, the optimiser's step count, the
epochs' values and the fit's arguments, atomically. :func:`restore` puts them back on the workers,
each worker receiving only its rows, and the fit continues with ``start_epoch``: the block layout
and every epoch's seed are those of the uninterrupted fit, so per-rating SGD ends with its weights
bit for bit. The settings that must match (table sizes, optimiser, batch size, groups and workers,
and a SHA-256 of the encoded files, computed on the workers) are checked as the local ones are.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from .. import checkpoint as ck
from ..errors import ConfigError
from ..io import atomic_write
from .data import gather

__all__ = ["Checkpoint", "save", "restore"]


def _partition_digest(part) -> str:
    h = hashlib.sha256()
    for a in (part.users, part.items, part.ratings, part.valid):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def data_digest(trainer) -> str:
    """SHA-256 over each file's encoded rows and split, hashed where the file lies."""
    if getattr(trainer, "_digest", None) is None:
        c = trainer.client
        digests = gather(
            c, [c.submit(_partition_digest, p) for p in trainer.ratings.partitions], trainer.timeout, "hashing"
        )
        trainer._digest = hashlib.sha256("".join(digests).encode()).hexdigest()
    return trainer._digest


def _settings(trainer) -> dict:
    r = trainer.ratings
    return {
        "n_users": r.n_users,
        "n_items": r.n_items,
        "n_factors": trainer.n_factors,
        "y_range": list(trainer.y_range) if trainer.y_range is not None else None,
        "optimizer": dataclasses.asdict(trainer.opt),
        "mode": "per-rating" if trainer.per_rating else "sparse",
        "bs": trainer.bs,
        "backend": "dask",
        "n_groups": trainer.n_groups,
        "workers": len(trainer.workers),
        "data_sha256": data_digest(trainer),
    }


def save(directory, trainer, epoch: int) -> Path:
    """Write ``directory/checkpoint.npz`` for ``trainer`` after its epoch ``epoch`` (0-based)."""
    if trainer.fit_args is None:
        raise ConfigError("nothing to checkpoint: the trainer has not started a fit")
    params, exp_avg, exp_avg_sq = trainer.weights()
    arrays = {
        "format": np.array(ck._MAGIC),
        "version": np.array(ck.FORMAT_VERSION, dtype=np.int64),
        "params": params,
        "exp_avg": exp_avg,
        "exp_avg_sq": exp_avg_sq,
        "step": np.array(trainer.opt_step, dtype=np.int64),
        "epoch": np.array(epoch, dtype=np.int64),
        "rng_state": ck._json_array(trainer.rng.bit_generator.state),
        "smooth_avg": np.array(0.0),  # a cluster's train loss is each epoch's mean: no smoother
        "smooth_count": np.array(0, dtype=np.int64),
        "values": np.asarray(trainer.values, dtype=np.float64).reshape(-1, 2),
        "fit_args": ck._json_array(ck._normalise(trainer.fit_args)),
        "settings": ck._json_array(_settings(trainer)),
    }
    for name in ck._RECORDER_FIELDS:
        values = trainer.epoch_seconds if name == "epoch_seconds" else []
        arrays[f"rec_{name}"] = np.asarray(values, dtype=np.float64)
    return atomic_write(Path(directory) / ck.FILE_NAME, lambda f: np.savez(f, **arrays))


class Checkpoint:
    """An ``after_epoch`` callback of :class:`~.dsgd.DsgdTrainer`: saves to ``directory`` after each epoch."""

    def __init__(self, directory):
        self.directory = Path(directory)

    def __call__(self, trainer, epoch: int) -> None:
        save(self.directory, trainer, epoch)


def restore(trainer, directory, expect: dict | None = None) -> int | None:
    """Load ``directory``'s checkpoint into ``trainer``; the epoch to start from (``None``: no checkpoint).

    ``expect``: fit arguments the caller is about to use; a checkpoint of another fit, other settings
    or other data is refused with one line saying which.
    """
    state = ck.load(directory)
    if state is None:
        return None
    where = Path(directory) / ck.FILE_NAME
    mine = ck._normalise(_settings(trainer))
    theirs = state["settings"]
    for key in sorted(set(mine) | set(theirs)):
        if mine.get(key) != theirs.get(key):
            what = "the data or its split (seed, valid_pct)" if key == "data_sha256" else f"{key}={theirs.get(key)}"
            raise ConfigError(
                f"checkpoint {where} was made with {what}, this run differs ({key}={mine.get(key)}); "
                "use the same settings, or drop --resume to start afresh"
            )
    for key, value in ck._normalise(expect or {}).items():
        if state["fit_args"].get(key) != value:
            raise ConfigError(
                f"checkpoint {where} was made by a fit with {key}={state['fit_args'].get(key)}, this "
                f"run asks for {key}={value}; use the same settings, or drop --resume to start afresh"
            )
    trainer.set_weights(state["params"], state["exp_avg"], state["exp_avg_sq"])
    trainer.rng.bit_generator.state = state["rng_state"]
    trainer.opt_step = state["step"]
    trainer.values = [list(v) for v in state["values"]]
    trainer.epoch_seconds = list(state["rec_epoch_seconds"])
    trainer.fit_args = state["fit_args"]
    return state["epoch"] + 1
