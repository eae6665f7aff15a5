"""How the CPU kernels are compiled: the options of the hot kernels and the serial/parallel twins.

Kept out of the reader's way: ``core.py`` and ``updates.py`` are the maths, this is plumbing.
"""

from __future__ import annotations

import types
from typing import Any

#: Options for the hot kernels. ``error_model="numpy"`` makes float division follow IEEE (x/0 -> inf)
#: instead of raising ZeroDivisionError: without it every division carries a branch and LLVM will not
#: vectorise the loop; it changes no finite result. No fastmath in the updates: they round exactly as
#: the NumPy reference (``core.dot`` says why it alone may reassociate). ``nogil``: the learner's
#: progress bar reads the epoch's step counter from another thread while an epoch runs.
HOT: dict[str, Any] = dict(cache=True, error_model="numpy", nogil=True)


def twin(fn, suffix: str = "_parallel", **globals_):
    """A copy of ``fn`` under another name (and with some global names rebound), for a second compilation.

    Numba's on-disk cache keys a function by its qualified name and bytecode, not by the compile
    flags, so the serial and the parallel build of one body must carry different names or the
    second would load the first from the cache. ``globals_`` rebinds the kernels the body calls
    (the parallel dense epoch calls the inlined ``prange`` updates). A copied globals dict, rather
    than a closure, keeps the twin cacheable across processes (a closure over a dispatcher hashes
    differently in every process, so it would recompile every time).
    """
    env = fn.__globals__ if not globals_ else {**fn.__globals__, **globals_}
    copy = types.FunctionType(fn.__code__, env, fn.__name__ + suffix, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = fn.__qualname__ + suffix
    copy.__doc__ = fn.__doc__
    return copy
