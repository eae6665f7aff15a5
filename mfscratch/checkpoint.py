"""Checkpoints: the full training state after each epoch, so that a stopped run can be resumed exactly.

A resumed run ends with exactly the weights of an uninterrupted one (bit for bit), because the
checkpoint holds everything the next epoch reads:

* the flat weights ``params`` and the optimiser's ``exp_avg``, ``exp_avg_sq`` and ``step``;
* the batch-order generator's state (``learner.rng.bit_generator.state``, stored as JSON text);
* the train-loss smoother (``_smooth_avg``, ``_smooth_count``) and the recorder's values;
* the index of the last finished epoch and the fit's arguments (``learner.fit_args``), from which
  the per-step learning rates and momenta are recomputed identically.

It also records the settings that must match for a resume to make sense (table sizes, dtype,
``y_range``, optimiser, mode, batch size, and a SHA-256 of the encoded split) and refuses a
checkpoint that does not match them. Checkpoints of version 1 (mfscratch 0.1, which recorded
``sparse`` instead of the mode) still load.

File: ``DIR/checkpoint.npz``, plain arrays only (no pickles), replaced atomically after each epoch
(:func:`mfscratch.io.atomic_write`), so a run killed mid-write leaves the previous epoch's checkpoint.

Usage::

    learn.after_epoch.append(Checkpoint("ckpt"))      # save after every epoch
    learn.fit_one_cycle(5, 5e-3, wd=0.1)              # ... interrupted after epoch 2
    # later, with a learner built the same way:
    resume(learn, "ckpt")                              # restores and runs epochs 3 and 4
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from .errors import ConfigError, ModelFileError
from .io import _read_arrays, atomic_write

__all__ = [
    "Checkpoint",
    "save",
    "load",
    "write_state",
    "read_state",
    "restore",
    "resume",
    "FILE_NAME",
    "FORMAT_VERSION",
]

FILE_NAME = "checkpoint.npz"
FORMAT_VERSION = 2
#: Versions this mfscratch reads: 1 (0.1: ``sparse`` in the settings instead of ``mode``) and 2.
READABLE_VERSIONS = (1, 2)
_MAGIC = "mfscratch-checkpoint"
_RECORDER_FIELDS = ("losses", "lrs", "moms", "epoch_seconds", "train_seconds")
#: Recorder fields written since the recorder samples long epochs; a checkpoint without them restores without them.
_RECORDER_OPTIONAL = ("steps", "valid_seconds", "mean_losses")


def _json_array(obj) -> np.ndarray:
    """A JSON document as a 0-d unicode array: readable back without pickles."""
    return np.array(json.dumps(obj, sort_keys=True))


def _data_digest(dls) -> str:
    """SHA-256 of the encoded training and validation arrays: the same data and split, or not."""
    h = hashlib.sha256()
    for a in (dls.train_users, dls.train_items, dls.train_ratings, dls.valid_users, dls.valid_items, dls.valid_ratings):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _settings(learner) -> dict:
    """What must be the same between the run that wrote a checkpoint and the run that resumes it."""
    m = learner.model
    return {
        "n_users": m.n_users,
        "n_items": m.n_items,
        "n_factors": m.n_factors,
        "dtype": str(m.dtype),
        "y_range": list(m.y_range) if m.y_range is not None else None,
        "optimizer": dataclasses.asdict(learner.opt),
        "mode": learner.mode,
        "bs": learner.dls.bs,
        "data_sha256": _data_digest(learner.dls),
    }


def _upgrade_settings(settings: dict) -> dict:
    """Version 1's settings in version 2's words: the mode a fit ran instead of its ``sparse`` flag."""
    if "mode" in settings or "sparse" not in settings:
        return settings
    from types import SimpleNamespace

    from .backends import mode_of

    settings = dict(settings)
    opt = settings["optimizer"]
    uses_momentum = opt["name"] == "adam" or opt.get("mom", 0.0) != 0.0
    opt = SimpleNamespace(name=opt["name"], uses_momentum=uses_momentum)
    settings["mode"] = mode_of(settings.pop("sparse"), opt, settings["bs"])
    return settings


def _normalise(obj):
    """Round-trip through JSON so that tuples, lists and numpy scalars compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True, default=float))


def save(directory, learner, epoch: int) -> Path:
    """Write ``directory/checkpoint.npz`` for ``learner`` after it finished epoch ``epoch`` (0-based)."""
    if learner.fit_args is None:
        raise ConfigError("nothing to checkpoint: the learner has not started a fit")
    return write_state(Path(directory) / FILE_NAME, learner, epoch)


def write_state(path, learner, epoch: int, extra: dict | None = None) -> Path:
    """The full state of ``learner`` (see the module docstring) as the ``.npz`` at ``path``, atomically.

    ``epoch`` is the last finished epoch (-1 before any); ``extra`` adds arrays (``learn.save`` adds
    the vocabularies' digest). Also the format of ``learn.save`` (``export.py``).
    """
    learner.backend.sync()  # on a GPU backend, bring params and moments back to the host first
    rec = learner.recorder
    arrays = {
        "format": np.array(_MAGIC),
        "version": np.array(FORMAT_VERSION, dtype=np.int64),
        "params": learner.model.params,
        "exp_avg": learner.opt_state.exp_avg,
        "exp_avg_sq": learner.opt_state.exp_avg_sq,
        "step": np.array(learner.opt_state.step, dtype=np.int64),
        "epoch": np.array(epoch, dtype=np.int64),
        "rng_state": _json_array(learner.rng.bit_generator.state),
        "smooth_avg": np.array(learner._smooth_avg, dtype=np.float64),
        "smooth_count": np.array(learner._smooth_count, dtype=np.int64),
        "values": np.asarray(rec.values, dtype=np.float64).reshape(-1, 2),
        "fit_args": _json_array(_normalise(learner.fit_args)),
        "settings": _json_array(_settings(learner)),
        **(extra or {}),
    }
    for name in _RECORDER_FIELDS + _RECORDER_OPTIONAL:
        arrays[f"rec_{name}"] = np.asarray(getattr(rec, name), dtype=np.float64)
    return atomic_write(path, lambda f: np.savez(f, **arrays))


class Checkpoint:
    """An ``after_epoch`` callback: ``learn.after_epoch.append(Checkpoint(DIR))`` saves after each epoch."""

    def __init__(self, directory):
        self.directory = Path(directory)

    def __call__(self, learner, epoch: int) -> None:
        save(self.directory, learner, epoch)


def load(directory) -> dict | None:
    """The checkpoint in ``directory`` as a dict of checked values, or ``None`` when there is none."""
    path = Path(directory) / FILE_NAME
    if not path.exists():
        return None
    return read_state(path, "delete it (or the folder) and train again without --resume")


def read_state(path: Path, fix: str) -> dict:
    """The checked values of a file written by :func:`write_state` (``fix``: what to do when it is bad),
    with any extra arrays under ``"extra"``."""
    data = _read_arrays(path)

    def bad(what):
        return ModelFileError(f"{path} {what}; {fix}")

    if str(data.get("format", "")) != _MAGIC:
        raise bad("is not an mfscratch checkpoint")
    if data["version"].shape != () or int(data["version"]) not in READABLE_VERSIONS:
        raise bad(f"has format version {data['version']}, this mfscratch reads versions {READABLE_VERSIONS}")
    needed = {
        "params",
        "exp_avg",
        "exp_avg_sq",
        "step",
        "epoch",
        "rng_state",
        "smooth_avg",
        "smooth_count",
        "values",
        "fit_args",
        "settings",
        *(f"rec_{n}" for n in _RECORDER_FIELDS),
    }
    if needed - set(data):
        raise bad(f"lacks {sorted(needed - set(data))}")
    params = data["params"]
    if not (params.ndim == 1 and data["exp_avg"].shape == params.shape and data["exp_avg_sq"].shape == params.shape):
        raise bad("has weights and optimiser moments of different shapes")
    try:
        state = {
            "params": params,
            "exp_avg": data["exp_avg"],
            "exp_avg_sq": data["exp_avg_sq"],
            "step": int(data["step"]),
            "epoch": int(data["epoch"]),
            "rng_state": json.loads(str(data["rng_state"])),
            "smooth_avg": float(data["smooth_avg"]),
            "smooth_count": int(data["smooth_count"]),
            "values": data["values"].tolist(),
            "fit_args": json.loads(str(data["fit_args"])),
            "settings": _upgrade_settings(json.loads(str(data["settings"]))),
        }
        state.update(
            {f"rec_{n}": data[f"rec_{n}"].tolist() for n in _RECORDER_FIELDS + _RECORDER_OPTIONAL if f"rec_{n}" in data}
        )
    except (TypeError, ValueError) as e:
        raise bad(f"is damaged ({type(e).__name__}: {e})") from None
    optional = {f"rec_{n}" for n in _RECORDER_OPTIONAL}
    state["extra"] = {k: v for k, v in data.items() if k not in needed | optional | {"format", "version"}}
    return state


def restore(learner, directory, expect: dict | None = None) -> int | None:
    """Load ``directory``'s checkpoint into ``learner``; returns the epoch to start from.

    Returns ``None`` (and changes nothing) when the folder holds no checkpoint. ``expect`` lists fit
    arguments the caller is about to use (e.g. ``{"n_epoch": 5, "lr_max": 5e-3}``): a checkpoint
    written by a different fit is refused, as is one written with other settings or data.
    After this, ``learner.fit_args`` holds the checkpoint's fit, to be called with ``start_epoch``.
    """
    state = load(directory)
    if state is None:
        return None
    where = Path(directory) / FILE_NAME
    mine = _normalise(_settings(learner))
    for key, theirs in state["settings"].items():
        if mine.get(key) != theirs:
            what = "the data or its split (seed, valid_pct)" if key == "data_sha256" else f"{key}={theirs}"
            raise ConfigError(
                f"checkpoint {where} was made with {what}, this run differs ({key}={mine.get(key)}); "
                "use the same settings, or drop --resume to start afresh"
            )
    for key, value in _normalise(expect or {}).items():
        if state["fit_args"].get(key) != value:
            raise ConfigError(
                f"checkpoint {where} was made by a fit with {key}={state['fit_args'].get(key)}, this "
                f"run asks for {key}={value}; use the same settings, or drop --resume to start afresh"
            )
    if state["rng_state"].get("bit_generator") != learner.rng.bit_generator.state["bit_generator"]:
        raise ConfigError(
            f"checkpoint {where} holds a {state['rng_state'].get('bit_generator')} generator state; "
            f"this learner uses {learner.rng.bit_generator.state['bit_generator']}"
        )
    learner.model.params[...] = state["params"]
    learner.opt_state.exp_avg[...] = state["exp_avg"]
    learner.opt_state.exp_avg_sq[...] = state["exp_avg_sq"]
    learner.opt_state.step = state["step"]
    learner.rng.bit_generator.state = state["rng_state"]
    learner._smooth_avg, learner._smooth_count = state["smooth_avg"], state["smooth_count"]
    rec = learner.recorder
    rec.values = [list(v) for v in state["values"]]
    for name in _RECORDER_FIELDS + _RECORDER_OPTIONAL:
        if f"rec_{name}" in state:
            setattr(rec, name, list(state[f"rec_{name}"]))
    learner.fit_args = state["fit_args"]
    return state["epoch"] + 1


def resume(learner, directory) -> None:
    """Restore ``directory``'s checkpoint into ``learner`` and run the rest of the fit it was taken in."""
    start = restore(learner, directory)
    if start is None:
        raise ModelFileError(f"no checkpoint in {directory} ({FILE_NAME} not found); train with a Checkpoint first")
    args = dict(learner.fit_args)
    method = args.pop("method")
    if method not in ("fit", "fit_one_cycle"):
        raise ModelFileError(f"checkpoint in {directory} names an unknown fit method {method!r}")
    getattr(learner, method)(**args, start_epoch=start)
