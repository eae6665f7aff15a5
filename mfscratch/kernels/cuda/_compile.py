"""How the CUDA kernels are compiled and launched: numba-cuda found or not, block size, grid sizes.

``HAS_CUDA`` is decided once, at import: numba-cuda imports and ``cuda.is_available()`` (Numba's
CUDA simulator, ``NUMBA_ENABLE_CUDASIM=1``, counts as available). Without numba-cuda this module
still imports; the kernels then raise when called.
"""

from __future__ import annotations

import types
from typing import Any

cuda: Any
float64: Any
try:  # numba-cuda is the optional ``cuda`` extra
    from numba import config, cuda, float64

    SIMULATOR = bool(getattr(config, "ENABLE_CUDASIM", False))
    HAS_CUDA = bool(cuda.is_available())
except Exception:  # ImportError, or a broken driver/toolkit install: no CUDA, no crash
    cuda, float64 = None, None
    SIMULATOR = False
    HAS_CUDA = False

__all__ = [
    "cuda",
    "float64",
    "HAS_CUDA",
    "SIMULATOR",
    "THREADS",
    "kernel",
    "device",
    "blocks_for",
    "cooperative_blocks",
    "rebind",
]

#: Threads per block. The block reductions size their shared buffers with it, so it is fixed.
#: The simulator runs every thread as a Python thread: a smaller block keeps its tests fast.
THREADS = 32 if SIMULATOR else 128


class _Unavailable:
    """Stand-in for a kernel when numba-cuda is missing: it exists, documents itself, and refuses to run."""

    def __init__(self, fn):
        self.py_func, self.__name__, self.__doc__ = fn, fn.__name__, fn.__doc__

    def __getitem__(self, launch_config):
        return self

    def __call__(self, *args, **kwargs):
        raise RuntimeError("numba-cuda is not installed: pip install 'mfscratch[cuda]'")


kernel = cuda.jit(cache=True) if cuda is not None else _Unavailable
device = cuda.jit(device=True, cache=True) if cuda is not None else _Unavailable


def blocks_for(n: int, threads: int = THREADS) -> int:
    """Blocks needed to give each of ``n`` items its own thread (at least one block)."""
    return max(1, (int(n) + threads - 1) // threads)


def cooperative_blocks(fn, args, threads: int = THREADS) -> int:
    """The most blocks a cooperative (grid-synchronising) launch of ``fn(*args)`` may use.

    All blocks of a cooperative grid must be resident at once, so this is (blocks per SM) x (SMs).
    The simulator runs cooperative grids of one block only.
    """
    if SIMULATOR:
        return 1
    compiled = fn.compile(tuple(fn.typeof_pyval(a) for a in args))
    return max(1, int(compiled.max_cooperative_grid_blocks(threads)))


def rebind(fn, suffix: str, **globals_):
    """A copy of the Python function ``fn`` named ``fn.__name__ + suffix`` whose global names ``globals_``
    are rebound: one body compiled once per storage format (``per_rating.py``), each copy calling its
    own ``load``/``store``. A copied globals dict rather than a closure keeps each copy cacheable.
    """
    env = {**fn.__globals__, **globals_}
    copy = types.FunctionType(fn.__code__, env, fn.__name__ + suffix, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = fn.__qualname__ + suffix
    copy.__doc__ = fn.__doc__
    return copy
