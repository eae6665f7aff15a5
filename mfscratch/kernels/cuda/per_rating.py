r"""Per-rating SGD on the GPU: the twin of ``kernels/cpu/per_rating.py``, in the design of cuMF_SGD.

The maths is the CPU kernel's (plain SGD, batches of one rating, both rows moved from their old values,
``shrink = 1 - lr wd``):

``P[u] <- P[u] shrink - lr dx Q[i]``,   ``Q[i] <- Q[i] shrink - lr dx P[u]``,
``b[u] <- b[u] shrink - lr dx``,        ``c[i] <- c[i] shrink - lr dx``.

**Threads.** A thread block of ``lanes`` threads (a power of two, at most a warp: 32 for k >= 32) owns
a run of ratings and trains them one after another: lane ``l`` holds columns ``l, l + lanes, ...`` of
both rows, the partial dot products meet in a butterfly of warp shuffles (``shfl_xor_sync``: after
``log2(lanes)`` rounds every lane holds the same sum, bit for bit), lane 0 adds the biases and hands
the logit to the others (``shfl_sync`` from lane 0), and every lane updates its own columns. A column
is read and written by one lane only, and lane 0 alone reads and writes the biases, so a block needs
no barrier between two ratings. Many blocks run at once: those are the ratings in flight.

**Schedules** (``CudaBackend(schedule=...)``):

* ``stratified`` (default; deterministic): the epoch is per-rating SGD's block layout
  (``kernels/cpu/blocks.py``: ``g`` user groups x ``g`` item groups, stratum ``t`` the ``g`` blocks
  that share no row). :func:`train_stratum_per_rating` is one launch per stratum, thread block ``c``
  training block ``c`` of the stratum in the layout's order; the host launches the strata in turn. The
  result is the CPU per-rating kernel's over the same layout, up to the rounding of the dot product
  (a butterfly, in float64, instead of the CPU's 16-lane float32 chunks), and the same every run.
* ``hogwild`` (batch-Hogwild!; order not fixed): :func:`train_epoch_per_rating_hogwild` is one launch
  per epoch; block ``w`` trains the ratings ``order[w per_worker : (w + 1) per_worker]`` of the
  learner's permutation, all blocks at once on the shared tables without locks, as cuMF_SGD does.
  Updates of a row by two blocks can interleave, so the result depends on the timing.

**Storage** (``CudaBackend(storage=...)``): the tables are read into float64 registers and every
update is computed there, then stored in the tables' format: ``fp32`` (the model's own dtype), ``fp16``
(a float16 buffer: Numba converts on load and store, rounding to nearest even) or ``bf16`` (a uint16
buffer holding bfloat16 bits: numba.cuda has no bfloat16 array type, so :func:`bf16_bits` and
:func:`bf16_value` convert, rounding to nearest even, with ``math.frexp``/``ldexp`` so that the
simulator runs the same code). :func:`narrow_params` and :func:`widen_params` copy the model's buffer
into a half buffer and back. The CPU emulation of the same rounding is ``kernels/cpu/half.py``; it
measured bf16 over the accuracy bar on ML-100k, so the backend offers fp32 and fp16 only and runs
bf16 for measuring (docs/cuda.md).

A NaN/inf loss stops a block before that rating's update and raises a flag; the strata after the one in
which it happened train nothing, and the other blocks of that stratum finish theirs, as on the CPU.
``losses[s]`` gets the squared error of the rating at position ``s`` (left as it was where none was
trained: the host cuts the losses after the first non-finite one, and every position before it was
trained).

The simulator has no warp shuffles: there (``SIMULATOR``) the butterfly and the broadcast go through
shared memory with a barrier per round, the same exchanges in the same order.
"""

from __future__ import annotations

import math
from typing import Any

from ._compile import SIMULATOR, cuda, device, float64, kernel, rebind
from .core import sigmoid

__all__ = [
    "STORAGES",
    "bf16_bits",
    "bf16_value",
    "lane_sum",
    "train_stratum_per_rating",
    "train_stratum_per_rating_bf16",
    "train_epoch_per_rating_hogwild",
    "train_epoch_per_rating_hogwild_bf16",
    "narrow_params",
    "narrow_params_bf16",
    "widen_params",
    "widen_params_bf16",
]

#: The storage formats of the tables: the model's dtype, IEEE half, bfloat16 (as uint16 bits).
STORAGES = ("fp32", "fp16", "bf16")
#: Most lanes per rating: one warp (the shuffles exchange within a warp).
MAX_LANES = 32
_FULL_MASK = 0xFFFFFFFF


# --- the exchange between the lanes of a block ------------------------------------------------------------
@device
def _lane_sum_shuffle(value, lane, lanes):
    """Sum of ``value`` over the ``lanes`` lanes (a power of two <= 32, the whole block), on every lane."""
    mask = _FULL_MASK >> (MAX_LANES - lanes)
    offset = lanes // 2
    while offset > 0:
        value += cuda.shfl_xor_sync(mask, value, offset)
        offset //= 2
    return value


@device
def _from_lane0_shuffle(value, lane, lanes):
    """Lane 0's ``value``, on every lane."""
    return cuda.shfl_sync(_FULL_MASK >> (MAX_LANES - lanes), value, 0)


@device
def _lane_sum_shared(value, lane, lanes):
    """The simulator's :func:`_lane_sum_shuffle`: the same butterfly through shared memory."""
    buf = cuda.shared.array(MAX_LANES, float64)
    offset = lanes // 2
    while offset > 0:
        buf[lane] = value
        cuda.syncthreads()
        other = buf[lane ^ offset]
        cuda.syncthreads()
        value += other
        offset //= 2
    return value


@device
def _from_lane0_shared(value, lane, lanes):
    """The simulator's :func:`_from_lane0_shuffle`, through shared memory."""
    buf = cuda.shared.array(1, float64)
    if lane == 0:
        buf[0] = value
    cuda.syncthreads()
    value = buf[0]
    cuda.syncthreads()
    return value


lane_sum = _lane_sum_shared if SIMULATOR else _lane_sum_shuffle
from_lane0 = _from_lane0_shared if SIMULATOR else _from_lane0_shuffle


# --- storage: load a value into a float64 register, store a register's value -----------------------------
@device
def _load_direct(params, j):
    """``params[j]`` as a float64 (float32, float64 or float16 tables: Numba converts). Not ``float()``,
    which numba-cuda types as float16 for a float16, making the products half-precision arithmetic."""
    return float64(params[j])


@device
def _store_direct(params, j, value):
    """``params[j] = value``, converted to the tables' dtype (to nearest, ties to even)."""
    params[j] = value


@device
def _round_half_even(y):
    """``y`` (>= 0) rounded to an integer, ties to even (exact in float64)."""
    f = math.floor(y)
    d = y - f
    if d > 0.5 or (d == 0.5 and f % 2.0 == 1.0):
        f += 1.0
    return f


@device
def bf16_bits(value):
    """The bfloat16 nearest ``value`` (ties to even), as its 16 bits in an int (NaN: the quiet NaN)."""
    if value != value:
        return 0x7FC0
    sign = 0x8000 if math.copysign(1.0, value) < 0.0 else 0
    a = abs(value)
    if a == math.inf:
        return sign | 0x7F80
    if a == 0.0:
        return sign
    _, e = math.frexp(a)
    q = max(e - 8, -133)  # 8 significant bits; never finer than the smallest subnormal, 2^-133
    r = int(_round_half_even(math.ldexp(a, -q)))  # a ~ r 2^q
    if r == 256:  # rounded up to the next power of two
        r = 128
        q += 1
    if r < 128:  # subnormal (q == -133): exponent field 0
        return sign | r
    exponent = q + 134  # r 2^q = (1 + (r - 128)/128) 2^(q + 7), biased by 127
    if exponent >= 255:
        return sign | 0x7F80
    return sign | (exponent << 7) | (r - 128)


@device
def bf16_value(bits):
    """The value of the bfloat16 whose 16 bits are ``bits``, as a float64 (exact)."""
    b = int(bits)
    sign = -1.0 if b & 0x8000 else 1.0
    exponent = (b >> 7) & 0xFF
    mantissa = b & 0x7F
    if exponent == 0xFF:
        return sign * math.inf if mantissa == 0 else math.nan
    if exponent == 0:
        return sign * math.ldexp(float(mantissa), -133)
    return sign * math.ldexp(float(mantissa + 128), exponent - 134)


@device
def _load_bf16(params, j):
    return bf16_value(params[j])


@device
def _store_bf16(params, j, value):
    params[j] = bf16_bits(value)


# --- the per-rating walk, shared by both schedules ----------------------------------------------------------
#: What the bodies below call. They are plain functions: ``_compile_for`` compiles a copy of each per
#: storage with these names rebound to that storage's ``load``/``store`` and to the copy's own ``walk``.
load, store = _load_direct, _store_direct
walk: Any = None


def _walk_body(params, shape, data, order, first, last, lrs, wd, y_range, losses, stop):
    """Train the ratings ``order[first:last]`` one after another with this block's lanes (see the module
    docstring). Every lane of the block must call it. Returns after the first non-finite loss, which
    sets ``stop[0]``."""
    lane = cuda.threadIdx.x
    lanes = cuda.blockDim.x
    k = shape.n_factors
    i_start = shape.n_users * k
    b_start = (shape.n_users + shape.n_items) * k
    c_start = b_start + shape.n_users
    lo, span = y_range.lo, y_range.hi - y_range.lo
    per_step_lr = lrs.shape[0] > 1
    for s in range(first, last):
        row = order[s]
        u = data.users[row]
        i = data.items[row]
        pu_at = u * k
        qi_at = i_start + i * k
        partial = 0.0
        for j in range(lane, k, lanes):
            partial += load(params, pu_at + j) * load(params, qi_at + j)
        x = lane_sum(partial, lane, lanes)
        if lane == 0:
            x = x + load(params, b_start + u) + load(params, c_start + i)
        x = from_lane0(x, lane, lanes)
        if y_range.has_range:
            sg = sigmoid(x)
            err = lo + span * sg - data.ratings[row]
            dx = 2.0 * err * span * sg * (1.0 - sg)
        else:
            err = x - data.ratings[row]
            dx = 2.0 * err
        loss = err * err
        if lane == 0:
            losses[s] = loss
        if not math.isfinite(loss):  # every lane has the same loss: all of them stop here
            if lane == 0:
                stop[0] = 1
            return
        lr = lrs[s] if per_step_lr else lrs[0]
        shrink = 1.0 - lr * wd
        step = lr * dx
        for j in range(lane, k, lanes):
            pu = load(params, pu_at + j)
            qi = load(params, qi_at + j)
            store(params, pu_at + j, pu * shrink - step * qi)
            store(params, qi_at + j, qi * shrink - step * pu)
        if lane == 0:
            store(params, b_start + u, load(params, b_start + u) * shrink - step)
            store(params, c_start + i, load(params, c_start + i) * shrink - step)


def _stratum_body(params, shape, data, layout, stratum, lrs, wd, y_range, losses, stop):
    """Stratum ``stratum`` of ``layout`` (a ``records.BlockLayout`` on the device): thread block ``c``
    trains the layout's block ``stratum g + c``. Launch ``[g, lanes]``. ``stop`` has ``g + 1`` slots:
    a block that meets a non-finite loss sets ``stop[stratum + 1]``; a launch finding ``stop[stratum]``
    set (by an earlier stratum) trains nothing and passes the flag on. So every block of the stratum in
    which it happened finishes, whatever the timing, as on the CPU. (The test is one value for the whole
    block, so its lanes stay together.)"""
    if cuda.syncthreads_or(stop[stratum]):
        if cuda.threadIdx.x == 0:
            stop[stratum + 1] = 1
        return
    g = layout.n_groups
    block = stratum * g + cuda.blockIdx.x
    first, last = layout.block_start[block], layout.block_start[block + 1]
    walk(params, shape, data, layout.order, first, last, lrs, wd, y_range, losses, stop[stratum + 1 :])


def _hogwild_body(params, shape, data, order, lrs, wd, y_range, losses, stop, per_worker):
    """A whole epoch, batch-Hogwild!: thread block ``w`` trains ``order[w per_worker:(w+1) per_worker]``.
    Launch ``[ceil(len(order) / per_worker), lanes]``."""
    first = cuda.blockIdx.x * per_worker
    last = min(first + per_worker, order.shape[0])
    walk(params, shape, data, order, first, last, lrs, wd, y_range, losses, stop)


def _narrow_body(source, params):
    """``params[j] = source[j]`` in ``params``' storage, for every element (grid-stride)."""
    for j in range(cuda.grid(1), source.shape[0], cuda.gridsize(1)):
        store(params, j, source[j])


def _widen_body(params, out):
    """``out[j] = params[j]``'s value, for every element (grid-stride)."""
    for j in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        out[j] = load(params, j)


def _compile_for(suffix: str, load, store):
    """The four kernels of one storage: its walk, both schedules, narrow and widen."""
    walk = device(rebind(_walk_body, suffix, load=load, store=store))
    return (
        kernel(rebind(_stratum_body, suffix, walk=walk)),
        kernel(rebind(_hogwild_body, suffix, walk=walk)),
        kernel(rebind(_narrow_body, suffix, store=store)),
        kernel(rebind(_widen_body, suffix, load=load)),
    )


(train_stratum_per_rating, train_epoch_per_rating_hogwild, narrow_params, widen_params) = _compile_for(
    "", _load_direct, _store_direct
)
(
    train_stratum_per_rating_bf16,
    train_epoch_per_rating_hogwild_bf16,
    narrow_params_bf16,
    widen_params_bf16,
) = _compile_for("_bf16", _load_bf16, _store_bf16)
