"""Every output path of a command, checked before any work: no run destroys a file it was not asked to write.

:func:`check_outputs` is called by each command that writes (``train --save/--json/--plot/--checkpoint``,
``cv --json``, ``bench --json/--plot``) before it reads any data, and refuses with one line:

* an output that is the same file as an input (``--save`` naming ``--ratings``) or as another output
  (``--save x --json x``), compared after resolving symbolic links and hard links;
* a path that is a folder (for a file output), a file (for a folder output), a device node, a named
  pipe (FIFO) or a socket: replacing those by a regular file would break them, and writing into them
  is not saving;
* a symbolic link that does not end at a regular file (or at a folder, for a folder output); one
  that does is followed, the target is written and the link kept, and a note says so;
* a read-only file (no write bit: someone protects it), and a folder that cannot be written or
  created (its nearest existing ancestor is a file, or not writable).

The writes themselves go through :func:`mfscratch.io.atomic_write` (a temporary file, fsync, rename),
so a failing or interrupted write leaves the old file as it was.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import OutputError

__all__ = ["Output", "check_outputs", "check_target", "dataset_inputs"]


@dataclass(frozen=True)
class Output:
    """One output of a command: its option (``"--save"``), its path, and for a folder the files written in it."""

    flag: str
    path: str | os.PathLike
    folder: bool = False
    files: tuple[str, ...] = ()

    def targets(self) -> list[Path]:
        """The files this output writes (the path itself, or the folder's files)."""
        base = Path(self.path)
        return [base / name for name in self.files] if self.folder else [base]


def _kind(mode: int) -> str | None:
    """What a non-regular file is, in words (``None`` for a regular file or a folder)."""
    for test, name in (
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return None


def _writable_folder(flag: str, path: Path) -> None:
    """The folder that will hold ``path`` exists and is writable, or can be created."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{flag} {path}: {parent} is a file, so the path cannot be created; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {path}: the folder {parent} is not writable; choose another path")


def _check_one(flag: str, path: Path, folder: bool) -> str | None:
    """Refuse ``path`` unless it may be written; returns a note when it is a symbolic link that is followed."""
    note = None
    if path.is_symlink():
        target = Path(os.path.realpath(path))
        want = "a folder" if folder else "a regular file"
        if not target.exists():
            raise OutputError(
                f"{flag} {path} is a symbolic link to {target}, which does not exist; it is followed only "
                f"when it ends at {want}: remove the link or give another path"
            )
        ok = target.is_dir() if folder else stat.S_ISREG(target.stat().st_mode)
        if not ok:
            raise OutputError(f"{flag} {path} is a symbolic link to {target}, which is not {want}; choose another path")
        note = f"{flag} {path} is a symbolic link: writing its target {target}"
    if path.exists():
        mode = path.stat().st_mode
        kind = _kind(mode)
        if kind is not None:
            raise OutputError(f"{flag} {path} is {kind}, not a file; give the path of a regular file")
        if folder and not stat.S_ISDIR(mode):
            raise OutputError(f"{flag} {path} is a file, but expected a folder (it is created if missing)")
        if not folder and stat.S_ISDIR(mode):
            raise OutputError(f"{flag} {path} is a folder; give a file path, not a folder")
        if not folder and not mode & 0o222:
            raise OutputError(
                f"{flag} {path} is read-only (mode {stat.S_IMODE(mode):04o}); make it writable or choose another path"
            )
        _writable_folder(flag, Path(os.path.realpath(path)) / "x" if folder else Path(os.path.realpath(path)))
    else:
        _writable_folder(flag, path)
    return note


def check_target(path) -> Path:
    """The file a write of ``path`` replaces: ``path`` itself or, for a symbolic link that ends at a
    regular file, its target. Anything else that exists there (a folder, a device node, a FIFO, a
    socket, a dangling link) is refused with an :class:`OutputError`: :func:`mfscratch.io.atomic_write`
    calls this before every write, so no API call replaces ``/dev/null`` by a regular file either."""
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    if path.is_symlink() and not target.exists():
        raise OutputError(f"cannot write {path}: it is a symbolic link to {target}, which does not exist")
    if target.exists():
        mode = target.stat().st_mode
        kind = "a folder" if stat.S_ISDIR(mode) else _kind(mode)
        if kind is not None:
            raise OutputError(f"cannot write {path}: it is {kind}, not a regular file; give a file path")
    return target


def _same(a: Path, b: Path) -> bool:
    """Whether two paths name one file: equal after resolving links, or the same inode (a hard link)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(outputs, inputs=()) -> list[str]:
    """Check every output before any work (module docstring); returns the notes to print (followed links).

    ``outputs``: :class:`Output` objects (``None`` paths are skipped); ``inputs``: ``(flag, path)``
    pairs of the files the command reads (``None`` paths skipped).
    """
    for out in outputs:
        if out.path is not None and not str(out.path).strip():
            raise OutputError(f"{out.flag} needs a path, got an empty one")
    outputs = [o for o in outputs if o.path is not None]
    inputs = [(flag, Path(p)) for flag, p in inputs if p not in (None, "")]
    notes = []
    for out in outputs:
        note = _check_one(out.flag, Path(out.path), out.folder)
        notes += [note] if note else []
        for target in out.targets() if out.folder else []:
            note = _check_one(f"{out.flag} {out.path}:", target, False) if os.path.lexists(target) else None
            notes += [note] if note else []
    written: list[tuple[str, Path]] = []
    for out in outputs:
        for target in out.targets():
            for flag, path in inputs:
                if _same(target, path):
                    raise OutputError(
                        f"{out.flag} {out.path} would overwrite {flag} {path} (the same file); choose another path"
                    )
            for flag, other in written:
                if _same(target, other):
                    raise OutputError(
                        f"{flag} and {out.flag} {out.path} both write the same file {other}; give them different paths"
                    )
            written.append((out.flag, target))
        if not out.folder:
            for other in outputs:
                if other.folder and _same(Path(out.path), Path(other.path)):
                    raise OutputError(f"{out.flag} {out.path} is the {other.flag} folder; give another path")
    return notes


def dataset_inputs(folder) -> list[tuple[str, Path]]:
    """The files of a dataset folder (``--data``), as inputs that no output may overwrite."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [("--data", p) for p in sorted(folder.iterdir()) if p.is_file()]
