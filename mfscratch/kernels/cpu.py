"""Numba CPU kernels: the fast twins of :mod:`mfscratch.reference`.

Every kernel here is a pure function of arrays and scalars (no Python objects, no schedule, no
logging): the learner computes the per-step learning rates and momenta and hands them in.
Each kernel has a readable NumPy twin in ``reference.py`` and a test that compares the two.

Argument order is the same everywhere (and in ``kernels/cuda.py``):
tables ``u_weight, i_weight, u_bias, i_bias`` (the biases as 1-D vectors), then the batch
``users, items, ratings``, then the output range ``lo, hi, has_range``, then outputs
(gradients prefixed ``d``).

The four tables live in one flat buffer ``params`` (``u_weight | i_weight | u_bias | i_bias``);
gradients and optimiser moments use the same layout, so a dense optimiser update is a single
loop over one array.

Kernels with a ``prange`` loop are compiled twice from one body: serially (``prange`` acts as
``range``) and with ``parallel=True`` (the ``*_parallel`` names, used by the parallel backend).
``train_epoch_deferred`` is exact mode (without L2 decay) with untouched rows' steps replayed
when next needed: the dense result to rounding (the CPU backends' default: ``CpuBackend.defer_rows``).
Sparse mode (``train_epoch_sparse``) updates only the rows each batch touches; its parallel twin
is Hogwild!. Sparse plain SGD with batches of one rating has its own fused kernel
(``train_epoch_sgd_per_rating``), whose parallel twin trains conflict-free stratified blocks.
Why the kernels look the way they do (float32 scalars, ``error_model``, one
``reassoc`` flag, prefetching): ``docs/speed.md``.
"""

from __future__ import annotations

import math
import types

import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba import types as nbtypes
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "split_flat",
    "forward_backward",
    "predict",
    "evaluate_mse",
    "adam_update_dense",
    "sgd_update_dense",
    "train_epoch_dense",
    "adam_update_dense_parallel",
    "sgd_update_dense_parallel",
    "train_epoch_dense_parallel",
    "train_epoch_deferred",
    "train_epoch_sparse",
    "train_epoch_sparse_parallel",
    "balanced_groups",
    "block_index",
    "block_layout",
    "shuffle_blocks",
    "shuffle_blocks_parallel",
    "sort_by_block",
    "train_epoch_sgd_per_rating",
    "train_epoch_sgd_per_rating_parallel",
]


@njit(cache=True, inline="always")
def _sigmoid(x):
    # Branch on the sign so that exp never overflows.
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    ex = math.exp(x)
    return ex / (1.0 + ex)


@njit(cache=True, inline="always")
def _error_and_dx(x, rating, lo, hi, has_range, scale):
    """From the logit ``x`` of one rating: ``err = pred - y`` and ``dx = dL/dx = scale err dpred/dx``.

    ``scale`` is ``2/B``; ``dpred/dx = (hi - lo) s (1 - s)`` with ``s = sigmoid(x)`` (1 without y_range).
    """
    if has_range:
        s = _sigmoid(x)
        err = lo + (hi - lo) * s - rating
        return err, scale * err * (hi - lo) * s * (1.0 - s)
    err = x - rating
    return err, scale * err


@njit(cache=True, fastmath={"reassoc"})
def _dot(u_weight, i_weight, u, i):
    """``u_weight[u] . i_weight[i]``, summed in float64.

    ``reassoc`` lets LLVM split the sum into vector lanes (a strict left-to-right sum cannot
    vectorise). The products are float32 and the sum float64, so the order changes the result
    by about 1e-16 relative: far below float32 rounding. This carries the only fastmath
    flag in the kernels; LLVM inlines it, keeping the flag on these instructions only.
    """
    x = 0.0
    for j in range(u_weight.shape[1]):
        x += u_weight[u, j] * i_weight[i, j]
    return x


@njit(cache=True)
def split_flat(params, n_users, n_items, n_factors):
    """Views of the four tables inside the flat buffer: ``(u_weight, i_weight, u_bias, i_bias)``."""
    a = n_users * n_factors
    b = a + n_items * n_factors
    c = b + n_users
    u_weight = params[:a].reshape((n_users, n_factors))
    i_weight = params[a:b].reshape((n_items, n_factors))
    return u_weight, i_weight, params[b:c], params[c : c + n_items]


@njit(cache=True)
def forward_backward(
    u_weight, i_weight, u_bias, i_bias, users, items, ratings, lo, hi, has_range, du_weight, di_weight, du_bias, di_bias
):
    """Mean squared error of one batch; *adds* its gradient into ``d*`` (scatter-add, so repeats add up).

    ``dx = (2/B)(pred - y)(hi - lo) s (1 - s)``, then ``dP[u] += dx Q[i]``, ``dQ[i] += dx P[u]``,
    ``db[u] += dx``, ``dc[i] += dx`` (see ``reference.py`` for the derivation).
    The caller zeroes the gradient rows it wants fresh.
    """
    B = users.shape[0]
    k = u_weight.shape[1]
    scale = 2.0 / B
    loss = 0.0
    for r in range(B):
        u = users[r]
        i = items[r]
        x = _dot(u_weight, i_weight, u, i)
        x += u_bias[u] + i_bias[i]
        err, dx = _error_and_dx(x, ratings[r], lo, hi, has_range, scale)
        loss += err * err
        for j in range(k):
            # Read both before writing either: u and i tables are distinct, but keep the
            # pattern safe for the case where a caller passes the same table twice.
            pu = u_weight[u, j]
            qi = i_weight[i, j]
            du_weight[u, j] += dx * qi
            di_weight[i, j] += dx * pu
        du_bias[u] += dx
        di_bias[i] += dx
    return loss / B


@njit(cache=True)
def predict(u_weight, i_weight, u_bias, i_bias, users, items, lo, hi, has_range, out):
    """``out[r] = lo + (hi - lo) sigmoid(P[u_r] . Q[i_r] + b[u_r] + c[i_r])`` (or the logit without range)."""
    for r in range(users.shape[0]):
        u = users[r]
        i = items[r]
        x = _dot(u_weight, i_weight, u, i)
        x += u_bias[u] + i_bias[i]
        out[r] = lo + (hi - lo) * _sigmoid(x) if has_range else x
    return out


@njit(cache=True)
def evaluate_mse(u_weight, i_weight, u_bias, i_bias, users, items, ratings, lo, hi, has_range):
    """Exact mean squared error over all rows (accumulated in float64)."""
    n = users.shape[0]
    total = 0.0
    for r in range(n):
        u = users[r]
        i = items[r]
        x = _dot(u_weight, i_weight, u, i)
        x += u_bias[u] + i_bias[i]
        pred = lo + (hi - lo) * _sigmoid(x) if has_range else x
        err = pred - ratings[r]
        total += err * err
    return total / max(n, 1)


# Options for the hot kernels. error_model="numpy" makes float division follow IEEE (x/0 -> inf)
# instead of raising ZeroDivisionError: without it every division carries a branch and LLVM
# will not vectorise the loop. It changes no finite result. No fastmath in the updates: they
# must round exactly as the NumPy reference does (the one exception, _dot, says why it may).
_HOT = dict(cache=True, error_model="numpy")
#: How many ratings ahead the sparse kernel prefetches table rows (see _train_epoch_sparse_body).
PREFETCH_AHEAD = 4
#: Tables smaller than this (bytes) are not prefetched: they live in cache anyway.
PREFETCH_MIN_BYTES = 1 << 23


def _adam_update_dense_body(params, grads, exp_avg, exp_avg_sq, lr, mom, sqr_mom, eps, wd, decouple_wd, step):
    """fastai's Adam on every element of the flat buffer (see ``reference.adam_step``); ``step`` is t.

    The per-step scalars are rounded to the dtype of ``params`` first (``T = params.dtype.type``),
    so a float32 buffer is updated entirely in float32 (16 lanes per AVX-512 instruction) and
    rounds exactly as NumPy does with Python-float scalars. The two weight-decay variants share
    one branch-free loop: decoupled decay multiplies ``p`` by ``decay = 1 - lr wd`` and adds
    ``l2 = 0`` times ``p`` to ``g``; L2 decay uses ``decay = 1`` and ``l2 = wd`` (both exact no-ops
    where unused). Compiled twice: serial, and with ``prange`` over elements (deterministic:
    every element is independent).
    """
    T = params.dtype.type
    if decouple_wd:
        decay, l2 = T(1.0 - lr * wd), T(0.0)
    else:
        decay, l2 = T(1.0), T(wd)
    beta1, one_minus_beta1 = T(mom), T(1.0 - mom)
    beta2, one_minus_beta2 = T(sqr_mom), T(1.0 - sqr_mom)
    step_size = T(lr / (1.0 - mom**step))
    debias2 = T(1.0 - sqr_mom**step)
    eps_ = T(eps)
    for j in prange(params.shape[0]):
        p = params[j]
        g = grads[j] + l2 * p
        p = p * decay
        m = beta1 * exp_avg[j] + one_minus_beta1 * g
        v = beta2 * exp_avg_sq[j] + one_minus_beta2 * g * g
        exp_avg[j] = m
        exp_avg_sq[j] = v
        params[j] = p - step_size * m / (math.sqrt(v / debias2) + eps_)


def _sgd_update_dense_body(params, grads, exp_avg, lr, mom, wd, decouple_wd, use_mom):
    """fastai's SGD on every element (see ``reference.sgd_step``); ``use_mom`` is the optimiser's mom != 0.

    Scalars rounded to the params dtype and decay folded in as in the Adam body.
    """
    T = params.dtype.type
    if decouple_wd:
        decay, l2 = T(1.0 - lr * wd), T(0.0)
    else:
        decay, l2 = T(1.0), T(wd)
    lr_, beta = T(lr), T(mom)
    if use_mom:
        for j in prange(params.shape[0]):
            p = params[j]
            m = beta * exp_avg[j] + (grads[j] + l2 * p)
            exp_avg[j] = m
            params[j] = p * decay - lr_ * m
    else:
        for j in prange(params.shape[0]):
            p = params[j]
            params[j] = p * decay - lr_ * (grads[j] + l2 * p)


def _twin(fn, suffix="_parallel", **globals_):
    """A copy of ``fn`` under another name (and with some global names rebound), for a second compilation.

    Numba's on-disk cache keys a function by its qualified name and bytecode, not by the compile
    flags, so the serial and the parallel build of one body must carry different names or the
    second would silently load the first from the cache. ``globals_`` rebinds the kernels the
    body calls (the parallel epoch loop calls the inlined prange updates). A copied globals
    dict, rather than a closure, keeps the twin cacheable across processes (a closure over a
    dispatcher hashes differently in every process, so it would recompile every time).
    """
    env = fn.__globals__ if not globals_ else {**fn.__globals__, **globals_}
    twin = types.FunctionType(fn.__code__, env, fn.__name__ + suffix, fn.__defaults__, fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + suffix
    twin.__doc__ = fn.__doc__
    return twin


adam_update_dense = njit(**_HOT)(_adam_update_dense_body)
sgd_update_dense = njit(**_HOT)(_sgd_update_dense_body)
adam_update_dense_parallel = njit(parallel=True, **_HOT)(_twin(_adam_update_dense_body))
sgd_update_dense_parallel = njit(parallel=True, **_HOT)(_twin(_sgd_update_dense_body))
# A parallel dispatcher called from compiled code runs serially; the parallel epoch loop must
# therefore inline the update bodies (Numba IR inlining) so that their prange loops become part
# of its own parallel=True compilation.
_adam_update_dense_inline = njit(inline="always", **_HOT)(_twin(_adam_update_dense_body, "_inline"))
_sgd_update_dense_inline = njit(inline="always", **_HOT)(_twin(_sgd_update_dense_body, "_inline"))


def _train_epoch_dense_body(
    params,
    grads,
    exp_avg,
    exp_avg_sq,
    n_users,
    n_items,
    n_factors,
    users,
    items,
    ratings,
    order,
    bs,
    lrs,
    moms,
    step0,
    is_adam,
    use_mom,
    sqr_mom,
    eps,
    wd,
    decouple_wd,
    lo,
    hi,
    has_range,
    losses,
):
    """One epoch of exact-mode training: every parameter is updated at every step.

    ``order`` is the epoch's permutation of training rows; step ``s`` takes rows
    ``order[s*bs:(s+1)*bs]`` (the last partial batch is dropped), uses ``lrs[s]`` and ``moms[s]``,
    and writes its batch loss (before the update) to ``losses[s]``. ``step0`` is the number of
    optimiser steps already taken. ``grads`` must be zero on entry and is zero on exit.
    Returns the number of losses written: ``n_steps``, or fewer when a loss was NaN/inf (that
    last step's update is not applied).
    """
    u_weight, i_weight, u_bias, i_bias = split_flat(params, n_users, n_items, n_factors)
    du_weight, di_weight, du_bias, di_bias = split_flat(grads, n_users, n_items, n_factors)
    bu = np.empty(bs, dtype=users.dtype)
    bi = np.empty(bs, dtype=items.dtype)
    br = np.empty(bs, dtype=ratings.dtype)
    n_steps = order.shape[0] // bs
    k = n_factors
    for s in range(n_steps):
        for r in range(bs):
            row = order[s * bs + r]
            bu[r] = users[row]
            bi[r] = items[row]
            br[r] = ratings[row]
        losses[s] = forward_backward(
            u_weight, i_weight, u_bias, i_bias, bu, bi, br, lo, hi, has_range, du_weight, di_weight, du_bias, di_bias
        )
        if not math.isfinite(losses[s]):
            # Diverged: stop before the update so the weights stay those that produced this loss.
            grads[:] = 0.0
            return s + 1
        if is_adam:
            adam_update_dense(
                params, grads, exp_avg, exp_avg_sq, lrs[s], moms[s], sqr_mom, eps, wd, decouple_wd, step0 + s + 1
            )
        else:
            sgd_update_dense(params, grads, exp_avg, lrs[s], moms[s], wd, decouple_wd, use_mom)
        # Only the rows this batch touched hold non-zero gradients: clear just those.
        for r in range(bs):
            u = bu[r]
            i = bi[r]
            for j in range(k):
                du_weight[u, j] = 0.0
                di_weight[i, j] = 0.0
            du_bias[u] = 0.0
            di_bias[i] = 0.0
    return n_steps


train_epoch_dense = njit(**_HOT)(_train_epoch_dense_body)
# The parallel twin calls the inlined prange updates (see above); its own loops stay serial.
train_epoch_dense_parallel = njit(parallel=True, **_HOT)(
    _twin(
        _train_epoch_dense_body, adam_update_dense=_adam_update_dense_inline, sgd_update_dense=_sgd_update_dense_inline
    )
)


# --- sparse (lazy) mode ---------------------------------------------------------------------------
@intrinsic
def _prefetch(typingctx, flat, index):
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
def _prefetch_row(flat, start, length):
    """Prefetch every 64-byte line of ``flat[start:start+length]``."""
    per_line = 64 // flat.itemsize
    for off in range(0, length, per_line):
        _prefetch(flat, start + off)


@njit(cache=True, inline="always")
def _adam_row(
    w, m, v, g, row, slot, decay, l2, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, debias2, eps
):
    """Adam on one row ``w[row]`` with its gradient ``g[slot]`` (same arithmetic as the dense update)."""
    for j in range(w.shape[1]):
        p = w[row, j]
        gj = g[slot, j] + l2 * p
        p = p * decay
        mj = beta1 * m[row, j] + one_minus_beta1 * gj
        vj = beta2 * v[row, j] + one_minus_beta2 * gj * gj
        m[row, j] = mj
        v[row, j] = vj
        w[row, j] = p - step_size * mj / (math.sqrt(vj / debias2) + eps)


@njit(cache=True, inline="always")
def _sgd_row(w, m, g, row, slot, decay, l2, lr, beta, use_mom):
    """SGD (with or without momentum) on one row ``w[row]`` with its gradient ``g[slot]``."""
    for j in range(w.shape[1]):
        p = w[row, j]
        gj = g[slot, j] + l2 * p
        if use_mom:
            mj = beta * m[row, j] + gj
            m[row, j] = mj
            w[row, j] = p * decay - lr * mj
        else:
            w[row, j] = p * decay - lr * gj


@njit(cache=True, inline="always")
def _tables2d(flat, n_users, n_items, n_factors):
    """The four tables of a flat buffer as 2-D views (biases as ``(n, 1)``), so one row kernel serves all."""
    u_weight, i_weight, u_bias, i_bias = split_flat(flat, n_users, n_items, n_factors)
    return u_weight, i_weight, u_bias.reshape((n_users, 1)), i_bias.reshape((n_items, 1))


def _train_epoch_sparse_body(
    params,
    exp_avg,
    exp_avg_sq,
    n_users,
    n_items,
    n_factors,
    users,
    items,
    ratings,
    order,
    bs,
    lrs,
    moms,
    step0,
    is_adam,
    use_mom,
    sqr_mom,
    eps,
    wd,
    decouple_wd,
    lo,
    hi,
    has_range,
    losses,
    n_chunks,
):
    r"""One epoch of sparse (lazy) training: each step updates only the rows its batch touches.

    Per step ``s`` (rows ``order[s*bs:(s+1)*bs]``, learning rate ``lrs[s]``, momentum ``moms[s]``):

    1. forward and backward over the batch, the gradient of each touched row accumulated in a
       compact buffer (one slot per distinct user and item, so a row that repeats in the batch
       gets the sum of its contributions, exactly as the dense gradient);
    2. the optimiser step on those rows only, with the dense update's arithmetic: decay, moments
       and parameter move for a touched row; untouched rows, their moments included, stay as
       they are (like ``torch.optim.SparseAdam``; not the fastai recipe). Adam's bias correction
       uses the global step count ``t = step0 + s + 1``, as in exact mode.

    The NumPy twin is :func:`mfscratch.reference.sparse_adam_step` / ``sparse_sgd_step``.
    No gradient buffer of the tables' size exists: memory is the tables, the moments and
    ``O(n_users + n_items)`` slot indices per chunk.

    ``n_chunks`` splits the epoch's steps into contiguous chunks run by ``prange``. Serially
    (``n_chunks = 1``) this is the deterministic algorithm above. In the ``parallel=True`` twin
    the chunks run at once on shared tables without locks: **Hogwild!** (Recht et al., 2011).
    Two threads may then read a row while another writes it, so results vary from run to run
    (each update still reads and writes whole floats; lost updates are rare on sparse data).

    Returns the number of valid losses: ``n_steps``, or (the first non-finite step) + 1.
    """
    u_weight, i_weight, u_bias, i_bias = _tables2d(params, n_users, n_items, n_factors)
    m_tables = _tables2d(exp_avg, n_users, n_items, n_factors)
    v_tables = _tables2d(exp_avg_sq, n_users, n_items, n_factors)
    T = params.dtype.type
    k = n_factors
    n_steps = order.shape[0] // bs
    n_rows = n_steps * bs
    i_start = n_users * k
    # Tables that fit in cache gain nothing from prefetching (it costs ~8% on ML-100k).
    prefetch = params.size * params.itemsize > PREFETCH_MIN_BYTES
    first_bad = np.full(n_chunks, n_steps, dtype=np.int64)
    for c in prange(n_chunks):
        # Per-chunk scratch, allocated once per epoch: slot_u[u] is u's slot in this batch's
        # compact gradient (-1: not in the batch); rows_u[slot] maps back.
        slot_u = np.full(n_users, -1, dtype=np.int64)
        slot_i = np.full(n_items, -1, dtype=np.int64)
        rows_u = np.empty(bs, dtype=np.int64)
        rows_i = np.empty(bs, dtype=np.int64)
        gu = np.empty((bs, k), dtype=params.dtype)
        gi = np.empty((bs, k), dtype=params.dtype)
        gub = np.empty((bs, 1), dtype=params.dtype)
        gib = np.empty((bs, 1), dtype=params.dtype)
        scale = 2.0 / bs
        for s in range(c * n_steps // n_chunks, (c + 1) * n_steps // n_chunks):
            nu = 0
            ni = 0
            loss = 0.0
            for r in range(bs):
                # The tables outgrow the caches on large data, and then each rating waits on
                # memory. Prefetch in two stages: the codes of the rating PREFETCH_AHEAD * 2
                # positions ahead, and the table rows (weights, moments) of the one
                # PREFETCH_AHEAD ahead, whose codes are by then in cache.
                pos = s * bs + r
                if prefetch and pos + 2 * PREFETCH_AHEAD < n_rows:
                    ahead = order[pos + 2 * PREFETCH_AHEAD]
                    _prefetch(users, ahead)
                    _prefetch(items, ahead)
                    _prefetch(ratings, ahead)
                if prefetch and pos + PREFETCH_AHEAD < n_rows:
                    ahead = order[pos + PREFETCH_AHEAD]
                    u_off = users[ahead] * k
                    i_off = i_start + items[ahead] * k
                    _prefetch_row(params, u_off, k)
                    _prefetch_row(params, i_off, k)
                    _prefetch_row(exp_avg, u_off, k)
                    _prefetch_row(exp_avg, i_off, k)
                    if is_adam:
                        _prefetch_row(exp_avg_sq, u_off, k)
                        _prefetch_row(exp_avg_sq, i_off, k)
                row = order[pos]
                u = users[row]
                i = items[row]
                # The same slot claim for the user and the item, written out twice on purpose: as a
                # shared inline helper returning (slot, count) this epoch measured 15% slower.
                su = slot_u[u]
                if su < 0:
                    su = nu
                    slot_u[u] = su
                    rows_u[su] = u
                    nu += 1
                    gu[su, :] = 0.0
                    gub[su, 0] = 0.0
                si = slot_i[i]
                if si < 0:
                    si = ni
                    slot_i[i] = si
                    rows_i[si] = i
                    ni += 1
                    gi[si, :] = 0.0
                    gib[si, 0] = 0.0
                x = _dot(u_weight, i_weight, u, i)
                x += u_bias[u, 0] + i_bias[i, 0]
                err, dx = _error_and_dx(x, ratings[row], lo, hi, has_range, scale)
                loss += err * err
                dx_ = T(dx)  # in the tables' dtype, so the row loops below stay in float32 lanes
                for j in range(k):
                    pu = u_weight[u, j]
                    qi = i_weight[i, j]
                    gu[su, j] += dx_ * qi
                    gi[si, j] += dx_ * pu
                gub[su, 0] += dx
                gib[si, 0] += dx
            losses[s] = loss / bs
            finite = math.isfinite(losses[s])
            lr = lrs[s]
            mom = moms[s]
            if decouple_wd:
                decay, l2 = T(1.0 - lr * wd), T(0.0)
            else:
                decay, l2 = T(1.0), T(wd)
            t = step0 + s + 1
            b1, omb1, b2, omb2 = T(mom), T(1.0 - mom), T(sqr_mom), T(1.0 - sqr_mom)
            step_size = T(lr / (1.0 - mom**t)) if is_adam else T(0.0)
            debias2 = T(1.0 - sqr_mom**t) if is_adam else T(1.0)
            eps_ = T(eps)
            lr_ = T(lr)
            for table in range(4):
                if table == 0:
                    w, m, v, g, rows, slots, n = u_weight, m_tables[0], v_tables[0], gu, rows_u, slot_u, nu
                elif table == 1:
                    w, m, v, g, rows, slots, n = i_weight, m_tables[1], v_tables[1], gi, rows_i, slot_i, ni
                elif table == 2:
                    w, m, v, g, rows, slots, n = u_bias, m_tables[2], v_tables[2], gub, rows_u, slot_u, nu
                else:
                    w, m, v, g, rows, slots, n = i_bias, m_tables[3], v_tables[3], gib, rows_i, slot_i, ni
                for slot in range(n):
                    row = rows[slot]
                    if table >= 2:
                        slots[row] = -1  # the last table of each side clears the slot map
                    if not finite:
                        continue
                    if is_adam:
                        _adam_row(w, m, v, g, row, slot, decay, l2, b1, omb1, b2, omb2, step_size, debias2, eps_)
                    else:
                        _sgd_row(w, m, g, row, slot, decay, l2, lr_, b1, use_mom)
            if not finite:
                # Diverged: stop this chunk before its update, as the dense loop does.
                first_bad[c] = s
                break
    bad = first_bad.min()
    return n_steps if bad == n_steps else bad + 1


train_epoch_sparse = njit(**_HOT)(_train_epoch_sparse_body)
train_epoch_sparse_parallel = njit(parallel=True, **_HOT)(_twin(_train_epoch_sparse_body))


# --- exact mode with deferred rows ------------------------------------------------------------------
#: The deferred replay's scratch rows are padded to a multiple of this many elements: LLVM's
#: vector loop for float32 on AVX-512 takes 4 registers of 16 lanes at a time.
_LANES = 64


#: The float32 replay runs the missed steps in segments over which ``r`` (below) stays within
#: ``1 +- _SEGMENT_SPREAD`` of the segment's ``r0``; a series of 6 terms in ``r / r0 - 1`` is then exact
#: to ``_SEGMENT_SPREAD^6 = 1.6e-8`` of the segment's move, under float32 rounding.
_SEGMENT_SPREAD = 0.05


@njit(cache=True, inline="always")
def _adam_catch_up(
    w,
    m,
    v,
    wb,
    mb,
    vb,
    row,
    first,
    stop,
    decay,
    step_size,
    moms,
    root_sqr_mom,
    inv_root_debias2,
    sqr_mom,
    eps,
    pw,
    pm,
    prv,
):
    r"""Apply the missed exact-mode Adam steps ``first..stop-1`` to row ``row`` (weights and bias), g = 0.

    With no gradient and decoupled decay the dense step is ``m_t = mom_t m_{t-1}``,
    ``v_t = sqr_mom v_{t-1}``, ``p_t = p_{t-1} d_t - a_t m_t / (sqrt(v_t / c2_t) + eps)``. From the
    row's state at ``first`` (``m0``, ``v0``) after n missed steps, ``m_t = m0 P_n`` with
    ``P_n = prod mom``, and ``sqrt(v_t / c2_t) = y r_t`` with ``y = sqrt(v0)`` and
    ``r_t = sqrt(sqr_mom)^n / sqrt(c2_t)``; with ``a_t = step_size_t P_n``:

    ``p_t = p_{t-1} d_t - m0 a_t / (y r_t + eps)``.

    *float64 tables*: that recurrence, per element and step one multiply-add and one division,
    with ``sqrt(v0)`` taken once: exact (eps included), the dense loop's result to rounding.

    *float32 tables*: the steps in segments over which ``r`` (a row scalar, falling) stays within
    ``r0 (1 +- s)``, ``s = _SEGMENT_SPREAD``. With ``delta_t = r_t / r0 - 1``, ``q = 1 / (y r0 + eps)``
    and ``z = y r0 q`` (in [0, 1): no condition on eps or v), ``1 / (y r_t + eps) = q sum_n (-z delta_t)^n``,
    so a segment with decay product ``D`` moves the row by

    ``p <- p D - m0 q sum_n (-z)^n B_n``,   ``B_n = sum_t a_t delta_t^n (prod of the d after t)``.

    The ``B_n`` (6 terms; the rest is below ``s^6 = 1.6e-8`` of the move) are row scalars summed in
    float64 over the segment's steps, so per element a segment costs one division and a few
    multiply-adds instead of one division per step.

    The row and its bias are copied into scratch rows ``pw, pm, prv`` (weights, ``m0``, ``sqrt(v0)``)
    padded to a multiple of ``_LANES`` (padding 0, 0, 1: it stays 0), and the element loops run over
    whole blocks of ``_LANES``: with k = 50 a plain loop over 50 elements is left to LLVM's 4-wide
    remainder loop. Segments depend only on the row's missed steps, the same however an epoch is
    cut into calls.
    """
    if first >= stop:
        return
    T = w.dtype.type
    k = w.shape[1]
    padded = pw.shape[0]
    for j in range(k):
        pw[j] = w[row, j]
        pm[j] = m[row, j]
        prv[j] = math.sqrt(v[row, j])
    pw[k] = wb[row, 0]
    pm[k] = mb[row, 0]
    prv[k] = math.sqrt(vb[row, 0])
    eps_ = T(eps)
    prod_mom = 1.0
    root_decay_v = 1.0
    if T(0.1) == 0.1:  # float64: the exact recurrence
        for q in range(first, stop):
            prod_mom *= moms[q]
            root_decay_v *= root_sqr_mom
            d = T(decay[q])
            a = T(step_size[q] * prod_mom)
            r = T(root_decay_v * inv_root_debias2[q])
            for j in range(padded):
                pw[j] = pw[j] * d - a * pm[j] / (prv[j] * r + eps_)
    else:
        low = (1.0 - _SEGMENT_SPREAD) / (1.0 + _SEGMENT_SPREAD)  # r may fall to low * (segment's first r)
        q = first
        while q < stop:
            r = root_decay_v * root_sqr_mom * inv_root_debias2[q]
            r_min = r * low
            r0 = r / (1.0 + _SEGMENT_SPREAD)  # r / r0 - 1 runs from spread down to -spread
            inv_r0 = 1.0 / r0
            b0 = b1 = b2 = b3 = b4 = b5 = 0.0
            prod_decay = 1.0
            while q < stop:
                r = root_decay_v * root_sqr_mom * inv_root_debias2[q]
                if r < r_min:
                    break
                root_decay_v *= root_sqr_mom
                prod_mom *= moms[q]
                d = decay[q]
                prod_decay *= d
                a = step_size[q] * prod_mom
                dl = r * inv_r0 - 1.0
                b0 = b0 * d + a
                a *= dl
                b1 = b1 * d + a
                a *= dl
                b2 = b2 * d + a
                a *= dl
                b3 = b3 * d + a
                a *= dl
                b4 = b4 * d + a
                a *= dl
                b5 = b5 * d + a
                q += 1
            r0_ = T(r0)
            dd = T(prod_decay)
            c0, c1, c2, c3, c4, c5 = T(b0), T(b1), T(b2), T(b3), T(b4), T(b5)
            for j in range(padded):
                y = prv[j] * r0_
                inv = T(1.0) / (y + eps_)
                z = -(y * inv)
                series = ((((c5 * z + c4) * z + c3) * z + c2) * z + c1) * z + c0
                pw[j] = pw[j] * dd - pm[j] * inv * series
    m_scale = T(prod_mom)
    v_scale = T(sqr_mom ** (stop - first))
    for j in range(k):
        w[row, j] = pw[j]
        m[row, j] *= m_scale
        v[row, j] *= v_scale
    wb[row, 0] = pw[k]
    mb[row, 0] *= m_scale
    vb[row, 0] *= v_scale


@njit(cache=True, inline="always")
def _sgd_catch_up(w, m, wb, mb, row, first, stop, decay, lrs, moms, use_mom):
    r"""Apply the missed exact-mode SGD steps ``first..stop-1`` to row ``row`` (weights and bias), g = 0.

    ``p_t = p_{t-1} d_t - lr_t m_t`` with ``m_t = mom_t m_{t-1} = m0 prod mom`` (momentum), or
    ``p_t = p_{t-1} d_t`` (none: one multiply by ``prod d``).
    """
    if first >= stop:
        return
    T = w.dtype.type
    k = w.shape[1]
    if not use_mom:
        prod_decay = 1.0
        for q in range(first, stop):
            prod_decay *= decay[q]
        d = T(prod_decay)
        for j in range(k):
            w[row, j] *= d
        wb[row, 0] *= d
        return
    prod_mom = 1.0
    for q in range(first, stop):
        prod_mom *= moms[q]
        d = T(decay[q])
        a = T(lrs[q] * prod_mom)
        for j in range(k):
            w[row, j] = w[row, j] * d - a * m[row, j]
        wb[row, 0] = wb[row, 0] * d - a * mb[row, 0]
    m_scale = T(prod_mom)
    for j in range(k):
        m[row, j] *= m_scale
    mb[row, 0] *= m_scale


def _train_epoch_deferred_body(
    params,
    exp_avg,
    exp_avg_sq,
    n_users,
    n_items,
    n_factors,
    users,
    items,
    ratings,
    order,
    bs,
    lrs,
    moms,
    step0,
    is_adam,
    use_mom,
    sqr_mom,
    eps,
    wd,
    decouple_wd,
    lo,
    hi,
    has_range,
    losses,
    done_u,
    done_i,
    replay,
    step_base,
    flush,
):
    r"""Exact-mode steps (every parameter moves every step), with untouched rows deferred.

    Same result as :func:`train_epoch_dense` (to rounding) once flushed, for decoupled weight
    decay or ``wd = 0`` only (with L2 decay an absent row's gradient ``wd p`` is not zero; the
    caller must use the dense kernel then). A row absent from a batch has g = 0, so its update
    depends only on the step's scalars and its own state: each user and item row (its bias riding
    with it) records in ``done_u`` / ``done_i`` how many steps it has had. Step ``s``:

    1. every row the batch touches is caught up to ``s`` (:func:`_adam_catch_up`,
       :func:`_sgd_catch_up`: the missed steps replayed from registers, no gradient read);
    2. forward and backward into a compact per-batch gradient (as the sparse kernel);
    3. the dense update's arithmetic on the touched rows with their gradient; ``done = s + 1``.

    The deferred state lives in the caller's arrays, so one epoch may run as several calls
    (``step0`` advancing; the learner's progress bar) and give the same floats, bit for bit, as one
    call: a row is replayed only where it is next touched or at the flush, over the same steps
    with the same scalars, wherever the calls are cut. Steps are counted from ``step_base``, the
    optimiser step count before the first deferred step (the first call's ``step0``): this call's
    step ``s`` is step ``step0 - step_base + s`` of the deferral.

    * ``done_u`` (n_users), ``done_i`` (n_items), int64: steps each row has had; zero at the
      first call.
    * ``replay``, float64 ``(4, n)`` with ``n >= step0 - step_base + n_steps``: per step of the
      deferral, the replay's scalars ``d_t = 1 - lr_t wd``, ``a_t = lr_t / (1 - mom_t^t)`` (Adam) or
      ``lr_t`` (SGD), ``mom_t`` and ``1 / sqrt(1 - sqr_mom^t)``. This call writes its own steps' column;
      later calls read the earlier ones.
    * ``flush``: bring every row up to the last step at the end (the call that ends the epoch).
      A divergence stop (a NaN/inf loss; that step's update is not applied) always flushes.

    Arguments before ``losses`` and the return value as :func:`train_epoch_dense` (no gradient buffer).
    """
    u_weight, i_weight, u_bias, i_bias = _tables2d(params, n_users, n_items, n_factors)
    mu, mi, mub, mib = _tables2d(exp_avg, n_users, n_items, n_factors)
    vu, vi, vub, vib = _tables2d(exp_avg_sq, n_users, n_items, n_factors)
    T = params.dtype.type
    k = n_factors
    n_steps = order.shape[0] // bs
    off = step0 - step_base  # this call's step s is step off + s of the deferral
    # Per-step scalars of the missed-step replay, in float64 (rounded to T where used).
    for s in range(n_steps):
        t = step0 + s + 1
        replay[0, off + s] = 1.0 - lrs[s] * wd if decouple_wd else 1.0
        replay[1, off + s] = lrs[s] / (1.0 - moms[s] ** t) if is_adam else lrs[s]
        replay[2, off + s] = moms[s]
        replay[3, off + s] = 1.0 / math.sqrt(1.0 - sqr_mom**t) if is_adam else 1.0
    decay = replay[0]
    step_size = replay[1]  # lr for SGD
    step_moms = replay[2]
    inv_root_debias2 = replay[3]
    root_sqr_mom = math.sqrt(sqr_mom)
    # Scratch rows of the replay (weights + bias, m0, sqrt(v0)), zero-padded to whole vector blocks.
    padded = (k + 1 + _LANES - 1) // _LANES * _LANES
    pw = np.zeros(padded, dtype=params.dtype)
    pm = np.zeros(padded, dtype=params.dtype)
    prv = np.ones(padded, dtype=params.dtype)  # padding 1, so the float32 replay's 1 / (y r0 + eps) stays finite
    slot_u = np.full(n_users, -1, dtype=np.int64)
    slot_i = np.full(n_items, -1, dtype=np.int64)
    rows_u = np.empty(bs, dtype=np.int64)
    rows_i = np.empty(bs, dtype=np.int64)
    gu = np.empty((bs, k), dtype=params.dtype)
    gi = np.empty((bs, k), dtype=params.dtype)
    gub = np.empty((bs, 1), dtype=params.dtype)
    gib = np.empty((bs, 1), dtype=params.dtype)
    scale = 2.0 / bs
    n_done = n_steps
    diverged = False
    for s in range(n_steps):
        now = off + s
        nu = 0
        ni = 0
        loss = 0.0
        for r in range(bs):
            row = order[s * bs + r]
            u = users[row]
            i = items[row]
            su = slot_u[u]
            if su < 0:
                su = nu
                slot_u[u] = su
                rows_u[su] = u
                nu += 1
                gu[su, :] = 0.0
                gub[su, 0] = 0.0
                if is_adam:
                    _adam_catch_up(
                        u_weight,
                        mu,
                        vu,
                        u_bias,
                        mub,
                        vub,
                        u,
                        done_u[u],
                        now,
                        decay,
                        step_size,
                        step_moms,
                        root_sqr_mom,
                        inv_root_debias2,
                        sqr_mom,
                        eps,
                        pw,
                        pm,
                        prv,
                    )
                else:
                    _sgd_catch_up(u_weight, mu, u_bias, mub, u, done_u[u], now, decay, step_size, step_moms, use_mom)
                done_u[u] = now
            si = slot_i[i]
            if si < 0:
                si = ni
                slot_i[i] = si
                rows_i[si] = i
                ni += 1
                gi[si, :] = 0.0
                gib[si, 0] = 0.0
                if is_adam:
                    _adam_catch_up(
                        i_weight,
                        mi,
                        vi,
                        i_bias,
                        mib,
                        vib,
                        i,
                        done_i[i],
                        now,
                        decay,
                        step_size,
                        step_moms,
                        root_sqr_mom,
                        inv_root_debias2,
                        sqr_mom,
                        eps,
                        pw,
                        pm,
                        prv,
                    )
                else:
                    _sgd_catch_up(i_weight, mi, i_bias, mib, i, done_i[i], now, decay, step_size, step_moms, use_mom)
                done_i[i] = now
            x = _dot(u_weight, i_weight, u, i)
            x += u_bias[u, 0] + i_bias[i, 0]
            err, dx = _error_and_dx(x, ratings[row], lo, hi, has_range, scale)
            loss += err * err
            # dx stays float64, as in forward_backward, so the gradient rounds as the dense one.
            for j in range(k):
                pu = u_weight[u, j]
                qi = i_weight[i, j]
                gu[su, j] += dx * qi
                gi[si, j] += dx * pu
            gub[su, 0] += dx
            gib[si, 0] += dx
        losses[s] = loss / bs
        for slot in range(nu):
            slot_u[rows_u[slot]] = -1
        for slot in range(ni):
            slot_i[rows_i[slot]] = -1
        if not math.isfinite(losses[s]):
            # Diverged: stop before the update, with every row at step s (caught up below).
            n_done = s + 1
            diverged = True
            break
        lr = lrs[s]
        mom = moms[s]
        t = step0 + s + 1
        d, l2 = T(decay[now]), T(0.0)
        b1, omb1, b2, omb2 = T(mom), T(1.0 - mom), T(sqr_mom), T(1.0 - sqr_mom)
        step_size_t = T(lr / (1.0 - mom**t)) if is_adam else T(0.0)
        debias2 = T(1.0 - sqr_mom**t) if is_adam else T(1.0)
        eps_ = T(eps)
        lr_ = T(lr)
        for slot in range(nu):
            u = rows_u[slot]
            if is_adam:
                _adam_row(u_weight, mu, vu, gu, u, slot, d, l2, b1, omb1, b2, omb2, step_size_t, debias2, eps_)
                _adam_row(u_bias, mub, vub, gub, u, slot, d, l2, b1, omb1, b2, omb2, step_size_t, debias2, eps_)
            else:
                _sgd_row(u_weight, mu, gu, u, slot, d, l2, lr_, b1, use_mom)
                _sgd_row(u_bias, mub, gub, u, slot, d, l2, lr_, b1, use_mom)
            done_u[u] = now + 1
        for slot in range(ni):
            i = rows_i[slot]
            if is_adam:
                _adam_row(i_weight, mi, vi, gi, i, slot, d, l2, b1, omb1, b2, omb2, step_size_t, debias2, eps_)
                _adam_row(i_bias, mib, vib, gib, i, slot, d, l2, b1, omb1, b2, omb2, step_size_t, debias2, eps_)
            else:
                _sgd_row(i_weight, mi, gi, i, slot, d, l2, lr_, b1, use_mom)
                _sgd_row(i_bias, mib, gib, i, slot, d, l2, lr_, b1, use_mom)
            done_i[i] = now + 1
    if not (flush or diverged):
        return n_done
    # Epoch boundary (or divergence stop): every row to the last step taken.
    last = off + (n_done - 1 if diverged else n_done)
    for u in range(n_users):
        if is_adam:
            _adam_catch_up(
                u_weight,
                mu,
                vu,
                u_bias,
                mub,
                vub,
                u,
                done_u[u],
                last,
                decay,
                step_size,
                step_moms,
                root_sqr_mom,
                inv_root_debias2,
                sqr_mom,
                eps,
                pw,
                pm,
                prv,
            )
        else:
            _sgd_catch_up(u_weight, mu, u_bias, mub, u, done_u[u], last, decay, step_size, step_moms, use_mom)
        done_u[u] = last
    for i in range(n_items):
        if is_adam:
            _adam_catch_up(
                i_weight,
                mi,
                vi,
                i_bias,
                mib,
                vib,
                i,
                done_i[i],
                last,
                decay,
                step_size,
                step_moms,
                root_sqr_mom,
                inv_root_debias2,
                sqr_mom,
                eps,
                pw,
                pm,
                prv,
            )
        else:
            _sgd_catch_up(i_weight, mi, i_bias, mib, i, done_i[i], last, decay, step_size, step_moms, use_mom)
        done_i[i] = last
    return n_done


train_epoch_deferred = njit(**_HOT)(_train_epoch_deferred_body)


# --- sparse SGD one rating at a time (bs = 1): the fused fast path ----------------------------------
#: Lanes of the explicit vector chunk in :func:`_dot_chunk` (one AVX-512 register of float32).
CHUNK = 16


def _lane_indices(n, start=0):
    """The constant lane-index vector ``<start, ..., start + n - 1>`` that picks lanes in a shuffle."""
    return ir.Constant(ir.VectorType(ir.IntType(32), n), list(range(start, start + n)))


@intrinsic
def _dot_chunk(typingctx, flat, a, b):
    """``sum(flat[a:a+16] * flat[b:b+16])`` as one vector multiply and a fixed pairwise sum.

    Written in LLVM IR because Numba gives no other way to ask for it: LLVM's loop vectoriser takes
    64 float32 lanes a trip (four 16-lane registers), so for k = 50 or 64 its vector loop barely
    runs, and a loop over 16 fixed lanes is not vectorised either (the two rows may alias, for all
    LLVM knows). The sum is lanes 0-7 plus lanes 8-15, then 0-3 plus 4-7, and so on: a fixed order,
    so the result is deterministic (it differs from a left-to-right sum by float rounding only).
    """
    sig = flat.dtype(flat, a, b)

    def codegen(context, builder, signature, args):
        flat_type = signature.args[0]
        array = context.make_array(flat_type)(context, builder, args[0])
        vec_type = ir.VectorType(context.get_value_type(flat_type.dtype), CHUNK)
        align = flat_type.dtype.bitwidth // 8
        rows = []
        for index in args[1:]:
            ptr = cgutils.get_item_pointer(context, builder, flat_type, array, [index], wraparound=False)
            rows.append(builder.load(builder.bitcast(ptr, vec_type.as_pointer()), align=align))
        vec, n = builder.fmul(rows[0], rows[1]), CHUNK
        while n > 1:
            n //= 2
            vec = builder.fadd(
                builder.shuffle_vector(vec, vec, _lane_indices(n)),
                builder.shuffle_vector(vec, vec, _lane_indices(n, n)),
            )
        return builder.extract_element(vec, ir.Constant(ir.IntType(32), 0))

    return sig, codegen


@njit(cache=True, inline="always")
def _dot_rows(flat, a, b, k):
    """``flat[a:a+k] . flat[b:b+k]`` summed in ``flat``'s dtype: 16-lane chunks, then the last ``k % 16``.

    The per-rating kernel's dot product. A plain loop over k = 50 float32 costs about 20 ns a
    rating (a scalar chain: see :func:`_dot_chunk` for why it is not vectorised); chunks cost about 10.
    """
    tail = k - k % CHUNK
    x = flat.dtype.type(0.0)
    for j in range(0, tail, CHUNK):
        x += _dot_chunk(flat, a + j, b + j)
    for j in range(tail, k):
        x += flat[a + j] * flat[b + j]
    return x


@njit(cache=True)
def balanced_groups(codes, n_codes, n_groups):
    """``group[code]`` for ``n_groups`` contiguous code ranges holding about equal numbers of ``codes``.

    Contiguous, so that a group's rows are one stretch of the table (cache- and TLB-friendly);
    cut at equal shares of the ratings, not of the codes, because in real data the codes follow
    the popularity (ML-100k's low item codes are its most rated films): equal code ranges left one
    of two threads with 87% of an epoch's ratings.
    """
    counts = np.zeros(n_codes, dtype=np.int64)
    for s in range(codes.shape[0]):
        counts[codes[s]] += 1
    group = np.empty(n_codes, dtype=np.int32)
    total, seen = codes.shape[0], 0
    for code in range(n_codes):
        # the group of the code's middle rating, so that a code heavier than a share is not split off late
        group[code] = min(n_groups - 1, (seen + counts[code] // 2) * n_groups // max(total, 1))
        seen += counts[code]
    return group


@njit(cache=True)
def _stratum_positions(g):
    """``position[c * g + d]``: where block ``(c, d)`` sits stratum-major: ``t * g + c`` for ``d = (c + t) % g``."""
    position = np.empty(g * g, dtype=np.int64)
    for t in range(g):
        for c in range(g):
            position[c * g + (c + t) % g] = t * g + c
    return position


@njit(cache=True)
def block_index(users, items, user_group, item_group, n_groups, block):
    """Each rating's block for stratified per-rating SGD; fills ``block`` and returns ``block_start``.

    Block ``(c, d)`` holds the ratings of user group ``c`` and item group ``d`` (``user_group[u]``,
    ``item_group[i]``: see :func:`balanced_groups`). Stratum ``t`` is the blocks
    ``(c, (c + t) % n_groups)`` for every ``c``: they share no user and no item, so threads can train
    them at once (the stratified SGD of DSGD and LIBMF). Blocks are laid out stratum by stratum:
    block ``(c, (c + t) % n_groups)`` is the ``t * n_groups + c``-th, and ``block[r]`` is that place for
    rating ``r``. ``block_start[p]`` is where the ``p``-th block starts when all the ratings are
    laid out (:func:`block_layout`); the last entry is the number of ratings. Made once a fit: the
    training set does not change between epochs. ``block`` may be any integer dtype holding
    ``n_groups**2`` (uint16 at 25M ratings: 50 MB).
    """
    g = n_groups
    position = _stratum_positions(g)
    block_start = np.zeros(g * g + 1, dtype=np.int64)
    for r in range(users.shape[0]):
        p = position[user_group[users[r]] * g + item_group[items[r]]]
        block[r] = p
        block_start[p + 1] += 1
    for p in range(g * g):
        block_start[p + 1] += block_start[p]
    return block_start


@njit(cache=True)
def block_layout(order, block, n_blocks, blocked):
    """``order`` sorted by block (``block[order[s]]``), stably, into ``blocked``; returns ``block_start``.

    Each block keeps ``order``'s order (a counting sort); the ``p``-th block is
    ``blocked[block_start[p]:block_start[p + 1]]``, and ``blocked`` may be longer than ``order``
    (a reused buffer) but must not overlap it. ``order`` may be any part of the ratings (the
    learner's progress bar passes an epoch in pieces); an empty ``order`` stands for all of them,
    ``0..n-1`` (no permutation array needed at 25M ratings).
    """
    n = block.shape[0] if order.shape[0] == 0 else order.shape[0]
    block_start = np.zeros(n_blocks + 1, dtype=np.int64)
    for s in range(n):
        block_start[block[s if order.shape[0] == 0 else order[s]] + 1] += 1
    for p in range(n_blocks):
        block_start[p + 1] += block_start[p]
    fill = block_start[:-1].copy()
    for s in range(n):
        row = s if order.shape[0] == 0 else order[s]
        p = block[row]
        blocked[fill[p]] = row
        fill[p] += 1
    return block_start


@njit(cache=True, inline="always")
def _splitmix64(state):
    """One step of splitmix64 (Steele, Lea, Flood 2014): ``(new_state, 64 random bits)``."""
    state = state + np.uint64(0x9E3779B97F4A7C15)
    z = state
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return state, z ^ (z >> np.uint64(31))


def _shuffle_blocks_body(blocked, block_start, seed):
    """Shuffle each block of ``blocked`` in place (Fisher-Yates), the blocks on the Numba threads.

    Block ``p`` draws from its own splitmix64 stream, started from ``seed`` and ``p``, so the result
    depends on ``seed`` only, not on the thread count or timing. Each draw is a 53-bit uniform
    scaled to the range (a bias below 2^-30 at 80k ratings a block, and no division).
    """
    for p in prange(block_start.shape[0] - 1):
        first = block_start[p]
        state, _ = _splitmix64(np.uint64(seed) ^ (np.uint64(p) * np.uint64(0xD1B54A32D192ED03)))
        for s in range(block_start[p + 1] - 1, first, -1):
            state, bits = _splitmix64(state)
            j = first + np.int64((bits >> np.uint64(11)) * (1.0 / 9007199254740992.0) * (s - first + 1))
            blocked[s], blocked[j] = blocked[j], blocked[s]


shuffle_blocks = njit(cache=True)(_shuffle_blocks_body)
shuffle_blocks_parallel = njit(parallel=True, cache=True)(_twin(_shuffle_blocks_body))


@njit(cache=True)
def sort_by_block(users, items, ratings, user_group, item_group, n_groups):
    """Reorder ``users, items, ratings`` **in place** into the block layout; returns ``block_start``.

    The same blocks, in the same stratum-major layout, as :func:`block_index` (whose
    ``block_start`` this equals), but the ratings themselves move, so that an epoch reads them in
    sequence (an empty ``order``) and no index array is needed: at 25M ratings this saves the
    100 MB layout and a random read per rating. An in-place counting sort (American flag sort):
    each rating is swapped straight into the next free slot of its block. Within a block the
    ratings end up in an order fixed by the data, as LIBMF trains after its one shuffle.
    """
    g = n_groups
    position = _stratum_positions(g)
    block_start = np.zeros(g * g + 1, dtype=np.int64)
    for r in range(users.shape[0]):
        block_start[position[user_group[users[r]] * g + item_group[items[r]]] + 1] += 1
    for p in range(g * g):
        block_start[p + 1] += block_start[p]
    fill = block_start[:-1].copy()
    for p in range(g * g):
        while fill[p] < block_start[p + 1]:
            r = fill[p]
            q = position[user_group[users[r]] * g + item_group[items[r]]]
            while q != p:  # rating r belongs to block q: swap it into q's next free slot
                dest = fill[q]
                fill[q] += 1
                users[r], users[dest] = users[dest], users[r]
                items[r], items[dest] = items[dest], items[r]
                ratings[r], ratings[dest] = ratings[dest], ratings[r]
                q = position[user_group[users[r]] * g + item_group[items[r]]]
            fill[p] += 1
    return block_start


def _train_epoch_sgd_per_rating_body(
    params,
    n_users,
    n_items,
    n_factors,
    users,
    items,
    ratings,
    order,
    block_start,
    n_groups,
    lrs,
    wd,
    decouple_wd,
    lo,
    hi,
    has_range,
    losses,
):
    r"""One epoch of sparse-mode plain SGD with batches of one rating, fused; step ``s`` is rating ``order[s]``.

    The same algorithm as :func:`train_epoch_sparse` with ``bs = 1``, SGD and no momentum
    (``reference.sparse_sgd_step`` on a batch of one), written as one pass per rating with no
    gradient buffer and no slot maps. With ``err = pred - y``, ``dx = 2 err (hi - lo) s (1 - s)``
    (``dx = 2 err`` without a range) and ``lr = lrs[s]``, both rows move at once from their old values:

    ``P[u] <- P[u] shrink - lr dx Q[i]``,   ``Q[i] <- Q[i] shrink - lr dx P[u]``,
    ``b[u] <- b[u] shrink - lr dx``,        ``c[i] <- c[i] shrink - lr dx``,   ``shrink = 1 - lr wd``.

    For plain SGD decoupled and L2 weight decay are the same update (``p (1 - lr wd) - lr g`` either
    way), so ``decouple_wd`` changes nothing here. This is cornac's / LIBMF's per-rating SGD on
    fastai's sigmoid model. It differs from the general kernel by float rounding only: the dot
    product is summed in the tables' dtype in 16-lane chunks (:func:`_dot_rows`) and the decay is
    folded into one multiply. ``losses[s]`` is rating ``s``'s squared error.

    ``n_groups = 1`` (``block_start = [0, n]``) is the plain serial epoch over ``order``; an empty
    ``order`` means the ratings in the order they are stored (after :func:`sort_by_block`). With
    ``n_groups = g > 1``, ``order`` and ``block_start`` come from :func:`block_layout` and
    :func:`block_index`: the epoch
    runs ``g`` strata one after another, and in each the ``g`` blocks, which share no row, run on
    the Numba threads (``prange``; the serial build runs them in turn). The result is
    deterministic for any thread timing, and equal to the serial epoch over the same ``order``.

    ``lrs`` holds one learning rate per step, or a single one for every step; ``losses`` one slot
    per step, or none (empty: nothing is recorded; at 25M ratings the per-step arrays would be
    200 MB each). Returns the number of steps done: all, or (the position of the first non-finite
    loss) + 1 (training stops there, before its update; with ``g > 1`` other blocks of that
    stratum may finish theirs).
    """
    u_weight, i_weight, u_bias, i_bias = split_flat(params, n_users, n_items, n_factors)
    T = params.dtype.type
    k = n_factors
    g = n_groups
    in_order = order.shape[0] == 0  # empty order: the ratings as stored (sorted by sort_by_block)
    n_steps = users.shape[0] if in_order else order.shape[0]
    i_start = n_users * k
    per_step_lr = lrs.shape[0] > 1
    record = losses.shape[0] > 0
    # In a shuffled order every rating also reads users/items/ratings at a random row: once those
    # arrays or the tables outgrow the caches, prefetch (codes 8 ratings ahead, rows 4 ahead).
    data_bytes = users.size * users.itemsize + items.size * items.itemsize + ratings.size * ratings.itemsize
    prefetch = params.size * params.itemsize + data_bytes > PREFETCH_MIN_BYTES
    first_bad = np.full(g, n_steps, dtype=np.int64)
    span, lo_, two = T(hi - lo), T(lo), T(2.0)
    for t in range(g):
        for c in prange(g):
            first = block_start[t * g + c]
            last = block_start[t * g + c + 1]
            for s in range(first, last):
                if prefetch and s + 2 * PREFETCH_AHEAD < last:
                    if not in_order:
                        ahead = order[s + 2 * PREFETCH_AHEAD]
                        _prefetch(users, ahead)
                        _prefetch(items, ahead)
                        _prefetch(ratings, ahead)
                    ahead = s + PREFETCH_AHEAD if in_order else order[s + PREFETCH_AHEAD]
                    _prefetch_row(params, users[ahead] * k, k)
                    _prefetch_row(params, i_start + items[ahead] * k, k)
                row = s if in_order else order[s]
                u = users[row]
                i = items[row]
                x = _dot_rows(params, u * k, i_start + i * k, k) + u_bias[u] + i_bias[i]
                if has_range:
                    # Branch-free: for x below about -88, exp(-x) is inf in float32 and sg is exactly 0.
                    sg = T(1.0) / (T(1.0) + math.exp(-x))
                    err = lo_ + span * sg - ratings[row]
                    dx = two * err * span * sg * (T(1.0) - sg)
                else:
                    err = x - ratings[row]
                    dx = two * err
                loss = err * err
                if record:
                    losses[s] = loss
                if not math.isfinite(loss):
                    first_bad[c] = s  # diverged: stop before this rating's update
                    break
                lr = lrs[s] if per_step_lr else lrs[0]
                shrink = T(1.0 - lr * wd)
                step = T(lr) * dx
                p = u_weight[u]
                q = i_weight[i]
                for j in range(k):
                    pu = p[j]
                    qi = q[j]
                    p[j] = pu * shrink - step * qi
                    q[j] = qi * shrink - step * pu
                u_bias[u] = u_bias[u] * shrink - step
                i_bias[i] = i_bias[i] * shrink - step
        if first_bad.min() < n_steps:
            break
    bad = first_bad.min()
    return n_steps if bad == n_steps else bad + 1


train_epoch_sgd_per_rating = njit(**_HOT)(_train_epoch_sgd_per_rating_body)
train_epoch_sgd_per_rating_parallel = njit(parallel=True, **_HOT)(_twin(_train_epoch_sgd_per_rating_body))
