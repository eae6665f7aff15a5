"""LLVM intrinsics the kernels use: a prefetch hint, a 16-lane dot-product chunk, the per-rating update
of two rows, a fused multiply-add and float64 bit casts (``exp.py``), atomics, and the word loads of
the file reader's fast path.

The first three do not change what is computed: the prefetch is a hint, the chunked dot product sums
in a fixed order (deterministic; it differs from a left-to-right sum by float rounding only), and the
row update rounds as a scalar loop does. Why each exists and what it measured: docs/speed.md
("Sparse per-rating SGD", "Scale", "Round 4").

The atomics (:func:`atomic_load`, :func:`atomic_store`, :func:`atomic_cas`, :func:`atomic_add` on
int64 array elements, sequentially consistent) and the spin-wait helpers (:func:`spin_pause`,
:func:`yield_thread`) are what the per-rating kernel's dynamic block scheduler is built from: Numba's
CPU ``njit`` has no atomics of its own. Sequential consistency also orders the plain loads and stores
around them, so a block's row updates are visible to the thread that sees the block marked done.
"""

from __future__ import annotations

import platform

import numpy as np
from llvmlite import ir
from numba import njit
from numba import types as nbtypes
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "PREFETCH_AHEAD",
    "PREFETCH_MIN_BYTES",
    "DOT_LANES",
    "prefetch",
    "prefetch_row",
    "dot_rows",
    "update_rows",
    "fused_multiply_add",
    "bits_of",
    "float_of",
    "atomic_load",
    "atomic_store",
    "atomic_cas",
    "atomic_add",
    "spin_pause",
    "yield_thread",
    "sleep_thread",
    "CPU_MASK_WORDS",
    "get_thread_cpus",
    "set_thread_cpus",
    "load_word",
    "trailing_zeros",
]

#: How many ratings ahead the sparse and per-rating kernels prefetch table rows (codes: the sparse kernels
#: twice as far, the per-rating kernel four times: its steps are shorter).
PREFETCH_AHEAD = 4
#: Tables (and rating arrays) smaller than this many bytes are not prefetched: they live in cache anyway.
PREFETCH_MIN_BYTES = 1 << 23
#: Lanes of the explicit vector chunk in :func:`dot_rows` (one AVX-512 register of float32).
DOT_LANES = 16


@intrinsic
def prefetch(typingctx, flat, index):
    """Hint the CPU to start loading ``flat[index]``'s cache line (``llvm.prefetch``; no effect on results)."""
    sig = nbtypes.void(flat, index)

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, signature.args[0], array, [args[1]], wraparound=False)
        byte_ptr = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32]), "llvm.prefetch.p0"
        )
        # read (0), high temporal locality (3), data cache (1)
        builder.call(fn, [builder.bitcast(ptr, byte_ptr), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def prefetch_row(flat, start, length):
    """Prefetch every 64-byte line of ``flat[start:start+length]``."""
    per_line = 64 // flat.itemsize
    for off in range(0, length, per_line):
        prefetch(flat, start + off)


def _lane_indices(n, start=0):
    """The constant lane-index vector ``<start, ..., start + n - 1>`` that picks lanes in a shuffle."""
    return ir.Constant(ir.VectorType(ir.IntType(32), n), list(range(start, start + n)))


@intrinsic
def _dot_chunk(typingctx, flat, a, b):
    """``sum(flat[a:a+16] * flat[b:b+16])`` as one vector multiply and a fixed pairwise sum.

    Written in LLVM IR because LLVM's loop vectoriser takes 64 float32 lanes a trip, so for k = 50 or
    64 its vector loop barely runs, and a loop over 16 fixed lanes is not vectorised either (the two
    rows may alias, for all LLVM knows). The sum is lanes 0-7 plus lanes 8-15, then 0-3 plus 4-7, and
    so on: a fixed order, so the result is deterministic.
    """
    sig = flat.dtype(flat, a, b)

    def codegen(context, builder, signature, args):
        flat_type = signature.args[0]
        array = context.make_array(flat_type)(context, builder, args[0])
        vec_type = ir.VectorType(context.get_value_type(flat_type.dtype), DOT_LANES)
        align = flat_type.dtype.bitwidth // 8
        rows = []
        for index in args[1:]:
            ptr = cgutils.get_item_pointer(context, builder, flat_type, array, [index], wraparound=False)
            rows.append(builder.load(builder.bitcast(ptr, vec_type.as_pointer()), align=align))
        vec, n = builder.fmul(rows[0], rows[1]), DOT_LANES
        while n > 1:
            n //= 2
            vec = builder.fadd(
                builder.shuffle_vector(vec, vec, _lane_indices(n)),
                builder.shuffle_vector(vec, vec, _lane_indices(n, n)),
            )
        return builder.extract_element(vec, ir.Constant(ir.IntType(32), 0))

    return sig, codegen


@njit(cache=True, inline="always")
def dot_rows(flat, a, b, k):
    """``flat[a:a+k] . flat[b:b+k]`` summed in ``flat``'s dtype: 16-lane chunks, then the last ``k % 16``.

    The per-rating kernel's dot product (a plain loop at k = 50 compiles to a scalar chain).
    """
    tail = k - k % DOT_LANES
    x = flat.dtype.type(0.0)
    for j in range(0, tail, DOT_LANES):
        x += _dot_chunk(flat, a + j, b + j)
    for j in range(tail, k):  # unsigned indices: no code for negative (wrap-around) indexing
        x += flat[np.uint64(a + j)] * flat[np.uint64(b + j)]
    return x


@intrinsic
def fused_multiply_add(typingctx, a, b, c):
    """``a * b + c`` for float64 values, rounded once (``llvm.fma``: one instruction where the CPU has FMA)."""
    sig = nbtypes.float64(nbtypes.float64, nbtypes.float64, nbtypes.float64)

    def codegen(context, builder, signature, args):
        f64 = ir.DoubleType()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f64, [f64, f64, f64]), "llvm.fma.f64")
        return builder.call(fn, [context.cast(builder, v, t, nbtypes.float64) for v, t in zip(args, signature.args)])

    return sig, codegen


@intrinsic
def bits_of(typingctx, x):
    """The 64 bits of the float64 ``x``, as a uint64."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return nbtypes.uint64(nbtypes.float64), codegen


@intrinsic
def float_of(typingctx, bits):
    """The float64 whose 64 bits are ``bits`` (a uint64)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return nbtypes.float64(nbtypes.uint64), codegen


def _splat(builder, value, lanes):
    """``<value, value, ..., value>``: ``lanes`` copies of a scalar."""
    vec_type = ir.VectorType(value.type, lanes)
    vec = builder.insert_element(ir.Constant(vec_type, None), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))


def _masked_access(builder, vec_type, align):
    """LLVM's ``masked.load`` and ``masked.store`` for ``vec_type`` (lanes outside the mask are not touched)."""
    mask_type = ir.VectorType(ir.IntType(1), vec_type.count)
    name = f"v{vec_type.count}f{vec_type.element.intrinsic_name[1:]}.p0"
    ptr_type, i32 = vec_type.as_pointer(), ir.IntType(32)
    load_type = ir.FunctionType(vec_type, [ptr_type, i32, mask_type, vec_type])
    store_type = ir.FunctionType(ir.VoidType(), [vec_type, ptr_type, i32, mask_type])
    load = cgutils.get_or_insert_function(builder.module, load_type, "llvm.masked.load." + name)
    store = cgutils.get_or_insert_function(builder.module, store_type, "llvm.masked.store." + name)

    def masked_load(ptr, mask):
        return builder.call(load, [ptr, i32(align), mask, ir.Constant(vec_type, None)])

    def masked_store(value, ptr, mask):
        builder.call(store, [value, ptr, i32(align), mask])

    return masked_load, masked_store


@intrinsic
def update_rows(typingctx, flat, a, b, k, shrink, step):
    """``p, q = p shrink - step q, q shrink - step p`` for the rows ``p = flat[a:a+k]``, ``q = flat[b:b+k]``
    (``a + k <= b`` or ``b + k <= a``: two different rows), both from their old values.

    The per-rating step's update, 16 lanes at a time: the full chunks with plain vector loads and stores,
    then, where ``k % 16`` lanes are left, one chunk masked to them (the mask is made once, not a chunk).
    Each element rounds as the scalar loop rounds it (two products and a difference, no fused
    multiply-add), so the result is the loop's bit for bit. Written in LLVM IR because the two rows are
    views of one buffer: LLVM's vectoriser guards its loop with a run-time overlap check and adds a scalar
    tail, and at k = 50 or 64 most of the time went there (docs/speed.md).
    """
    if not isinstance(flat, nbtypes.Array) or not isinstance(flat.dtype, nbtypes.Float):
        raise TypeError("update_rows works on a float array")
    sig = nbtypes.void(flat, a, b, k, shrink, step)

    def codegen(context, builder, signature, args):
        flat_type = signature.args[0]
        dtype = flat_type.dtype
        array = context.make_array(flat_type)(context, builder, args[0])
        i64 = ir.IntType(64)
        a, b, k = (context.cast(builder, v, t, nbtypes.int64) for v, t in zip(args[1:4], signature.args[1:4]))
        shrink, step = (context.cast(builder, v, t, dtype) for v, t in zip(args[4:6], signature.args[4:6]))
        vec_type = ir.VectorType(context.get_value_type(dtype), DOT_LANES)
        align = dtype.bitwidth // 8
        masked_load, masked_store = _masked_access(builder, vec_type, align)
        shrinks, steps = _splat(builder, shrink, DOT_LANES), _splat(builder, step, DOT_LANES)

        def row_pointers(j):
            pointers = []
            for start in (a, b):
                index = builder.add(start, j)
                ptr = cgutils.get_item_pointer(context, builder, flat_type, array, [index], wraparound=False)
                pointers.append(builder.bitcast(ptr, vec_type.as_pointer()))
            return pointers

        def updated(p, q):
            return (
                builder.fsub(builder.fmul(p, shrinks), builder.fmul(steps, q)),
                builder.fsub(builder.fmul(q, shrinks), builder.fmul(steps, p)),
            )

        full = builder.sub(k, builder.srem(k, i64(DOT_LANES)))
        with cgutils.for_range_slice(builder, i64(0), full, i64(DOT_LANES)) as (j, _):
            rows = row_pointers(j)
            p, q = (builder.load(ptr, align=align) for ptr in rows)
            for value, ptr in zip(updated(p, q), rows):
                builder.store(value, ptr, align=align)
        with builder.if_then(builder.icmp_signed("<", full, k)):
            lanes = ir.Constant(ir.VectorType(i64, DOT_LANES), list(range(DOT_LANES)))
            mask = builder.icmp_signed("<", lanes, _splat(builder, builder.sub(k, full), DOT_LANES))
            rows = row_pointers(full)
            p, q = (masked_load(ptr, mask) for ptr in rows)
            for value, ptr in zip(updated(p, q), rows):
                masked_store(value, ptr, mask)
        return context.get_dummy_value()

    return sig, codegen


def _element_pointer(context, builder, signature, args):
    """The pointer to ``args[0][args[1]]`` (an int64 array element)."""
    array = context.make_array(signature.args[0])(context, builder, args[0])
    return cgutils.get_item_pointer(context, builder, signature.args[0], array, [args[1]], wraparound=False)


def _check_int64(flat):
    if not isinstance(flat, nbtypes.Array) or flat.dtype != nbtypes.int64:
        raise TypeError("the atomics work on int64 arrays")


@intrinsic
def atomic_load(typingctx, flat, index):
    """``flat[index]`` read atomically (sequentially consistent)."""
    _check_int64(flat)

    def codegen(context, builder, signature, args):
        return builder.load_atomic(_element_pointer(context, builder, signature, args), "seq_cst", 8)

    return nbtypes.int64(flat, index), codegen


@intrinsic
def atomic_store(typingctx, flat, index, value):
    """``flat[index] = value`` written atomically (sequentially consistent)."""
    _check_int64(flat)

    def codegen(context, builder, signature, args):
        value = context.cast(builder, args[2], signature.args[2], nbtypes.int64)
        builder.store_atomic(value, _element_pointer(context, builder, signature, args), "seq_cst", 8)
        return context.get_dummy_value()

    return nbtypes.void(flat, index, value), codegen


@intrinsic
def atomic_cas(typingctx, flat, index, expected, new):
    """Compare-and-swap: if ``flat[index] == expected`` set it to ``new``; returns the old value."""
    _check_int64(flat)

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature, args)
        want = context.cast(builder, args[2], signature.args[2], nbtypes.int64)
        new = context.cast(builder, args[3], signature.args[3], nbtypes.int64)
        pair = builder.cmpxchg(ptr, want, new, "seq_cst", "seq_cst")
        return builder.extract_value(pair, 0)

    return nbtypes.int64(flat, index, expected, new), codegen


@intrinsic
def atomic_add(typingctx, flat, index, value):
    """``flat[index] += value`` atomically; returns the old value."""
    _check_int64(flat)

    def codegen(context, builder, signature, args):
        value = context.cast(builder, args[2], signature.args[2], nbtypes.int64)
        return builder.atomic_rmw("add", _element_pointer(context, builder, signature, args), value, "seq_cst")

    return nbtypes.int64(flat, index, value), codegen


_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def _emit_pause(builder) -> None:
    """The x86 ``pause`` instruction (nothing on other machines)."""
    if _X86:
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause")
        builder.call(fn, [])


@intrinsic
def spin_pause(typingctx):
    """A spin-wait hint (x86 ``pause``: the waiting core eases off the memory bus); nothing elsewhere."""

    def codegen(context, builder, signature, args):
        _emit_pause(builder)
        return context.get_dummy_value()

    return nbtypes.void(), codegen


@intrinsic
def yield_thread(typingctx):
    """Give the core to another runnable thread (POSIX ``sched_yield``), so that a waiting thread lets
    the thread it waits for run when both share a core with other work (a ``pause`` on Windows)."""

    def codegen(context, builder, signature, args):
        if platform.system() == "Windows":
            _emit_pause(builder)
        else:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
            builder.call(fn, [])
        return context.get_dummy_value()

    return nbtypes.void(), codegen


@intrinsic
def sleep_thread(typingctx, microseconds):
    """Sleep about ``microseconds`` (POSIX ``usleep``; a ``pause`` on Windows): a thread that has waited
    long leaves its core, so that the thread it waits for, descheduled by other work, can run there."""
    sig = nbtypes.void(nbtypes.int64)

    def codegen(context, builder, signature, args):
        if platform.system() == "Windows":
            _emit_pause(builder)
        else:
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.IntType(32), [ir.IntType(32)]), "usleep"
            )
            builder.call(fn, [builder.trunc(args[0], ir.IntType(32))])
        return context.get_dummy_value()

    return sig, codegen


_LINUX = platform.system() == "Linux"
#: 64-bit words of a CPU mask (:func:`get_thread_cpus`): 1,024 CPUs, glibc's ``cpu_set_t``.
CPU_MASK_WORDS = 16


def _affinity_intrinsic(name: str, doc: str):
    """An intrinsic ``f(mask) -> int64`` calling Linux's ``name(0, bytes, mask)`` on the calling thread
    (``mask``: a uint64 array, bit ``c % 64`` of word ``c // 64`` for CPU ``c``); 0 on success, -1 on
    failure, and -1 without a call on other systems."""

    def typer(typingctx, mask):
        if not isinstance(mask, nbtypes.Array) or mask.dtype != nbtypes.uint64:
            raise TypeError("a CPU mask is a uint64 array")

        def codegen(context, builder, signature, args):
            i32, i64 = ir.IntType(32), ir.IntType(64)
            if not _LINUX:
                return ir.Constant(i64, -1)
            array = context.make_array(signature.args[0])(context, builder, args[0])
            byte_ptr = builder.bitcast(array.data, ir.IntType(8).as_pointer())
            nbytes = builder.mul(array.nitems, ir.Constant(i64, 8))
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(i32, [i32, i64, ir.IntType(8).as_pointer()]), name
            )
            result = builder.call(fn, [ir.Constant(i32, 0), nbytes, byte_ptr])
            return builder.sext(result, i64)

        return nbtypes.int64(mask), codegen

    typer.__doc__ = doc
    typer.__name__ = typer.__qualname__ = f"_{name}"
    return intrinsic(typer)


get_thread_cpus = _affinity_intrinsic(
    "sched_getaffinity", "Read the calling thread's CPU mask into ``mask`` (Linux); 0 on success."
)
set_thread_cpus = _affinity_intrinsic(
    "sched_setaffinity", "Let the calling thread run only on the CPUs of ``mask`` (Linux); 0 on success."
)


@intrinsic
def load_word(typingctx, data, pos):
    """The 8 bytes ``data[pos:pos+8]`` of a uint8 array as one little-endian uint64 (an unaligned load;
    the caller keeps ``pos + 8`` within the array)."""
    if not isinstance(data, nbtypes.Array) or data.dtype != nbtypes.uint8:
        raise TypeError("load_word reads a uint8 array")
    sig = nbtypes.uint64(data, pos)

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.gep(array.data, [args[1]])
        # x86 and ARM64 are little-endian: the first byte is the word's lowest
        return builder.load(builder.bitcast(ptr, ir.IntType(64).as_pointer()), align=1)

    return sig, codegen


@intrinsic
def trailing_zeros(typingctx, word):
    """The number of zero bits below the lowest set bit of a nonzero uint64 (``llvm.cttz``: one instruction)."""
    sig = nbtypes.int64(nbtypes.uint64)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64, ir.IntType(1)]), "llvm.cttz.i64")
        return builder.call(fn, [args[0], ir.Constant(ir.IntType(1), 1)])

    return sig, codegen
