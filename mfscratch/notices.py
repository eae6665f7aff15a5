"""What mfscratch tells its user besides errors: warnings that point at the user's own line, and a
line saying that Numba is compiling the kernels (the one long pause of a first run).

Compiling. The kernels are compiled on first use and kept in Numba's on-disk cache
(``cache=True``), so only a first run (or the first after an upgrade) waits for them.
:func:`compile_notice` says so once, at the moment Numba starts compiling, and says nothing
when everything comes from the cache. How it decides: it listens to Numba's ``numba:compile``
event, which Numba fires only after it has looked a kernel up in its cache and not found it (a
cache hit loads the kernel without the event), so the line appears exactly when compiling
happens, at no cost otherwise.

Warnings. :func:`warn` issues a warning attributed to the first frame outside the ``mfscratch``
package, so ``warnings`` shows the line of the user's script or notebook that led to it (the
``from_df`` call, the ``learn.predict`` call), never a line inside the library, however deep
the call chain. The command line prints each warning once a run, and none under ``--quiet``
(see ``mfscratch.cli``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from types import FrameType

__all__ = ["warn", "compile_notice", "COMPILE_LINE"]

#: The line shown when Numba compiles (measured on a 2-core x86-64 machine: 9-25 s for a training
#: command's kernels, a few seconds for the top-k kernel of ``recommend``).
COMPILE_LINE = "compiling kernels (first run only: Numba caches them; about 10-30 s)"

_compile_said = False
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _inside_package(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PACKAGE_DIR)


def warn(message: str, category: type[Warning]) -> None:
    """``warnings.warn(message, category)`` attributed to the user's line (the first frame outside mfscratch)."""
    # Frame 1 is the library function that called warn(): stacklevel 2 of the warnings.warn below.
    frame: FrameType | None = sys._getframe(1)
    level = 2
    while frame is not None and _inside_package(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)


@contextlib.contextmanager
def compile_notice(say) -> Iterator[None]:
    """Call ``say(COMPILE_LINE)`` once if Numba compiles anything inside the block (``say=None``: silent)."""
    if say is None:
        yield
        return
    from numba.core import event

    class Notice(event.Listener):
        def on_start(self, ev) -> None:
            global _compile_said
            if not _compile_said:  # once a process, however many blocks are listening
                _compile_said = True
                say(COMPILE_LINE)

        def on_end(self, ev) -> None:
            pass

    with event.install_listener("numba:compile", Notice()):
        yield
