"""``numba.cuda`` twins of the CPU kernels in ``kernels/cpu.py``: same names, same argument order.

Every kernel is a pure function of device arrays and scalars. Where a CPU kernel *returns* a
number (a batch loss, an MSE), its CUDA twin writes it into a small float64 output array that the
caller zeroes first, because a kernel cannot return a value.

Design (see ``docs/cuda.md``):

* **One thread per rating** in ``forward_backward``: thread ``r`` computes the logit, the error and
  ``dx_r``, then scatter-adds ``dx_r Q[i_r]`` into ``dP[u_r]`` (and so on) with ``cuda.atomic.add``,
  so a user or item that repeats in the batch gets the sum of its contributions, as
  ``np.add.at`` does in ``reference.backward``. The batch loss is summed per block in shared
  memory (float64) and one atomic add per block lands it in the output.
* **One thread per parameter element** in the dense updates (grid-stride loops), which also zero
  the gradient they consumed: update and zeroing are one pass over the flat buffer.
* **Sparse (lazy) updates** touch only the rows of the batch. A row that appears twice in the batch
  must be updated once, so the forward pass records, for each user and item, one batch position
  that "owns" it (``user_owner[u] = r``; concurrent plain stores leave exactly one of the ``r``);
  the update then runs one thread per (batch position, column) and skips positions that do not own
  their row.
* **Whole epochs in one launch**: ``train_epoch_dense`` and ``train_epoch_sparse`` are persistent
  cooperative kernels. Each step is a forward/backward phase, a grid-wide barrier
  (``cuda.cg.this_grid().sync()``), an update phase, and another barrier, so a 1,250-step epoch
  costs one launch instead of 2,500 and the host never waits on the device inside an epoch.
  ``gather_rows`` and the twin kernels give the same epoch as a host loop of two launches per
  step (three in sparse mode), the fallback where a cooperative launch is unavailable.

``HAS_CUDA`` is decided once, at import: numba-cuda imports and ``cuda.is_available()`` (Numba's
CUDA simulator, ``NUMBA_ENABLE_CUDASIM=1``, counts as available). Without numba-cuda this module
still imports; its kernels then raise when called.
"""

from __future__ import annotations

import math

try:  # numba-cuda is the optional ``cuda`` extra
    from numba import config, cuda, float64

    SIMULATOR = bool(config.ENABLE_CUDASIM)
    HAS_CUDA = bool(cuda.is_available())
except Exception:  # ImportError, or a broken driver/toolkit install: no CUDA, no crash
    cuda, float64 = None, None
    SIMULATOR = False
    HAS_CUDA = False

__all__ = [
    "HAS_CUDA",
    "SIMULATOR",
    "THREADS",
    "blocks_for",
    "cooperative_blocks",
    "forward_backward",
    "gather_rows",
    "predict",
    "score_items",
    "evaluate_mse",
    "adam_update_dense",
    "sgd_update_dense",
    "mark_rows",
    "adam_update_sparse",
    "sgd_update_sparse",
    "train_epoch_dense",
    "train_epoch_sparse",
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


_kernel = cuda.jit(cache=True) if cuda is not None else _Unavailable
_device = cuda.jit(device=True, cache=True) if cuda is not None else _Unavailable


def blocks_for(n: int, threads: int = THREADS) -> int:
    """Blocks needed to give each of ``n`` items its own thread (at least one block)."""
    return max(1, (int(n) + threads - 1) // threads)


def cooperative_blocks(kernel, args, threads: int = THREADS) -> int:
    """The most blocks a cooperative (grid-synchronising) launch of ``kernel(*args)`` may use.

    All blocks of a cooperative grid must be resident at once, so this is (blocks per SM) x (SMs).
    The simulator runs cooperative grids of one block only.
    """
    if SIMULATOR:
        return 1
    compiled = kernel.compile(tuple(kernel.typeof_pyval(a) for a in args))
    return max(1, int(compiled.max_cooperative_grid_blocks(threads)))


# --- device functions: the maths, shared by every kernel below --------------------------------
@_device
def _sigmoid(x):
    # Branch on the sign so that exp never overflows (as kernels/cpu.py does).
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    ex = math.exp(x)
    return ex / (1.0 + ex)


@_device
def _logit(u_weight, i_weight, u_bias, i_bias, u, i):
    """``x = P[u] . Q[i] + b[u] + c[i]``, accumulated in float64 like the CPU kernels."""
    x = 0.0
    for j in range(u_weight.shape[1]):
        x += u_weight[u, j] * i_weight[i, j]
    return x + u_bias[u] + i_bias[i]


@_device
def _prediction(x, lo, hi, has_range):
    if has_range:
        return lo + (hi - lo) * _sigmoid(x)
    return x


@_device
def _error_and_dx(x, y, lo, hi, has_range, scale):
    """``(pred - y, dL/dx)`` for logit ``x``: ``dx = scale (pred - y)(hi - lo) s (1 - s)``, ``scale = 2/B``."""
    if has_range:
        s = _sigmoid(x)
        err = lo + (hi - lo) * s - y
        return err, scale * err * (hi - lo) * s * (1.0 - s)
    err = x - y
    return err, scale * err


@_device
def _rating_forward_backward(
    u_weight, i_weight, u_bias, i_bias, u, i, y, lo, hi, has_range, scale, du_weight, di_weight, du_bias, di_bias
):
    """Squared error of one rating; atomically adds its gradient ``dx_r`` terms into the ``d*`` tables.

    ``dx = scale (pred - y)(hi - lo) s (1 - s)`` with ``scale = 2/B`` (``dx = scale (x - y)`` without range).
    """
    err, dx = _error_and_dx(_logit(u_weight, i_weight, u_bias, i_bias, u, i), y, lo, hi, has_range, scale)
    for j in range(u_weight.shape[1]):
        cuda.atomic.add(du_weight, (u, j), dx * i_weight[i, j])
        cuda.atomic.add(di_weight, (i, j), dx * u_weight[u, j])
    cuda.atomic.add(du_bias, u, dx)
    cuda.atomic.add(di_bias, i, dx)
    return err * err


@_device
def _tree_sum(buf, t, lane, width):
    """Sum, in place in the shared ``buf``, each run of ``width`` consecutive threads' values (``width`` a
    power of two; ``lane`` is this thread's place in its run). The run's total lands at ``buf[t - lane]``.
    Every thread of the block must call it (it synchronises the block)."""
    half = width // 2
    while half > 0:
        if lane < half:
            buf[t] += buf[t + half]
        cuda.syncthreads()
        half //= 2


@_device
def _block_sum(value):
    """Sum of ``value`` over the threads of this block (float64 tree in shared memory).

    Every thread of the block must call it; thread 0's return value is the total.
    """
    buf = cuda.shared.array(THREADS, float64)
    t = cuda.threadIdx.x
    buf[t] = value
    cuda.syncthreads()
    _tree_sum(buf, t, t, THREADS)
    total = buf[0]
    cuda.syncthreads()  # nobody overwrites buf (next call) before everyone has read the total
    return total


@_device
def _adam_element(params, grads, exp_avg, exp_avg_sq, j, step_size, debias2, decay, mom, sqr_mom, eps, wd, decouple_wd):
    """fastai's Adam on element ``j`` (see ``reference.adam_step``); also zeroes ``grads[j]``."""
    g = grads[j]
    p = params[j]
    if decouple_wd:
        p *= decay
    else:
        g += wd * p
    m = mom * exp_avg[j] + (1.0 - mom) * g
    v = sqr_mom * exp_avg_sq[j] + (1.0 - sqr_mom) * g * g
    exp_avg[j] = m
    exp_avg_sq[j] = v
    params[j] = p - step_size * m / (math.sqrt(v / debias2) + eps)
    grads[j] = 0.0


@_device
def _sgd_element(params, grads, exp_avg, j, lr, mom, decay, wd, decouple_wd, use_mom):
    """fastai's SGD on element ``j`` (see ``reference.sgd_step``); also zeroes ``grads[j]``."""
    g = grads[j]
    p = params[j]
    if decouple_wd:
        p *= decay
    else:
        g += wd * p
    if use_mom:
        m = mom * exp_avg[j] + g
        exp_avg[j] = m
        params[j] = p - lr * m
    else:
        params[j] = p - lr * g
    grads[j] = 0.0


@_device
def _step_constants(lr, mom, sqr_mom, wd, step):
    """Per-step scalars of the update, computed once per thread rather than once per element:
    ``(step_size, debias2, decay) = (lr / (1 - mom^t), 1 - sqr_mom^t, 1 - lr wd)``."""
    return lr / (1.0 - mom**step), 1.0 - sqr_mom**step, 1.0 - lr * wd


@_device
def _update_element(
    params,
    grads,
    exp_avg,
    exp_avg_sq,
    j,
    is_adam,
    use_mom,
    lr,
    mom,
    sqr_mom,
    eps,
    wd,
    decouple_wd,
    step_size,
    debias2,
    decay,
):
    """One optimiser step on element ``j``: Adam or SGD, chosen at run time by ``is_adam``."""
    if is_adam:
        _adam_element(
            params, grads, exp_avg, exp_avg_sq, j, step_size, debias2, decay, mom, sqr_mom, eps, wd, decouple_wd
        )
    else:
        _sgd_element(params, grads, exp_avg, j, lr, mom, decay, wd, decouple_wd, use_mom)


@_device
def _lazy_slot(n_factors, bs, idx):
    """Which (side, batch position, column) lazy-update thread ``idx`` takes: ``(side, r, c)``.

    Threads ``0 .. bs (k+1) - 1`` cover the users of the batch (side 0), the next ``bs (k+1)`` its
    items (side 1); within a side, thread ``r (k+1) + c`` takes batch position ``r``, column ``c``
    (``c == k``: the bias).
    """
    width = n_factors + 1
    side = idx // (bs * width)
    rest = idx - side * bs * width
    r = rest // width
    return side, r, rest - r * width


@_device
def _lazy_index(n_users, n_items, n_factors, u, i, user_owner, item_owner, side, r, c):
    """Flat index of the element at ``(side, r, c)`` whose batch position ``r`` holds user ``u`` and
    item ``i``, or -1 when ``r`` does not own that row (another position with the same row does)."""
    if side == 0:
        if user_owner[u] != r:
            return -1
        if c < n_factors:
            return u * n_factors + c
        return (n_users + n_items) * n_factors + u
    if item_owner[i] != r:
        return -1
    if c < n_factors:
        return n_users * n_factors + i * n_factors + c
    return (n_users + n_items) * n_factors + n_users + i


# --- the twins of kernels/cpu.py -----------------------------------------------------------------
@_kernel
def forward_backward(
    u_weight,
    i_weight,
    u_bias,
    i_bias,
    users,
    items,
    ratings,
    lo,
    hi,
    has_range,
    du_weight,
    di_weight,
    du_bias,
    di_bias,
    loss,
):
    """Batch MSE added to ``loss[0]``; its gradient *added* into ``d*`` (atomics: repeats add up).

    Launch with at least ``len(users)`` threads (``[blocks_for(B), THREADS]``). One thread per rating.
    """
    r = cuda.grid(1)
    B = users.shape[0]
    value = 0.0
    if r < B:
        value = _rating_forward_backward(
            u_weight,
            i_weight,
            u_bias,
            i_bias,
            users[r],
            items[r],
            ratings[r],
            lo,
            hi,
            has_range,
            2.0 / B,
            du_weight,
            di_weight,
            du_bias,
            di_bias,
        )
    total = _block_sum(value)
    if cuda.threadIdx.x == 0:
        cuda.atomic.add(loss, 0, total / B)


@_kernel
def predict(u_weight, i_weight, u_bias, i_bias, users, items, lo, hi, has_range, out):
    """``out[r] = lo + (hi - lo) sigmoid(P[u_r] . Q[i_r] + b[u_r] + c[i_r])`` (the logit without range)."""
    r = cuda.grid(1)
    if r < users.shape[0]:
        out[r] = _prediction(_logit(u_weight, i_weight, u_bias, i_bias, users[r], items[r]), lo, hi, has_range)


@_kernel
def score_items(u_weight, i_weight, u_bias, i_bias, user, lo, hi, has_range, out):
    """Top-N scoring: ``out[i]`` is the prediction for ``(user, i)``, for every item ``i``."""
    i = cuda.grid(1)
    if i < i_weight.shape[0]:
        out[i] = _prediction(_logit(u_weight, i_weight, u_bias, i_bias, user, i), lo, hi, has_range)


@_kernel
def evaluate_mse(u_weight, i_weight, u_bias, i_bias, users, items, ratings, lo, hi, has_range, out):
    """Exact MSE over all rows, added to ``out[0]``: per-block float64 partial sums, one atomic per block.

    Grid-stride, so any grid size works; ``blocks_for(n)`` blocks give one thread per row.
    """
    n = users.shape[0]
    total = 0.0
    for r in range(cuda.grid(1), n, cuda.gridsize(1)):
        err = (
            _prediction(_logit(u_weight, i_weight, u_bias, i_bias, users[r], items[r]), lo, hi, has_range) - ratings[r]
        )
        total += err * err
    total = _block_sum(total)
    if cuda.threadIdx.x == 0 and n > 0:
        cuda.atomic.add(out, 0, total / n)


@_kernel
def adam_update_dense(params, grads, exp_avg, exp_avg_sq, lr, mom, sqr_mom, eps, wd, decouple_wd, step):
    """fastai's Adam on every element of the flat buffer; ``step`` is t. Zeroes ``grads`` as it goes."""
    step_size, debias2, decay = _step_constants(lr, mom, sqr_mom, wd, step)
    for j in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        _adam_element(
            params, grads, exp_avg, exp_avg_sq, j, step_size, debias2, decay, mom, sqr_mom, eps, wd, decouple_wd
        )


@_kernel
def sgd_update_dense(params, grads, exp_avg, lr, mom, wd, decouple_wd, use_mom):
    """fastai's SGD on every element; ``use_mom`` is the optimiser's mom != 0. Zeroes ``grads`` as it goes."""
    decay = 1.0 - lr * wd
    for j in range(cuda.grid(1), params.shape[0], cuda.gridsize(1)):
        _sgd_element(params, grads, exp_avg, j, lr, mom, decay, wd, decouple_wd, use_mom)


@_kernel
def mark_rows(users, items, user_owner, item_owner):
    """Record one owning batch position per user and item of the batch: ``user_owner[users[r]] = r``.

    The epoch kernels do this inside their forward phase; the host-loop path and the tests launch
    it before a sparse update.
    """
    r = cuda.grid(1)
    if r < users.shape[0]:
        user_owner[users[r]] = r
        item_owner[items[r]] = r


@_kernel
def adam_update_sparse(
    params,
    grads,
    exp_avg,
    exp_avg_sq,
    n_users,
    n_items,
    n_factors,
    users,
    items,
    user_owner,
    item_owner,
    lr,
    mom,
    sqr_mom,
    eps,
    wd,
    decouple_wd,
    step,
):
    """Lazy Adam: only the rows of the batch (``users``, ``items``), each once; zeroes their gradient.

    Bias correction uses the global step ``step``. Launch with ``2 B (k+1)`` threads; ``*_owner``
    as written by ``mark_rows`` for this batch.
    """
    idx = cuda.grid(1)
    if idx < 2 * users.shape[0] * (n_factors + 1):
        side, r, c = _lazy_slot(n_factors, users.shape[0], idx)
        j = _lazy_index(n_users, n_items, n_factors, users[r], items[r], user_owner, item_owner, side, r, c)
        if j >= 0:
            step_size, debias2, decay = _step_constants(lr, mom, sqr_mom, wd, step)
            _adam_element(
                params, grads, exp_avg, exp_avg_sq, j, step_size, debias2, decay, mom, sqr_mom, eps, wd, decouple_wd
            )


@_kernel
def sgd_update_sparse(
    params,
    grads,
    exp_avg,
    n_users,
    n_items,
    n_factors,
    users,
    items,
    user_owner,
    item_owner,
    lr,
    mom,
    wd,
    decouple_wd,
    use_mom,
):
    """Lazy SGD: only the rows of the batch, each once; zeroes their gradient (see ``adam_update_sparse``)."""
    idx = cuda.grid(1)
    if idx < 2 * users.shape[0] * (n_factors + 1):
        side, r, c = _lazy_slot(n_factors, users.shape[0], idx)
        j = _lazy_index(n_users, n_items, n_factors, users[r], items[r], user_owner, item_owner, side, r, c)
        if j >= 0:
            _sgd_element(params, grads, exp_avg, j, lr, mom, 1.0 - lr * wd, wd, decouple_wd, use_mom)


# --- training: one step per launch (host loop) or one epoch per launch (cooperative) ---------------
@_device
def _split_flat(params, n_users, n_items, n_factors):
    """Views of the four tables inside the flat buffer (as ``cpu.split_flat``)."""
    a = n_users * n_factors
    b = a + n_items * n_factors
    c = b + n_users
    return (
        params[:a].reshape((n_users, n_factors)),
        params[a:b].reshape((n_items, n_factors)),
        params[b:c],
        params[c : c + n_items],
    )


@_device
def _step_forward_backward(
    params,
    grads,
    n_users,
    n_items,
    n_factors,
    users,
    items,
    ratings,
    order,
    bs,
    s,
    lo,
    hi,
    has_range,
    user_owner,
    item_owner,
    losses,
    group,
    thread,
    n_threads,
):
    """Forward/backward of step ``s`` (rows ``order[s bs : (s+1) bs]``): loss into ``losses[s]``.

    ``group`` threads work on one rating (a power of two dividing ``THREADS``; 32 = a warp): lane
    ``l`` takes columns ``l, l + group, ...``, so a warp reads a row of ``P`` and ``Q`` in one
    coalesced sweep instead of 32 threads each walking their own row. The partial dot products
    meet in a shared-memory tree; every lane then has ``x`` and scatter-adds its own columns.
    ``group = 1`` is plain one-thread-per-rating. Also records which batch position owns each user
    and item row (for the lazy update). Every thread of the launch must call it (barriers inside).
    """
    u_weight, i_weight, u_bias, i_bias = _split_flat(params, n_users, n_items, n_factors)
    du_weight, di_weight, du_bias, di_bias = _split_flat(grads, n_users, n_items, n_factors)
    # A block none of whose threads gets a rating (with a grid sized for the update phase, most
    # blocks) skips the phase. The test is uniform within a block, so the barriers stay safe.
    if cuda.blockIdx.x * cuda.blockDim.x >= bs * group:
        return
    buf = cuda.shared.array(THREADS, float64)
    t = cuda.threadIdx.x
    lane = t % group
    per_round = n_threads // group
    scale = 2.0 / bs
    value = 0.0
    # Every thread of the grid makes the same number of rounds, so all of them reach every barrier.
    for rnd in range((bs + per_round - 1) // per_round):
        r = (rnd * n_threads + thread) // group
        active = r < bs
        u = 0
        i = 0
        row = 0
        partial = 0.0
        if active:
            row = order[s * bs + r]
            u = users[row]
            i = items[row]
            for j in range(lane, n_factors, group):
                partial += u_weight[u, j] * i_weight[i, j]
        buf[t] = partial
        cuda.syncthreads()
        _tree_sum(buf, t, lane, group)
        if active:
            err, dx = _error_and_dx(buf[t - lane] + u_bias[u] + i_bias[i], ratings[row], lo, hi, has_range, scale)
            for j in range(lane, n_factors, group):
                cuda.atomic.add(du_weight, (u, j), dx * i_weight[i, j])
                cuda.atomic.add(di_weight, (i, j), dx * u_weight[u, j])
            if lane == 0:
                cuda.atomic.add(du_bias, u, dx)
                cuda.atomic.add(di_bias, i, dx)
                user_owner[u] = r
                item_owner[i] = r
                value += err * err
        cuda.syncthreads()  # everyone has read buf before the next round overwrites it
    total = _block_sum(value)
    if t == 0:
        cuda.atomic.add(losses, s, total / bs)


@_kernel
def gather_rows(users, items, ratings, order, out_users, out_items, out_ratings):
    """``out_*[r] = *[order[r]]`` for the first ``len(out_users)`` positions of ``order``.

    The host-loop path gathers a whole epoch's batches with one launch, then runs the twin kernels
    above on consecutive slices of ``out_*``.
    """
    r = cuda.grid(1)
    if r < out_users.shape[0]:
        row = order[r]
        out_users[r] = users[row]
        out_items[r] = items[row]
        out_ratings[r] = ratings[row]


@_device
def _epoch(
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
    sparse,
    user_owner,
    item_owner,
    group,
):
    """The body of both epoch kernels: per step, forward/backward, barrier, update (+ zero grads), barrier."""
    grid = cuda.cg.this_grid()
    thread = cuda.grid(1)
    n_threads = cuda.gridsize(1)
    n_steps = order.shape[0] // bs
    for s in range(thread, n_steps, n_threads):
        losses[s] = 0.0
    grid.sync()
    n = params.shape[0]
    n_sparse = 2 * bs * (n_factors + 1)
    for s in range(n_steps):
        _step_forward_backward(
            params,
            grads,
            n_users,
            n_items,
            n_factors,
            users,
            items,
            ratings,
            order,
            bs,
            s,
            lo,
            hi,
            has_range,
            user_owner,
            item_owner,
            losses,
            group,
            thread,
            n_threads,
        )
        grid.sync()
        # Every thread reads the same finished loss, so all of them leave together (no barrier deadlock).
        diverged = not math.isfinite(losses[s])
        lr = lrs[s]
        mom = moms[s]
        step_size, debias2, decay = _step_constants(lr, mom, sqr_mom, wd, step0 + s + 1)
        if sparse:
            for idx in range(thread, n_sparse, n_threads):
                side, r, c = _lazy_slot(n_factors, bs, idx)
                row = order[s * bs + r]
                j = _lazy_index(n_users, n_items, n_factors, users[row], items[row], user_owner, item_owner, side, r, c)
                if j >= 0:
                    if diverged:
                        grads[j] = 0.0
                    else:
                        _update_element(
                            params,
                            grads,
                            exp_avg,
                            exp_avg_sq,
                            j,
                            is_adam,
                            use_mom,
                            lr,
                            mom,
                            sqr_mom,
                            eps,
                            wd,
                            decouple_wd,
                            step_size,
                            debias2,
                            decay,
                        )
        else:
            for j in range(thread, n, n_threads):
                if diverged:
                    grads[j] = 0.0
                else:
                    _update_element(
                        params,
                        grads,
                        exp_avg,
                        exp_avg_sq,
                        j,
                        is_adam,
                        use_mom,
                        lr,
                        mom,
                        sqr_mom,
                        eps,
                        wd,
                        decouple_wd,
                        step_size,
                        debias2,
                        decay,
                    )
        if diverged:
            # Stop before the update, as the CPU kernel does; the host cuts the losses after step s.
            return
        grid.sync()


@_kernel
def train_epoch_dense(
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
    user_owner,
    item_owner,
    group,
):
    """One epoch of exact-mode training in one cooperative launch (twin of ``cpu.train_epoch_dense``).

    Same arguments as the CPU kernel, plus ``user_owner``/``item_owner`` (int32, one slot per user
    and item: scratch for the row bookkeeping the forward phase shares with the sparse kernel) and
    ``group``, the threads per rating in the forward phase (see ``_step_forward_backward``).
    ``losses[s]`` gets step ``s``'s batch loss; on a NaN/inf loss the epoch stops before that
    step's update and the later entries stay 0 (the host cuts the array after the first
    non-finite one). ``grads`` must be zero on entry and is zero on exit. Launch with at most
    ``cooperative_blocks(...)`` blocks of ``THREADS``.
    """
    _epoch(
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
        False,
        user_owner,
        item_owner,
        group,
    )


@_kernel
def train_epoch_sparse(
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
    user_owner,
    item_owner,
    group,
):
    """One epoch of sparse (lazy) training in one cooperative launch.

    Per step: accumulate the batch gradient, then update only the users and items of the batch,
    each once (decay, moments, step; Adam's bias correction from the global step), and zero their
    gradient rows. Arguments and stopping as in ``train_epoch_dense``.
    """
    _epoch(
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
        True,
        user_owner,
        item_owner,
        group,
    )
