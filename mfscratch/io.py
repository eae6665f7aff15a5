"""Saving and loading trained models: a versioned ``.npz`` with no pickles, written atomically.

File format (``FORMAT_VERSION`` 1), all plain arrays:

* ``format``: the string ``"mfscratch-model"``; ``version``: int;
* ``u_weight``, ``i_weight``, ``u_bias``, ``i_bias``: the four tables;
* ``y_range``: ``[lo, hi]`` (or empty for no range);
* ``user_vocab``, ``item_vocab``: the vocabularies without the leading ``#na#``
  (unicode or int64 arrays), ``vocab_has_na``: whether ``#na#`` heads them;
  ``user_name``, ``item_name``: the column names;
* ``item_counts``: training ratings per item code (for popularity floors), optional.
* ``seen_indptr``, ``seen_indices``: the items each user rated in training as CSR rows (user ``u``'s
  are ``seen_indices[seen_indptr[u]:seen_indptr[u + 1]]``), so recommendations skip them; optional
  (``metrics.SeenItems`` writes and reads these three).
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .data import Vocab
from .errors import ModelFileError
from .model import EmbeddingDotBias

__all__ = ["save_model", "load_model", "atomic_write", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_MAGIC = "mfscratch-model"


def atomic_write(path, write) -> Path:
    """Call ``write(file_object)`` on a temporary file beside ``path``, fsync it, and rename it into place.

    An interrupted run leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _vocab_array(vocab) -> np.ndarray:
    values = list(vocab)[1:] if len(vocab) and vocab[0] == "#na#" else list(vocab)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.int64)
    return np.asarray([str(v) for v in values], dtype=np.str_)


def save_model(path, model: EmbeddingDotBias, classes: dict | None = None, user_name: str = "user",
               item_name: str = "item", extra: dict | None = None) -> Path:
    """Write the model (and the vocabularies, when given) to ``path`` atomically."""
    arrays = {"format": np.array(_MAGIC), "version": np.array(FORMAT_VERSION, dtype=np.int64)}
    arrays.update({name: np.asarray(t) for name, t in model.tables().items()})
    arrays["y_range"] = np.asarray(model.y_range if model.y_range is not None else [], dtype=np.float64)
    arrays["user_name"], arrays["item_name"] = np.array(str(user_name)), np.array(str(item_name))
    if classes is not None:
        arrays["user_vocab"] = _vocab_array(classes[user_name])
        arrays["item_vocab"] = _vocab_array(classes[item_name])
        arrays["vocab_has_na"] = np.array(len(classes[user_name]) > 0 and classes[user_name][0] == "#na#")
    for k, v in (extra or {}).items():
        arrays[k] = np.asarray(v)
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def load_model(path):
    """Read a file written by :func:`save_model`: returns ``(model, classes, meta)``.

    ``classes`` is ``{user_name: Vocab, item_name: Vocab}`` (empty when none was saved);
    ``meta`` holds any extra arrays. Never unpickles; checks the format, version and shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist; train one with 'mfscratch train --save {path}'")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ModelFileError(f"{path} is not a readable mfscratch model ({type(e).__name__}: {e}); "
                             "it may be truncated: train and save it again") from None
    if str(data.get("format", "")) != _MAGIC:
        raise ModelFileError(f"{path} is not an mfscratch model file (no 'format' marker); "
                             "give a file written by 'mfscratch train --save'")
    version = int(data.get("version", -1))
    if version != FORMAT_VERSION:
        raise ModelFileError(f"{path} has format version {version}, this mfscratch reads version "
                             f"{FORMAT_VERSION}; retrain or use a matching mfscratch")
    try:
        uw, iw, ub, ib = (data[k] for k in ("u_weight", "i_weight", "u_bias", "i_bias"))
    except KeyError as e:
        raise ModelFileError(f"{path} lacks the table {e.args[0]!r}; it is damaged: train and save it again") from None
    n_users, k = uw.shape if uw.ndim == 2 else (-1, -1)
    n_items = iw.shape[0] if iw.ndim == 2 else -1
    if not (uw.ndim == 2 and iw.shape == (n_items, k) and ub.shape == (n_users, 1) and ib.shape == (n_items, 1)):
        raise ModelFileError(f"{path} has inconsistent table shapes {uw.shape}, {iw.shape}, {ub.shape}, "
                             f"{ib.shape}; it is damaged: train and save it again")
    yr = data["y_range"]
    y_range = tuple(float(v) for v in yr) if yr.size == 2 else None
    params = np.concatenate([uw.ravel(), iw.ravel(), ub.ravel(), ib.ravel()]).astype(uw.dtype)
    model = EmbeddingDotBias(k, n_users, n_items, y_range=y_range, params=params)
    user_name, item_name = str(data.get("user_name", "user")), str(data.get("item_name", "item"))
    classes = {}
    if "user_vocab" in data and "item_vocab" in data:
        head = ["#na#"] if bool(data.get("vocab_has_na", True)) else []
        uv, iv = Vocab(head + data["user_vocab"].tolist()), Vocab(head + data["item_vocab"].tolist())
        if len(uv) != n_users or len(iv) != n_items:
            raise ModelFileError(f"{path}: vocabularies ({len(uv)} users, {len(iv)} items) do not match the "
                                 f"tables ({n_users}, {n_items}); it is damaged: train and save it again")
        classes = {user_name: uv, item_name: iv}
    known = {"format", "version", "u_weight", "i_weight", "u_bias", "i_bias", "y_range", "user_name",
             "item_name", "user_vocab", "item_vocab", "vocab_has_na"}
    meta = {k: v for k, v in data.items() if k not in known}
    meta.update(user_name=user_name, item_name=item_name)
    return model, classes, meta
