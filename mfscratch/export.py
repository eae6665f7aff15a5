"""Saving and loading learners, fastai's way: ``learn.export`` / :func:`load_learner`, ``learn.save`` / ``learn.load``.

* ``learn.export(path)`` writes what using the model needs, and no training data: the four tables,
  the vocabularies, the items each user rated in training (so recommendations skip them), the
  training ratings per item (popularity floors) and the learner's settings (optimiser, weight
  decay, mode, batch size, backend, column names). It is the model file of ``mfscratch train
  --save`` (``io.py``'s ``.npz``: plain arrays, no pickles, written atomically), and
  :func:`load_learner` reads either back into a :class:`~mfscratch.learner.Learner` that
  recommends, finds similar items and predicts without the data; given the ratings again
  (``load_learner(path, dls=...)``, the same users and items), it continues training.
* ``learn.save(name)`` writes the full training state to ``learn.path / learn.model_dir /
  name.npz``: the weights, the optimiser's moments and step count, and the rest of what a
  checkpoint holds (``checkpoint.py``'s format), so that ``learn.load(name)`` on a learner built
  over the same users and items continues a fit where it stood, as fastai's ``save``/``load`` do
  with the optimiser state.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from . import checkpoint
from .errors import ConfigError, ModelFileError
from .io import load_model, save_model

__all__ = ["export", "load_learner", "save", "load", "vocab_digest"]

_SETTINGS_KEY = "learner_settings"


def vocab_digest(dls) -> str:
    """SHA-256 of the user and item vocabularies: the same ids behind the same codes, or not."""
    h = hashlib.sha256()
    for name in (dls.user_name, dls.item_name):
        h.update(json.dumps([str(v) for v in dls.classes[name]]).encode())
    return h.hexdigest()


def _settings(learn) -> dict:
    d = learn.dls
    return {
        "optimizer": dataclasses.asdict(learn.opt),
        "lr": learn.lr,
        "wd": learn.wd,
        "sparse": learn.sparse,
        "backend": learn.backend_name,
        "bs": d.bs,
        "rating_name": d.rating_name,
    }


def export(learn, fname="export.npz"):
    """``learn.export``: the model, vocabularies, training pairs and settings at ``learn.path / fname``."""
    from .metrics import SeenItems

    learn.backend.sync()
    d = learn.dls
    seen = learn.trained().seen
    if seen is None:  # a learner loaded from a file without its pairs: nothing better to write
        seen = SeenItems.from_loaders(d)
    extra = {**seen.arrays(), _SETTINGS_KEY: np.array(json.dumps(_settings(learn), sort_keys=True))}
    return save_model(Path(learn.path) / fname, learn.model, d.classes, d.user_name, d.item_name, extra=extra)


def _empty_loaders(classes: dict, user_name: str, item_name: str, rating_name: str, bs: int):
    from .data import CollabDataLoaders

    empty = np.zeros(0, dtype=np.int64)
    codes = np.zeros(0, dtype=np.int32)
    return CollabDataLoaders(
        codes, codes, np.zeros(0, dtype=np.float32), empty, empty, classes, user_name, item_name, rating_name, bs
    )


def load_learner(path, dls=None, backend: str | None = None, log=print):
    """fastai's ``load_learner``: a :class:`~mfscratch.learner.Learner` from a file of ``learn.export``
    or ``mfscratch train --save``.

    Without ``dls`` it holds no ratings: it predicts, recommends (skipping each user's training
    items) and finds similar items. With ``dls`` (loaders over the same users and items, e.g. the
    same ratings read again) it can also continue training. ``backend`` overrides the saved one.
    """
    from .analysis import Trained
    from .learner import Learner
    from .metrics import SeenItems
    from .optim import SGD, Adam

    model, classes, meta = load_model(path)
    if not classes:
        raise ModelFileError(f"{path} carries no vocabularies, so its users and items cannot be named; export it again")
    user_name, item_name = meta["user_name"], meta["item_name"]
    settings = json.loads(str(meta[_SETTINGS_KEY])) if _SETTINGS_KEY in meta else {}
    opt_fields = dict(settings.get("optimizer", {}))
    opt_class = SGD if opt_fields.get("name") == "sgd" else Adam
    opt = opt_class(
        **{f.name: opt_fields[f.name] for f in dataclasses.fields(opt_class) if f.init and f.name in opt_fields}
    )
    if dls is None:
        bs = int(settings.get("bs", 64))
        dls = _empty_loaders(classes, user_name, item_name, settings.get("rating_name", "rating"), bs)
    elif [list(dls.classes.get(user_name, [])), list(dls.classes.get(item_name, []))] != [
        list(classes[user_name]),
        list(classes[item_name]),
    ]:
        raise ConfigError(
            f"the loaders' users and items differ from those of {path} (columns {user_name!r}, {item_name!r}); "
            "build them from the same ratings the model was trained on"
        )
    chosen = backend or settings.get("backend", "cpu")
    if backend is None and chosen != "cpu":
        from .backends import available_backends

        if chosen not in available_backends():
            raise ConfigError(
                f"{path} was trained on the {chosen} backend, which cannot run here; "
                "load it with load_learner(path, backend='cpu')"
            )
    learn = Learner(
        dls,
        model,
        opt_func=opt,
        lr=settings.get("lr", 1e-3),
        wd=settings.get("wd"),
        sparse=settings.get("sparse", False),
        backend=chosen,
        log=log,
    )
    if dls.n_train == 0:  # the file's training pairs stand in for the absent data
        learn._trained = Trained(model, classes[user_name], classes[item_name], SeenItems.from_meta(meta))
    return learn


def _state_path(learn, name) -> Path:
    name = str(name)
    return Path(learn.path) / learn.model_dir / (name if name.endswith(".npz") else f"{name}.npz")


def save(learn, name, with_opt: bool = True) -> Path:
    """``learn.save(name)``: the weights and (``with_opt``) the optimiser state at ``path/model_dir/name.npz``."""
    epoch = len(learn.recorder.values) - 1
    extra = {"vocab_sha256": np.array(vocab_digest(learn.dls)), "with_opt": np.array(bool(with_opt))}
    return checkpoint.write_state(_state_path(learn, name), learn, epoch, extra)


def load(learn, name, with_opt: bool = True):
    """``learn.load(name)``: the weights (and optimiser state) saved by ``learn.save(name)``; returns the learner."""
    path = _state_path(learn, name)
    if not path.is_file():
        raise ModelFileError(f"{path} does not exist; save one with learn.save({str(name)!r})")
    state = checkpoint.read_state(path, "save it again with learn.save(name)")
    theirs, m = state["settings"], learn.model
    mine = {"n_users": m.n_users, "n_items": m.n_items, "n_factors": m.n_factors, "dtype": str(m.dtype)}
    for key, value in mine.items():
        if theirs.get(key) != value:
            raise ConfigError(
                f"{path} holds a model with {key}={theirs.get(key)}, this learner has {key}={value}; "
                "load it into a learner built the same way"
            )
    digest = state["extra"].get("vocab_sha256")
    if digest is not None and str(digest) != vocab_digest(learn.dls):
        raise ConfigError(
            f"{path} was saved by a learner with other users or items behind the same codes; "
            "load it into a learner built from the same ratings"
        )
    m.params[...] = state["params"]
    saved_opt = bool(state["extra"].get("with_opt", True))
    if with_opt and saved_opt:
        learn.opt_state.exp_avg[...] = state["exp_avg"]
        learn.opt_state.exp_avg_sq[...] = state["exp_avg_sq"]
        learn.opt_state.step = state["step"]
    return learn
