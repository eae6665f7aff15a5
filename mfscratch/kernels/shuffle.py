"""NumPy's ``Generator.shuffle`` of a 1-D array, compiled, with each swap's far element prefetched.

``shuffle(rng, values)`` leaves ``values`` in the order ``rng.shuffle(values)`` leaves it, bit for bit,
and ``rng`` in the same state: it draws from ``rng``'s own bit generator through the C functions NumPy
exposes for that (``bit_generator.ctypes``), in the order NumPy draws. NumPy's shuffle is the
Fisher-Yates walk ``for i = n-1 .. 1: j = random_interval(i); swap(values[i], values[j])``, where
``random_interval(i)`` takes the low bits of a 32-bit draw (64-bit when ``i`` needs more) under the
smallest mask covering ``i`` and draws again while the value exceeds ``i``. On an array larger than
the caches every swap waits for memory at a random ``j``. The draws do not depend on the array, so
here they run :data:`AHEAD` swaps ahead of the swaps, and each ``values[j]`` is prefetched when its
``j`` is drawn: the split's shuffle of 25M rows takes about a third of NumPy's time (docs/speed.md).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit
from numba import types as nbtypes
from numba.extending import intrinsic

from .cpu._llvm import prefetch

__all__ = ["AHEAD", "shuffle"]

#: How many swaps ahead the draws (and the prefetches of their elements) run.
AHEAD = 32


def _draw_intrinsic(bits: int):
    """An intrinsic ``draw(function, state) -> uint{bits}`` calling the C function at address ``function``
    (NumPy's ``next_uint32``/``next_uint64``) on the bit generator state at address ``state``."""

    def typer(typingctx, function, state):
        result = nbtypes.uint32 if bits == 32 else nbtypes.uint64

        def codegen(context, builder, signature, args):
            byte_ptr = ir.IntType(8).as_pointer()
            fn_type = ir.FunctionType(ir.IntType(bits), [byte_ptr])
            fn = builder.inttoptr(args[0], fn_type.as_pointer())
            return builder.call(fn, [builder.inttoptr(args[1], byte_ptr)])

        return result(nbtypes.uint64, nbtypes.uint64), codegen

    typer.__name__ = typer.__qualname__ = f"_draw_uint{bits}"
    return intrinsic(typer)


_draw_uint32 = _draw_intrinsic(32)
_draw_uint64 = _draw_intrinsic(64)


@njit(cache=True, inline="always")
def _random_interval(high, next32, next64, state):
    """NumPy's ``random_interval(high)``: a uniform integer in ``[0, high]`` by masked rejection."""
    if high == 0:
        return np.uint64(0)
    mask = np.uint64(high)
    for shift in (1, 2, 4, 8, 16, 32):
        mask |= mask >> np.uint64(shift)
    if high <= 0xFFFFFFFF:
        while True:
            value = np.uint64(_draw_uint32(next32, state)) & mask
            if value <= high:
                return value
    while True:
        value = _draw_uint64(next64, state) & mask
        if value <= high:
            return value


@njit(cache=True)
def _shuffle(values, next32, next64, state):
    n = values.shape[0]
    if n < 2:
        return
    steps = n - 1  # step t swaps values[n - 1 - t] with a draw in [0, n - 1 - t]
    ahead = np.empty(AHEAD, dtype=np.uint64)
    for t in range(min(AHEAD, steps)):
        j = _random_interval(np.uint64(n - 1 - t), next32, next64, state)
        ahead[t] = j
        prefetch(values, j)
    for t in range(steps):
        j = ahead[t % AHEAD]
        if t + AHEAD < steps:
            later = _random_interval(np.uint64(n - 1 - t - AHEAD), next32, next64, state)
            ahead[t % AHEAD] = later
            prefetch(values, later)
        i = np.uint64(n - 1 - t)
        held = values[i]
        values[i] = values[j]
        values[j] = held


def shuffle(rng: np.random.Generator, values: np.ndarray) -> None:
    """``rng.shuffle(values)`` for a contiguous 1-D array: the same order and the same state of ``rng``
    after, bit for bit (the module docstring); falls back to ``rng.shuffle`` for anything else."""
    bit_generator = rng.bit_generator
    if values.ndim != 1 or not values.flags.c_contiguous or not values.flags.writeable or values.dtype.hasobject:
        rng.shuffle(values)
        return
    interface = bit_generator.ctypes
    next32, next64 = _address(interface.next_uint32), _address(interface.next_uint64)
    with bit_generator.lock:
        _shuffle(values, np.uint64(next32), np.uint64(next64), np.uint64(interface.state_address))


def _address(function) -> int:
    """The address of a ctypes function pointer."""
    import ctypes

    return ctypes.cast(function, ctypes.c_void_p).value or 0
