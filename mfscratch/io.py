"""Saving and loading trained models: a versioned ``.npz`` with no pickles, written atomically.

File format (``FORMAT_VERSION`` 1), all plain arrays:

* ``format``: the string ``"mfscratch-model"``; ``version``: int;
* ``u_weight``, ``i_weight``, ``u_bias``, ``i_bias``: the four tables;
* ``y_range``: ``[lo, hi]`` (or empty for no range);
* ``user_vocab``, ``item_vocab``: the vocabularies without the leading ``#na#``
  (unicode, int64, uint64, float64 or bool arrays; integers beyond 64 bits are stored as decimal
  text with ``user_vocab_kind``/``item_vocab_kind`` = ``"bigint"``), ``vocab_has_na``: whether
  ``#na#`` heads them;
  ``user_name``, ``item_name``: the column names;
* ``item_counts``: training ratings per item code (for popularity floors), optional.
* ``seen_indptr``, ``seen_indices``: the items each user rated in training as CSR rows (user ``u``'s
  are ``seen_indices[seen_indptr[u]:seen_indptr[u + 1]]``, increasing), so recommendations skip them;
  optional (``metrics.SeenItems`` writes and reads these three; ``load_model`` refuses rows that do
  not fit the tables or are out of order).
"""

from __future__ import annotations

import errno
import glob
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .data import Vocab
from .errors import ConfigError, ModelFileError, OutputError
from .model import EmbeddingDotBias, aligned_empty

__all__ = ["save_model", "load_model", "atomic_write", "write_json", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_MAGIC = "mfscratch-model"


#: The temporary files of :func:`atomic_write`: ``.NAME.mfscratch-PID-RANDOM.tmp`` beside the target.
TEMP_MARK = ".mfscratch-"

_FIXES = {
    errno.ENOSPC: ("no space left on the device", "free some space or write elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write elsewhere"),
    errno.EROFS: ("the file system is read-only", "choose a writable folder"),
    errno.EACCES: ("permission denied", "choose a writable folder"),
    errno.EPERM: ("operation not permitted", "choose a writable folder"),
}


def _write_error(path: Path, error: OSError, existed: bool) -> OutputError:
    reason, fix = _FIXES.get(error.errno or 0, (error.strerror or str(error), "choose another path"))
    code = errno.errorcode.get(error.errno or 0, "")
    kept = "the existing file is unchanged" if existed else "nothing was written"
    return OutputError(f"cannot write {path}: {reason}{f' ({code})' if code else ''}; {kept}: {fix}")


def _remove_stale_temps(path: Path) -> None:
    """Delete this target's temporary files left by a process that no longer runs (killed mid-write)."""
    if os.name != "posix":  # os.kill(pid, 0) tests a pid only on POSIX (on Windows it would end the process)
        return
    try:
        stale = list(path.parent.glob(f".{glob.escape(path.name)}{TEMP_MARK}*.tmp"))
    except OSError:
        return
    for tmp in stale:
        pid = tmp.name[len(path.name) + 1 + len(TEMP_MARK) :].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (PermissionError, OverflowError):  # alive under another user, or no such pid at all
            continue


def atomic_write(path, write) -> Path:
    """Call ``write(file_object)`` on a temporary file beside ``path``, fsync it, and rename it into place.

    An interrupted run leaves either the old file or the new one, never half of one, and no temporary
    file (one left by a process killed with SIGKILL is deleted by the next write to the same path).
    A symbolic link is followed: its target is replaced and the link kept. The new file keeps the
    permissions of the one it replaces (``0o644`` for a new file, not ``mkstemp``'s ``0o600``), and the
    folder is fsynced after the rename so that the rename itself is durable. An ``OSError`` (full disk,
    quota, read-only file system, permissions) becomes one :class:`OutputError` line.
    """
    from .outputs import check_target

    path = check_target(path)
    existed = path.is_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path)
        mode = path.stat().st_mode & 0o777 if existed else 0o644
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}{os.getpid()}-", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e, existed) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _write_error(path, e, existed) from None
        raise
    _fsync_dir(path.parent)
    return path


def _json_safe(obj):
    """``obj`` with NaN and infinities as ``None`` and NumPy values as Python ones (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def write_json(path, obj) -> Path:
    """Write ``obj`` as strict JSON (``null`` for NaN and infinities, never ``NaN``), atomically.

    Every report of the command line (``train --json``, ``cv --json``, ``bench --json``) goes through it.
    """
    text = json.dumps(_json_safe(obj), indent=2, allow_nan=False)
    return atomic_write(path, lambda f: f.write(text.encode() + b"\n"))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _vocab_array(vocab) -> tuple[np.ndarray, str]:
    """The vocabulary (without ``#na#``) as a plain array, and its kind: ``"bigint"`` or ``"plain"``.

    Integers are kept as int64 (or uint64 when they need it); integers beyond 64 bits are stored as
    decimal text and turned back into ints on loading. Anything else becomes text.
    """
    values = list(vocab)[1:] if len(vocab) and vocab[0] == "#na#" else list(vocab)
    if values and all(isinstance(v, (bool, np.bool_)) for v in values):
        return np.asarray(values, dtype=bool), "plain"
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in values):
        ints = [int(v) for v in values]
        for dtype in (np.int64, np.uint64):
            info = np.iinfo(dtype)
            if all(info.min <= v <= info.max for v in ints):
                return np.asarray(ints, dtype=dtype), "plain"
        return np.asarray([str(v) for v in ints], dtype=np.str_), "bigint"
    if all(isinstance(v, (float, np.floating)) for v in values):
        return np.asarray(values, dtype=np.float64), "plain"
    return np.asarray([str(v) for v in values], dtype=np.str_), "plain"


def _column_names(classes: dict | None, user_name: str | None, item_name: str | None) -> tuple[str, str]:
    """The user and item column names: as given, else the two keys of ``classes`` in order (``dls.classes``
    holds the user's vocabulary first), else ``"user"`` and ``"item"``."""
    keys = list(classes or {})
    if user_name is None and item_name is None and len(keys) == 2:
        return keys[0], keys[1]
    user_name, item_name = user_name or "user", item_name or "item"
    missing = [n for n in (user_name, item_name) if classes is not None and n not in classes]
    if missing:
        raise ConfigError(
            f"classes has the vocabularies {keys}, not {missing}: pass user_name= and item_name= "
            "naming two of them (or save with learn.export(path), which knows them)"
        )
    return user_name, item_name


def save_model(
    path,
    model: EmbeddingDotBias,
    classes: dict | None = None,
    user_name: str | None = None,
    item_name: str | None = None,
    extra: dict | None = None,
) -> Path:
    """Write the model (and the vocabularies, when given) to ``path`` atomically.

    ``user_name``/``item_name`` name the vocabularies in ``classes``; by default the two keys of
    ``dls.classes`` in order. ``learn.export(path)`` writes the same file with the training pairs
    and the learner's settings as well.
    """
    user_name, item_name = _column_names(classes, user_name, item_name)
    arrays = {"format": np.array(_MAGIC), "version": np.array(FORMAT_VERSION, dtype=np.int64)}
    arrays.update({name: np.asarray(t) for name, t in model.tables().items()})
    arrays["y_range"] = np.asarray(model.y_range if model.y_range is not None else [], dtype=np.float64)
    arrays["user_name"], arrays["item_name"] = np.array(str(user_name)), np.array(str(item_name))
    if classes is not None:
        for role, name in (("user", user_name), ("item", item_name)):
            arrays[f"{role}_vocab"], kind = _vocab_array(classes[name])
            if kind != "plain":
                arrays[f"{role}_vocab_kind"] = np.array(kind)
        arrays["vocab_has_na"] = np.array(len(classes[user_name]) > 0 and classes[user_name][0] == "#na#")
    for k, v in (extra or {}).items():
        arrays[k] = np.asarray(v)
    fields: dict[str, Any] = arrays
    return atomic_write(path, lambda f: np.savez(f, **fields))


def _damaged(path, what: str) -> ModelFileError:
    return ModelFileError(
        f"{path} {what}; it is not a usable mfscratch model: train and save it again ('mfscratch train --save PATH')"
    )


def _read_arrays(path: Path) -> dict:
    """Every array of the ``.npz`` at ``path``, read without unpickling anything."""
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist; train one with 'mfscratch train --save {path}'")
    if not path.is_file():
        raise ModelFileError(f"{path} is not a file; give the path of a model saved by 'mfscratch train --save'")
    # np.load falls back to unpickling whatever is neither .npz nor .npy; sniff the header first so
    # that a text file or a pickle gets a message saying what it is.
    with open(path, "rb") as f:
        head = f.read(6)
    if head[:1] == b"\x80":
        raise _damaged(path, "is a Python pickle, which mfscratch never loads (pickles can run code)")
    if not (head.startswith(b"PK") or head.startswith(b"\x93NUMPY")):
        raise _damaged(
            path, f"cannot be read as a .npz archive (it starts with {head!r}); it may be truncated or not a model file"
        )
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - whatever np.load trips on, the file is not ours
        if "pickle" in str(e):
            raise _damaged(
                path, "holds pickled Python objects, which mfscratch never loads (they can run code)"
            ) from None
        raise _damaged(
            path, f"cannot be read as a .npz archive ({type(e).__name__}); it may be truncated or not a model file"
        ) from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise _damaged(path, "is a single .npy array, not an .npz model archive")
    try:
        with z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - a damaged member: bad CRC, short read, bad header, pickle
        if "pickle" in str(e):
            raise _damaged(
                path, "holds pickled Python objects, which mfscratch never loads (they can run code)"
            ) from None
        raise _damaged(path, f"is damaged or truncated ({type(e).__name__}: {e})") from None


def _scalar(data: dict, key: str, kind: type, default):
    """A 0-d array's value as ``kind``, or ``None`` when it is not one."""
    if key not in data:
        return default
    value = data[key]
    if value.shape != () or (kind is int and value.dtype.kind not in "iu") or (kind is str and value.dtype.kind != "U"):
        return None
    return kind(value.item()) if kind is not bool else bool(value.item())


def _vocab_from(data: dict, role: str, head: list) -> Vocab:
    values = data[f"{role}_vocab"]
    if values.ndim != 1 or values.dtype.kind not in "biufU":
        raise ModelFileError(f"bad {role} vocabulary (shape {values.shape}, dtype {values.dtype})")
    values = values.tolist()
    if _scalar(data, f"{role}_vocab_kind", str, "plain") == "bigint":
        values = [int(v) for v in values]
    return Vocab(head + values)


def load_model(path):
    """Read a file written by :func:`save_model`: returns ``(model, classes, meta)``.

    ``classes`` is ``{user_name: Vocab, item_name: Vocab}`` (empty when none was saved);
    ``meta`` holds any extra arrays. Never unpickles (``allow_pickle=False``); checks the format
    marker, the version, the tables' shapes, dtypes and finiteness, the range and the vocabularies,
    and raises :class:`ModelFileError` (one line) on anything that does not match.
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ModelFileError(f"a model path must be a file path, got {path!r}")
    path = Path(path)
    data = _read_arrays(path)
    if _scalar(data, "format", str, None) != _MAGIC:
        raise ModelFileError(
            f"{path} is not an mfscratch model file (no 'format' marker); "
            "give a file written by 'mfscratch train --save'"
        )
    version = _scalar(data, "version", int, None)
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has format version {version}, this mfscratch reads version "
            f"{FORMAT_VERSION}; retrain or use a matching mfscratch"
        )
    missing = [k for k in ("u_weight", "i_weight", "u_bias", "i_bias", "y_range") if k not in data]
    if missing:
        raise _damaged(path, f"lacks the array(s) {missing}")
    uw, iw, ub, ib = (data[k] for k in ("u_weight", "i_weight", "u_bias", "i_bias"))
    if any(t.dtype.kind != "f" for t in (uw, iw, ub, ib)):
        raise _damaged(path, f"has tables of dtypes {uw.dtype}, {iw.dtype}, {ub.dtype}, {ib.dtype}, not floats")
    n_users, k = uw.shape if uw.ndim == 2 else (-1, -1)
    n_items = iw.shape[0] if iw.ndim == 2 else -1
    if not (
        min(n_users, n_items, k) >= 1
        and iw.shape == (n_items, k)
        and ub.shape == (n_users, 1)
        and ib.shape == (n_items, 1)
    ):
        raise _damaged(path, f"has inconsistent table shapes {uw.shape}, {iw.shape}, {ub.shape}, {ib.shape}")
    if not all(np.isfinite(t).all() for t in (uw, iw, ub, ib)):
        raise _damaged(path, "holds NaN or infinite weights")
    yr = data["y_range"]
    if not (
        yr.shape in ((0,), (2,))
        and yr.dtype.kind in "iuf"
        and np.isfinite(yr).all()
        and (yr.size == 0 or yr[0] < yr[1])
    ):
        raise _damaged(path, f"has a bad y_range {yr.tolist()!r} (want [] or [lo, hi] with lo < hi)")
    y_range = tuple(float(v) for v in yr) if yr.size == 2 else None
    tables = [uw.ravel(), iw.ravel(), ub.ravel(), ib.ravel()]
    params = aligned_empty(sum(t.size for t in tables), uw.dtype)
    np.concatenate(tables, out=params, casting="same_kind")
    model = EmbeddingDotBias(k, n_users, n_items, y_range=y_range, params=params)
    user_name, item_name = _scalar(data, "user_name", str, "user"), _scalar(data, "item_name", str, "item")
    if user_name is None or item_name is None:
        raise _damaged(path, "has bad column names")
    classes = {}
    if "user_vocab" in data and "item_vocab" in data:
        head = ["#na#"] if _scalar(data, "vocab_has_na", bool, True) else []
        try:
            uv, iv = _vocab_from(data, "user", head), _vocab_from(data, "item", head)
        except ModelFileError as e:
            raise _damaged(path, str(e)) from None
        if len(uv) != n_users or len(iv) != n_items:
            raise _damaged(
                path,
                f"has vocabularies ({len(uv)} users, {len(iv)} items) that do not match the "
                f"tables ({n_users}, {n_items})",
            )
        classes = {user_name: uv, item_name: iv}
    known = {
        "format",
        "version",
        "u_weight",
        "i_weight",
        "u_bias",
        "i_bias",
        "y_range",
        "user_name",
        "item_name",
        "user_vocab",
        "item_vocab",
        "vocab_has_na",
        "user_vocab_kind",
        "item_vocab_kind",
    }
    problem = _seen_items_problem(data, n_users, n_items)
    if problem:
        raise _damaged(path, problem)
    meta = {k: v for k, v in data.items() if k not in known}
    meta.update(user_name=user_name, item_name=item_name)
    return model, classes, meta


def _seen_items_problem(data: dict, n_users: int, n_items: int) -> str | None:
    """What is wrong with the file's seen items (``seen_indptr``, ``seen_indices``, ``item_counts``),
    or ``None``: CSR rows of ``n_users`` users, each row's items in ``[0, n_items)`` and strictly
    increasing (the ranking's kernel reads them in order), the counts one a non-negative item."""
    if "item_counts" in data:
        counts = data["item_counts"]
        if counts.ndim != 1 or counts.dtype.kind not in "iu" or len(counts) != n_items or (counts < 0).any():
            return f"has item_counts that are not {n_items} non-negative integers"
    if "seen_indptr" not in data and "seen_indices" not in data:
        return None
    if "seen_indptr" not in data or "seen_indices" not in data:
        return "has one of seen_indptr and seen_indices without the other"
    indptr, indices = data["seen_indptr"], data["seen_indices"]
    if indptr.ndim != 1 or indices.ndim != 1 or indptr.dtype.kind not in "iu" or indices.dtype.kind not in "iu":
        return "has seen items that are not 1-D integer arrays"
    if len(indptr) != n_users + 1 or indptr[0] != 0 or indptr[-1] != len(indices) or (np.diff(indptr) < 0).any():
        return f"has seen-item rows (seen_indptr) that do not fit {n_users} users and {len(indices)} entries"
    if len(indices) and (indices.min() < 0 or indices.max() >= n_items):
        return f"has seen items outside the {n_items} items"
    ascending = indices[1:] > indices[:-1]
    row_starts = indptr[1:-1]
    row_starts = row_starts[(row_starts > 0) & (row_starts < len(indices))]
    ascending[row_starts - 1] = True  # a row may start below where the previous one ended
    if not ascending.all():
        return "has a user's seen items out of order or repeated"
    return None
