"""What mfscratch tells its user besides errors: warnings that point at the user's own line, and a
line saying that Numba is compiling the kernels (the one long pause of a first run).

Warnings. :func:`warn` issues a warning attributed to the first frame outside the ``mfscratch``
package, so ``warnings`` shows the line of the user's script or notebook that led to it (the
``from_df`` call, the ``learn.predict`` call), never a line inside the library, however deep
the call chain. The command line prints each warning once a run, and none under ``--quiet``
(see ``mfscratch.cli``).
"""

from __future__ import annotations

import os
import sys
import warnings
from types import FrameType

__all__ = ["warn"]

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
