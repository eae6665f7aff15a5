"""The CPU kernels against the NumPy reference: float32 dense updates, sparse (lazy) mode, per-rating
SGD and its blocks, the parallel twins. Correctness only; timings live in benchmarks/. The backends
and the learner on top of these kernels are checked by ``test_backend_conformance.py``."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from kernel_problem import N_ITEMS, N_USERS, NO_RANGE, RANGE, SHAPE, K, hyper, layout, per_rating_epoch, problem
from kernel_problem import run_epoch as _run_epoch

from mfscratch import reference
from mfscratch.kernels import cpu
from mfscratch.kernels.cpu._llvm import PREFETCH_MIN_BYTES, dot_rows, update_rows
from mfscratch.kernels.records import BlockLayout, EpochOut, Hyper, Ratings, Shape, step_scalars
from mfscratch.model import EmbeddingDotBias
from mfscratch.synthetic import synthetic_dataloaders, synthetic_ratings


def _state(dtype, seed=0, n=200):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(dtype)
    g = (rng.standard_normal(n) * (rng.random(n) < 0.3)).astype(dtype)  # mostly zero, like a batch
    m = (rng.standard_normal(n) * 0.1).astype(dtype)
    v = (rng.random(n) * 0.1).astype(dtype)
    return p, g, m, v


# --- dense updates in float32 ---------------------------------------------------------------------
@pytest.mark.parametrize("decouple_wd", [True, False])
def test_float32_adam_rounds_as_numpy(decouple_wd):
    """Same operations in the same order on float32: the kernel equals NumPy bit for bit."""
    p, g, m, v = _state(np.float32)
    want = [a.copy() for a in (p, m, v)]
    for t in (1, 2, 7):
        reference.adam_step(want[0], g, want[1], want[2], t, 3e-3, 0.87, 0.99, 1e-5, 0.1, decouple_wd)
        cpu.adam_update_dense(p, g, m, v, step_scalars(3e-3, 0.87, t, hyper(wd=0.1, decouple_wd=decouple_wd)))
    assert p.dtype == np.float32
    for got, ref in zip((p, m, v), want):
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("decouple_wd", [True, False])
@pytest.mark.parametrize("mom", [0.0, 0.9])
def test_float32_sgd_rounds_as_numpy(mom, decouple_wd):
    p, g, m, _ = _state(np.float32, seed=1)
    want_p, want_m = p.copy(), m.copy()
    sc = step_scalars(5e-2, mom, 1, Hyper(False, mom != 0.0, 0.0, 0.0, 0.1, decouple_wd))
    for _ in range(3):
        reference.sgd_step(want_p, g, want_m, 5e-2, mom, 0.1, decouple_wd)
        cpu.sgd_update_dense(p, g, m, sc, mom != 0.0)
    np.testing.assert_array_equal(p, want_p)
    np.testing.assert_array_equal(m, want_m)


# --- whole epochs: a small problem driven straight through the kernels ------------------------------
def _tables(flat, shape=SHAPE):
    """The four tables of a flat buffer, biases as (n, 1) (the reference's shapes)."""
    uw, iw, ub, ib = cpu.split_flat(flat, shape)
    return {"u_weight": uw, "i_weight": iw, "u_bias": ub[:, None], "i_bias": ib[:, None]}


def _sparse_reference_epoch(model, data, order, bs, h, lr=1e-2, y_range=RANGE):
    """Sparse mode written with the NumPy reference: loss_and_grads, then lazy steps on the touched rows."""
    params = model.params.copy()
    m, v = np.zeros_like(params), np.zeros_like(params)
    P, M, V = _tables(params), _tables(m), _tables(v)
    n_steps = len(order) // bs
    lrs = np.linspace(lr, lr / 3, n_steps)
    moms = np.linspace(0.95, 0.85, n_steps)
    losses = []
    for s in range(n_steps):
        idx = order[s * bs : (s + 1) * bs]
        u, i = data.users[idx].astype(np.int64), data.items[idx].astype(np.int64)
        rng_ = (y_range.lo, y_range.hi) if y_range.has_range else None
        loss, grads = reference.loss_and_grads(*(P[n] for n in reference.TABLES), u, i, data.ratings[idx], rng_)
        losses.append(loss)
        for name in reference.TABLES:
            rows = u if name.startswith("u_") else i
            if h.is_adam:
                reference.sparse_adam_step(
                    P[name],
                    grads[name],
                    M[name],
                    V[name],
                    rows,
                    3 + s + 1,
                    lrs[s],
                    moms[s],
                    0.99,
                    1e-5,
                    h.wd,
                    h.decouple_wd,
                )
            else:
                mom = moms[s] if h.use_mom else 0.0
                reference.sparse_sgd_step(P[name], grads[name], M[name], rows, lrs[s], mom, h.wd, h.decouple_wd)
    return params, m, v, np.array(losses)


@pytest.mark.parametrize("opt", ["adam", "adam_l2", "sgd_mom", "sgd", "adam_no_range"])
def test_sparse_epoch_matches_numpy_lazy_reference(opt):
    """float64 tables, so kernel and reference agree to ~1e-12 and any rule difference would show."""
    data, model = problem(np.float64)
    order = np.random.default_rng(3).permutation(len(data.ratings))
    h = hyper(opt.startswith("adam"), opt != "sgd", 0.1, opt != "adam_l2")
    lr = 1e-2 if opt.startswith("adam") else 0.3
    y_range = NO_RANGE if opt == "adam_no_range" else RANGE
    if opt == "adam_no_range":
        model.params[:] *= 0.3  # keep the raw logits near the ratings' scale
    got = _run_epoch("sparse", model.params, data, order, 16, h, y_range, lr)
    want = _sparse_reference_epoch(model, data, order, 16, h, lr, y_range)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
    assert np.abs(got[0] - model.params).max() > 1e-3  # it trained


def test_sparse_leaves_untouched_rows_alone():
    data, model = problem()
    params, m, _, _ = _run_epoch("sparse", model.params, data, np.arange(32), 16, hyper())  # two batches
    untouched_users = np.setdiff1d(np.arange(N_USERS), data.users[:32])
    assert untouched_users.size
    before, after = _tables(model.params), _tables(params)
    np.testing.assert_array_equal(after["u_weight"][untouched_users], before["u_weight"][untouched_users])
    assert not _tables(m)["u_weight"][untouched_users].any()


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_parallel_twin_equals_serial(kind):
    """Dense: the parallel update splits independent elements; sparse with one range is the serial epoch."""
    data, model = problem()
    order = np.random.default_rng(6).permutation(len(data.ratings))
    for h in (hyper(), hyper(False, True)):
        serial = _run_epoch(kind, model.params, data, order, 16, h)
        parallel = _run_epoch(kind + "_parallel", model.params, data, order, 16, h)
        for s, p in zip(serial, parallel):
            np.testing.assert_array_equal(p, s)


def test_hogwild_ranges_train():
    """Hogwild! is not reproducible, but every step runs and the loss on the data goes down as much as
    serially (the mean of a few batch losses, compared before, swung with the threads' timing)."""
    data, model = problem(n_ratings=2000)
    order = np.random.default_rng(8).permutation(len(data.ratings))
    n_ranges = max(2, numba.get_num_threads())
    params, _, _, losses = _run_epoch(
        "sparse_parallel", model.params, data, order, 16, hyper(), lr=3e-2, n_ranges=n_ranges
    )
    assert len(losses) == len(order) // 16 and np.isfinite(params).all()
    serial = _run_epoch("sparse", model.params, data, order, 16, hyper(), lr=3e-2)[0]

    def mse(p):
        return cpu.evaluate_mse(cpu.split_flat(p, SHAPE), data, RANGE)

    assert mse(params) < 0.8 * mse(model.params) and mse(params) < 1.05 * mse(serial)


def test_sparse_prefetch_path_changes_nothing():
    """Tables above PREFETCH_MIN_BYTES take the prefetching path: embed the small problem's rows in a
    big user table and check the touched rows come out exactly as without prefetching."""
    data, model = problem(np.float64)
    order = np.random.default_rng(9).permutation(len(data.ratings))
    want, _, _, want_losses = _run_epoch("sparse", model.params, data, order, 16, hyper())
    n_big = PREFETCH_MIN_BYTES // (8 * (K + 1)) + 1000
    big_shape = Shape(n_big, N_ITEMS, K)
    big = EmbeddingDotBias(K, n_big, N_ITEMS, y_range=(0.0, 5.5), dtype=np.float64)
    assert big.params.nbytes > PREFETCH_MIN_BYTES
    small, tables = _tables(model.params), cpu.split_flat(big.params, big_shape)
    tables.u_weight[:N_USERS], tables.i_weight[:] = small["u_weight"], small["i_weight"]
    tables.u_bias[:N_USERS], tables.i_bias[:] = small["u_bias"][:, 0], small["i_bias"][:, 0]
    params, _, _, losses = _run_epoch("sparse", big.params, data, order, 16, hyper(), shape=big_shape)
    got, w = cpu.split_flat(params, big_shape), _tables(want)
    np.testing.assert_array_equal(got.u_weight[:N_USERS], w["u_weight"])
    np.testing.assert_array_equal(got.i_weight, w["i_weight"])
    np.testing.assert_array_equal(got.u_bias[:N_USERS], w["u_bias"][:, 0])
    np.testing.assert_array_equal(losses, want_losses)


# --- per-rating SGD (bs = 1): the fused kernel and its stratified parallel twin -----------------------
PER_RATING = (cpu.train_epoch_per_rating, cpu.train_epoch_per_rating_parallel)


@pytest.mark.parametrize("decouple_wd", [True, False])
@pytest.mark.parametrize("has_range", [True, False])
def test_per_rating_sgd_matches_numpy_reference(decouple_wd, has_range):
    """bs = 1 sparse SGD written with the NumPy reference, step by step (float64: agreement to rounding)."""
    data, model = problem(np.float64, n_ratings=120)
    if not has_range:
        model.params[:] *= 0.3
    order = np.random.default_rng(4).permutation(len(data.ratings))
    lr = 0.3 if has_range else 0.03  # raw logits: a smaller step keeps the epoch stable
    y_range = RANGE if has_range else NO_RANGE
    h = hyper(False, False, 0.1, decouple_wd)
    want_params, _, _, want_losses = _sparse_reference_epoch(model, data, order, 1, h, lr, y_range)
    for kernel in PER_RATING:
        lrs = np.linspace(lr, lr / 3, len(order))
        got_params, got_losses = per_rating_epoch(kernel, model.params, data, order, lrs, y_range=y_range)
        np.testing.assert_allclose(got_params, want_params, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got_losses, want_losses, rtol=1e-9, atol=1e-12)
    assert np.abs(want_params - model.params).max() > 1e-3  # it trained


@pytest.mark.parametrize("k", [5, 37])
def test_per_rating_float32_close_to_general_sparse_kernel(k):
    """float32: the fused kernel differs from the general one (bs = 1) by float32 rounding only
    (k = 37: two vector chunks of the dot product and a tail)."""
    rng = np.random.default_rng(3)
    shape = Shape(N_USERS, N_ITEMS, k)
    data, _ = problem(np.float32, n_ratings=300)
    params = (rng.standard_normal((N_USERS + N_ITEMS) * (k + 1)) * 0.1).astype(np.float32)
    order = rng.permutation(len(data.ratings))
    lrs = np.linspace(0.05, 0.05 / 3, len(order))  # the schedule run_epoch makes
    want = _run_epoch("sparse", params, data, order, 1, hyper(False, False), lr=0.05, shape=shape, step0=0)
    got, losses = params.copy(), np.empty(len(order))
    blocks = BlockLayout(order.astype(np.int64), np.array([0, len(order)]), 1)
    cpu.train_epoch_per_rating(got, shape, data, blocks, lrs, 0.1, RANGE, EpochOut(losses, np.zeros(1, np.int64)))
    want_params, want_losses = want[0], want[3]
    np.testing.assert_allclose(got, want_params, rtol=1e-4, atol=1e-5)
    assert np.abs(got - params).max() > 1e-3  # it trained
    np.testing.assert_allclose(losses, want_losses, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-5), (np.float64, 1e-13)])
@pytest.mark.parametrize("k", [1, 15, 16, 17, 50, 64])
def test_dot_rows_in_vector_chunks(k, dtype, rtol):
    """The per-rating dot product (16-lane chunks in LLVM IR, then the tail) equals NumPy's to rounding."""
    rng = np.random.default_rng(k)
    flat = rng.standard_normal(5 * k + 3).astype(dtype)
    a, b = 3, 2 * k + 3  # unaligned starts, as rows in the flat buffer are
    got = dot_rows(flat, a, b, k)
    want = np.dot(flat[a : a + k].astype(np.float64), flat[b : b + k].astype(np.float64))
    assert np.isclose(got, want, rtol=rtol, atol=rtol)
    assert dot_rows(flat, a, b, k) == got  # a fixed order of summation


@numba.njit(cache=False)
def _update_rows_loop(flat, a, b, k, shrink, step):
    for j in range(k):
        p, q = flat[a + j], flat[b + j]
        flat[a + j] = p * shrink - step * q
        flat[b + j] = q * shrink - step * p


@numba.njit(cache=False)
def _update_rows_vector(flat, a, b, k, shrink, step):
    update_rows(flat, a, b, k, shrink, step)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [1, 15, 16, 17, 50, 64])
@pytest.mark.parametrize("b_first", [False, True])
def test_update_rows_equals_the_scalar_loop(k, dtype, b_first):
    """The per-rating update (16-lane chunks, the last one masked) rounds as the scalar loop, element by
    element, and writes nothing outside the two rows."""
    rng = np.random.default_rng(k)
    flat = rng.standard_normal(5 * k + 7).astype(dtype)
    a, b = 3, 2 * k + 5  # unaligned starts, a gap between the rows
    if b_first:
        a, b = b, a
    shrink, step = dtype(1.0 - 0.02 * 0.08), dtype(0.0137)
    want, got = flat.copy(), flat.copy()
    _update_rows_loop(want, a, b, k, shrink, step)
    _update_rows_vector(got, a, b, k, shrink, step)
    assert got.tobytes() == want.tobytes()
    assert not np.array_equal(got, flat)


def test_balanced_groups_are_contiguous_with_equal_shares():
    rng = np.random.default_rng(0)
    codes = np.minimum(rng.zipf(1.5, 5000) - 1, 99).astype(np.int32)  # skewed: code 0 the most frequent
    group = cpu.balanced_groups(codes, 100, 4)
    assert group[0] == 0 and group[-1] == 3 and (np.diff(group) >= 0).all()  # contiguous ranges, in order
    shares = np.bincount(group[codes], minlength=4) / len(codes)
    assert shares.min() > 0.1  # equal code ranges would leave the last groups almost empty
    assert (cpu.balanced_groups(codes, 100, 1) == 0).all()


def test_block_layout_strata_share_no_rows():
    """Each block holds its groups' ratings, in the order's order; a stratum's blocks share no row."""
    data, _ = problem(np.float64)
    users, items = data.users, data.items
    order = np.random.default_rng(6).permutation(len(users))
    g = 3
    blocks, groups = layout(data, order, g)
    blocked, block_start = blocks.order, blocks.block_start
    assert sorted(blocked) == sorted(order) and block_start[0] == 0 and block_start[-1] == len(order)
    for t in range(g):
        seen_users, seen_items = set(), set()
        for c in range(g):
            rows = blocked[block_start[t * g + c] : block_start[t * g + c + 1]]
            assert (groups.user_group[users[rows]] == c).all() and (groups.item_group[items[rows]] == (c + t) % g).all()
            where = np.flatnonzero(np.isin(order, rows))
            np.testing.assert_array_equal(order[where], rows)  # stable: the order's order
            assert not seen_users & set(users[rows]) and not seen_items & set(items[rows])
            seen_users |= set(users[rows])
            seen_items |= set(items[rows])
    ident, _ = layout(data, order[:0], g)  # empty: 0..n-1
    want, _ = layout(data, np.arange(len(users)), g)
    np.testing.assert_array_equal(ident.order, want.order)
    np.testing.assert_array_equal(ident.block_start, want.block_start)


@pytest.mark.parametrize("kernel", PER_RATING)
def test_sort_by_block_in_place_trains_like_the_layout(kernel):
    """The ratings moved into block order (in place) and read in sequence (an empty order), with one lr
    for every step and no losses kept (the big-data settings), train like their block layout."""
    data, model = problem(np.float32)
    g = 3
    blocks, groups = layout(data, np.arange(len(data.users)), g)
    moved = Ratings(data.users.copy(), data.items.copy(), data.ratings.copy())
    block_start = cpu.sort_by_block(moved, groups)
    np.testing.assert_array_equal(block_start, blocks.block_start)
    before = sorted(zip(data.users.tolist(), data.items.tolist(), data.ratings.tolist()))
    assert sorted(zip(moved.users.tolist(), moved.items.tolist(), moved.ratings.tolist())) == before
    for p in range(g * g):  # each stored block holds the ratings its place in the layout says
        rows = slice(block_start[p], block_start[p + 1])
        t, c = divmod(p, g)
        assert (groups.user_group[moved.users[rows]] == c).all()
        assert (groups.item_group[moved.items[rows]] == (c + t) % g).all()
    got = model.params.copy()
    in_place = BlockLayout(np.empty(0, dtype=np.int64), block_start, g)
    no_losses = EpochOut(np.empty(0), np.zeros(1, dtype=np.int64))
    assert kernel(got, SHAPE, moved, in_place, np.array([0.2]), 0.1, RANGE, no_losses) == len(moved.users)
    want, _ = per_rating_epoch(
        cpu.train_epoch_per_rating, model.params, moved, np.arange(len(moved.users)), np.full(len(moved.users), 0.2)
    )
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kernel", PER_RATING)
@pytest.mark.parametrize("n_groups", [2, 3])
def test_per_rating_blocks_are_the_serial_epoch_over_the_block_layout(kernel, n_groups):
    """g blocks on the threads: bit for bit the serial per-rating epoch over the ratings in block order."""
    data, model = problem(np.float32)
    order = np.random.default_rng(6).permutation(len(data.ratings))
    lrs = np.linspace(0.3, 0.1, len(order))
    got, got_losses = per_rating_epoch(kernel, model.params, data, order, lrs, n_groups=n_groups)
    blocks, _ = layout(data, order, n_groups)
    want, want_losses = per_rating_epoch(cpu.train_epoch_per_rating, model.params, data, blocks.order, lrs)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_losses, want_losses)


#: No canonical order: the dynamic kernel trains ``layout.order`` as it is.
NO_ORDER = np.empty(0, dtype=np.int64)


def dynamic(n_workers):
    """The dynamic-scheduler kernel with ``n_workers`` block-taking loops, called as the other kernels."""
    return lambda *args: cpu.train_epoch_per_rating_dynamic(*args, n_workers, NO_ORDER, 0)


@pytest.mark.parametrize("threads", [1, 2, 4])  # 4 block-taking loops on 2 threads: some run one after another
@pytest.mark.parametrize("n_groups", [2, 3, 5])
@pytest.mark.parametrize("dtype, y_range", [(np.float32, RANGE), (np.float64, NO_RANGE)])
def test_dynamic_block_scheduler_is_the_barrier_and_the_serial_epoch(threads, n_groups, dtype, y_range):
    """The dynamic scheduler (no barrier between strata) gives the serial blocked epoch bit for bit, and
    the barrier kernel's, in every run (thread timing differs run to run), on one thread and on two, and
    with more block-taking loops than threads (no deadlock when loops run one after another)."""
    import numba

    data, model = problem(dtype)
    order = np.random.default_rng(7).permutation(len(data.ratings))
    lrs = np.linspace(0.3, 0.1, len(order)) * (1.0 if y_range.has_range else 0.05)  # no range: keep it finite
    blocks, _ = layout(data, order, n_groups)
    want, want_losses = per_rating_epoch(
        cpu.train_epoch_per_rating, model.params, data, blocks.order, lrs, y_range=y_range
    )
    assert len(want_losses) == len(order) and np.isfinite(want_losses).all()
    barrier, _ = per_rating_epoch(
        cpu.train_epoch_per_rating_parallel, model.params, data, order, lrs, y_range=y_range, n_groups=n_groups
    )
    np.testing.assert_array_equal(barrier, want)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        for _ in range(5):
            got, got_losses = per_rating_epoch(
                dynamic(threads), model.params, data, order, lrs, y_range=y_range, n_groups=n_groups
            )
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(got_losses, want_losses)
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n_groups", [2, 3])
def test_dynamic_kernel_shuffling_each_block_is_shuffle_blocks_then_the_epoch(threads, n_groups):
    """With a canonical order and a seed, the dynamic kernel copies and shuffles each block as it claims
    it: the order, weights and losses equal ``shuffle_blocks`` over the whole layout, then the epoch."""
    import numba

    data, model = problem(np.float32)
    blocks, _ = layout(data, np.arange(len(data.ratings)), n_groups)
    canonical = blocks.order.copy()
    lrs = np.linspace(0.3, 0.1, len(canonical))
    shuffled = canonical.copy()
    cpu.shuffle_blocks(shuffled, blocks.block_start, 99)
    assert (shuffled != canonical).any()
    want, want_losses = per_rating_epoch(cpu.train_epoch_per_rating, model.params, data, shuffled, lrs)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        for _ in range(3):
            got, losses = model.params.copy(), np.full(len(canonical), np.nan)
            order = BlockLayout(np.full(len(canonical), -1, dtype=np.int64), blocks.block_start, n_groups)
            out = EpochOut(losses, np.zeros(1, dtype=np.int64))
            n = cpu.train_epoch_per_rating_dynamic(
                got, SHAPE, data, order, lrs, 0.1, RANGE, out, threads, canonical, 99
            )
            assert n == len(canonical)
            np.testing.assert_array_equal(order.order, shuffled)
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(losses, want_losses)
    finally:
        numba.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n_groups", [2, 3])
def test_ratings_stored_by_block_train_the_steps_of_the_canonical_layout(threads, n_groups):
    """``block_ordered`` stores the ratings as ``data[canonical]``; over them, with no canonical rows and no
    order array, the dynamic and the serial kernels shuffle each block's ratings in a buffer of their own
    and train the steps of ``shuffle_blocks`` over the canonical layout: weights and losses bit for bit."""
    import numba

    data, model = problem(np.float32)
    blocks, groups = layout(data, np.arange(len(data.ratings)), n_groups)
    canonical = blocks.order.copy()
    stored = Ratings(*(np.empty_like(column) for column in data))
    for n_chunks in (3, 2, 1):  # the chunks count and place their ratings in turn: the same layout
        block_start = cpu.block_ordered(data, groups, stored, n_chunks)
        np.testing.assert_array_equal(block_start, blocks.block_start)
        for got_column, column in zip(stored, data):
            np.testing.assert_array_equal(got_column, column[canonical])
    lrs = np.linspace(0.3, 0.1, len(canonical))
    shuffled = canonical.copy()
    cpu.shuffle_blocks(shuffled, blocks.block_start, 99)
    want, want_losses = per_rating_epoch(cpu.train_epoch_per_rating, model.params, data, shuffled, lrs)
    no_rows = np.empty(0, dtype=np.int32)
    by_block = BlockLayout(no_rows, block_start, n_groups)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        for _ in range(2):
            got, losses, progress = model.params.copy(), np.full(len(canonical), np.nan), np.zeros(1, np.int64)
            out = EpochOut(losses, progress)
            n = cpu.train_epoch_per_rating_dynamic(
                got, SHAPE, stored, by_block, lrs, 0.1, RANGE, out, threads, no_rows, 99
            )
            assert n == len(canonical) and progress[0] == len(canonical)
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(losses, want_losses)
    finally:
        numba.set_num_threads(before)
    got, losses, progress = model.params.copy(), np.full(len(canonical), np.nan), np.zeros(1, np.int64)
    n = cpu.train_epoch_per_rating_shuffled(
        got, SHAPE, stored, by_block, lrs, 0.1, RANGE, EpochOut(losses, progress), no_rows, 99
    )
    assert n == len(canonical) and progress[0] == len(canonical)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(losses, want_losses)


@pytest.mark.parametrize("n_groups", [2, 3])
def test_serial_kernel_shuffling_each_block_is_shuffle_blocks_then_the_epoch(n_groups):
    """The serial blocked epoch that shuffles each block just before it trains equals ``shuffle_blocks``
    over the whole layout, then the serial epoch: order, weights and losses bit for bit."""
    data, model = problem(np.float32)
    blocks, _ = layout(data, np.arange(len(data.ratings)), n_groups)
    canonical = blocks.order.copy()
    lrs = np.linspace(0.3, 0.1, len(canonical))
    shuffled = canonical.copy()
    cpu.shuffle_blocks(shuffled, blocks.block_start, 5)
    want, want_losses = per_rating_epoch(cpu.train_epoch_per_rating, model.params, data, shuffled, lrs)
    got, losses, progress = model.params.copy(), np.full(len(canonical), np.nan), np.zeros(1, dtype=np.int64)
    order = BlockLayout(np.full(len(canonical), -1, dtype=np.int64), blocks.block_start, n_groups)
    n = cpu.train_epoch_per_rating_shuffled(
        got, SHAPE, data, order, lrs, 0.1, RANGE, EpochOut(losses, progress), canonical, 5
    )
    assert n == len(canonical) and progress[0] == len(canonical)
    np.testing.assert_array_equal(order.order, shuffled)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(losses, want_losses)
    with np.errstate(all="ignore"):
        bad = model.params.copy() * 1e200  # the first dot product overflows to inf
        n = cpu.train_epoch_per_rating_shuffled(
            bad, SHAPE, data, order, lrs, 0.1, RANGE, EpochOut(losses, np.zeros(1, np.int64)), canonical, 5
        )
    assert n == 1 and not np.isfinite(losses[0])
    # one infinite rating in a later block: the stratum's other blocks still finish, as in the unfused epoch
    ratings = data.ratings.copy()
    ratings[shuffled[blocks.block_start[n_groups + 1] + 3]] = np.inf
    inf_data = data._replace(ratings=ratings)
    want, want_losses = model.params.copy(), np.full(len(canonical), np.nan)
    unfused = BlockLayout(shuffled.copy(), blocks.block_start, n_groups)
    n_want = cpu.train_epoch_per_rating(
        want, SHAPE, inf_data, unfused, lrs, 0.1, RANGE, EpochOut(want_losses, np.zeros(1, np.int64))
    )
    got, losses = model.params.copy(), np.full(len(canonical), np.nan)
    n = cpu.train_epoch_per_rating_shuffled(
        got, SHAPE, inf_data, order, lrs, 0.1, RANGE, EpochOut(losses, np.zeros(1, np.int64)), canonical, 5
    )
    assert n == n_want < len(canonical)
    np.testing.assert_array_equal(got, want)


def test_dynamic_block_scheduler_counts_progress_and_stops_on_divergence():
    data, model = problem(np.float64)
    order = np.arange(len(data.ratings))
    blocks, _ = layout(data, order, 3)
    progress = np.zeros(1, dtype=np.int64)
    losses = np.full(len(order), np.nan)
    params = model.params.copy()
    n = cpu.train_epoch_per_rating_dynamic(
        params, SHAPE, data, blocks, np.full(1, 0.1), 0.1, RANGE, EpochOut(losses, progress), 2, NO_ORDER, 0
    )
    assert n == len(order) and progress[0] == len(order) and np.isfinite(losses).all()
    params[:] *= 1e200  # the first dot product overflows to inf
    with np.errstate(all="ignore"):
        n = cpu.train_epoch_per_rating_dynamic(
            params,
            SHAPE,
            data,
            blocks,
            np.full(1, 0.3),
            0.1,
            RANGE,
            EpochOut(losses, np.zeros(1, np.int64)),
            2,
            NO_ORDER,
            0,
        )
    assert n < len(order) and not np.isfinite(losses[n - 1])


@pytest.mark.parametrize("n_groups", [1, 2])
def test_per_rating_divergence_stops_before_the_update(n_groups):
    data, model = problem(np.float64)
    model.params[:] *= 1e200  # the first dot product overflows to inf
    order = np.arange(len(data.ratings))
    lrs = np.full(len(order), 0.3)
    with np.errstate(all="ignore"):
        _, losses = per_rating_epoch(
            cpu.train_epoch_per_rating_parallel, model.params, data, order, lrs, n_groups=n_groups
        )
    assert len(losses) < len(order) and not np.isfinite(losses[-1])


def test_per_rating_groups():
    from mfscratch.backends.cpu import PER_RATING_GROUP_BYTES, per_rating_groups

    assert per_rating_groups(1000, 1) == 1 and per_rating_groups(1000, 2) == 2
    assert per_rating_groups(10 * PER_RATING_GROUP_BYTES, 1) == 10
    assert per_rating_groups(10 * PER_RATING_GROUP_BYTES, 4) == 12  # a multiple of the threads
    assert per_rating_groups(58_000_000, 2) == 14
    assert per_rating_groups(1000, 2, per_thread=3) == 6 and per_rating_groups(1000, 1, per_thread=3) == 1
    assert per_rating_groups(58_000_000, 2, per_thread=3) == 14  # the cache's groups are more already
    assert per_rating_groups(58_000_000, 2, per_thread=8) == 16


def test_shuffle_blocks_permutes_within_each_block_from_the_seed_alone():
    blocked = np.arange(1000)
    block_start = np.array([0, 1, 300, 300, 1000])
    got = blocked.copy()
    cpu.shuffle_blocks(got, block_start, 7)
    for p in range(4):
        part = slice(block_start[p], block_start[p + 1])
        assert sorted(got[part]) == list(blocked[part])
    assert (got != blocked).mean() > 0.9
    twin = blocked.copy()
    cpu.shuffle_blocks_parallel(twin, block_start, 7)  # any thread count: the same numbers
    np.testing.assert_array_equal(twin, got)
    other = blocked.copy()
    cpu.shuffle_blocks(other, block_start, 8)
    assert (other != got).any()


# --- synthetic data ------------------------------------------------------------------------------
def test_synthetic_ratings_shape_scale_and_skew():
    users, items, ratings = synthetic_ratings(50_000, 2000, 500, rating_range=(0.5, 5.0), rating_step=0.5, seed=1)
    assert (users.dtype, items.dtype, ratings.dtype) == (np.int32, np.int32, np.float32)
    assert users.min() >= 0 and users.max() < 2000 and items.min() >= 0 and items.max() < 500
    assert set(np.unique(ratings)) <= set(np.arange(0.5, 5.01, 0.5, dtype=np.float32))
    assert 3.0 < ratings.mean() < 4.0 and 0.7 < ratings.std() < 1.3
    counts = np.sort(np.bincount(items, minlength=500))[::-1]
    assert counts[:50].sum() > 0.25 * len(items)  # the top 10% of items: well over 10% of ratings
    again = synthetic_ratings(50_000, 2000, 500, rating_range=(0.5, 5.0), rating_step=0.5, seed=1)
    for a, b in zip((users, items, ratings), again):
        np.testing.assert_array_equal(a, b)


def test_synthetic_dataloaders_are_views():
    dls = synthetic_dataloaders(1000, 20, 30, valid_pct=0.2, seed=0)
    assert (dls.n_train, dls.n_valid, dls.n_users, dls.n_items) == (800, 200, 20, 30)
    assert dls.train_users.base is not None  # a view of the generated array, not a copy


# --- documented settings on the real ML-100k -------------------------------------------------------
def _train_json(tmp_path, *argv):
    import json

    from mfscratch import cli

    out = tmp_path / "run.json"
    assert cli.main(["train", *argv, "--quiet", "--json", str(out)]) == 0
    return json.loads(out.read_text())["epochs"][-1]["valid_loss"]


@pytest.mark.realdata
def test_documented_sparse_setting_on_ml100k(ml100k, tmp_path):
    """docs/speed.md: `mfscratch train --mode sparse` (the seed recipe otherwise) reaches <= 0.82."""
    assert _train_json(tmp_path, "--mode", "sparse") <= 0.82


@pytest.mark.parametrize(
    "argv",
    [
        ["--mode", "per-rating"],  # its documented recipe by default
        ["--mode", "sparse", "--optimizer", "sgd", "--bs", "1", "--lr", "0.02", "--wd", "0.08", "--epochs", "12"],
    ],
    ids=["per-rating", "long-form"],
)
def test_documented_per_rating_setting_on_ml100k(ml100k, tmp_path, argv):
    """docs/speed.md: per-rating SGD (sparse, sgd, bs 1, lr 0.02, wd 0.08, 12 epochs) reaches <= 0.82."""
    assert _train_json(tmp_path, *argv) <= 0.82


@pytest.mark.parametrize("argv", [["--optimizer", "adam"], ["--bs", "64"]])
def test_per_rating_mode_refuses_other_optimizer_or_batch_size(argv, capsys):
    from mfscratch import cli

    assert cli.main(["train", "--mode", "per-rating", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --mode per-rating trains with")


@pytest.mark.parametrize("n_groups", [None, 3])
def test_parallel_backend_schedulers_give_the_same_fit(n_groups, monkeypatch):
    """The parallel backend's per-rating fit: the dynamic scheduler (default) equals the barrier one; over
    the same layout the serial backend (each block shuffled just before it trains) equals both."""
    from mfscratch import SGD, collab_learner
    from mfscratch.backends.cpu import CpuBackend, ParallelBackend
    from mfscratch.synthetic import synthetic_dataloaders

    monkeypatch.setattr(ParallelBackend, "per_rating_n_groups", n_groups)
    monkeypatch.setattr(CpuBackend, "per_rating_n_groups", n_groups)
    weights = {}
    runs = [("dynamic", "parallel"), ("barrier", "parallel")] + ([("serial", "cpu")] if n_groups else [])
    for scheduler, backend in runs:
        monkeypatch.setattr(ParallelBackend, "per_rating_scheduler", "barrier" if scheduler == "serial" else scheduler)
        dls = synthetic_dataloaders(6000, 60, 80, bs=1, seed=0)
        learn = collab_learner(
            dls, n_factors=8, y_range=(0.5, 5.5), seed=0, sparse=True, opt_func=SGD, backend=backend, log=None
        )
        learn.fit_one_cycle(2, 0.02, wd=0.08)
        weights[scheduler] = learn.model.params.copy()
    np.testing.assert_array_equal(weights["dynamic"], weights["barrier"])
    if n_groups:
        np.testing.assert_array_equal(weights["serial"], weights["barrier"])


def _per_rating_fit(backend: str, threads: int | None, scheduler: str | None, n_groups: int):
    from mfscratch import SGD, collab_learner
    from mfscratch.synthetic import synthetic_dataloaders

    dls = synthetic_dataloaders(6000, 60, 80, bs=1, seed=0)
    learn = collab_learner(
        dls, n_factors=8, y_range=(0.5, 5.5), seed=0, sparse=True, opt_func=SGD, backend=backend, log=None,
        threads=threads, per_rating_scheduler=scheduler,
    )  # fmt: skip
    learn.backend.per_rating_n_groups = n_groups
    learn.fit_one_cycle(2, 0.02, wd=0.08)
    return learn


def test_dynamic_scheduler_pins_one_thread_a_core_only_when_they_match(monkeypatch):
    """The parallel backend pins its block-taking threads, one a core, when it has as many threads as the
    process has cores (Linux), not when fewer threads leave the operating system a choice; and not at all
    with ``per_rating_bind_threads = False``."""
    import os

    import numba

    from mfscratch.backends.cpu import ParallelBackend

    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no sched_getaffinity on this system")
    cores = sorted(os.sched_getaffinity(0))
    threads = len(cores)
    if threads > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("Numba sees fewer threads than this process has cores")
    np.testing.assert_array_equal(ParallelBackend(threads=threads)._per_rating_kernel(3).keywords["cpus"], cores)
    if threads > 1:
        assert ParallelBackend(threads=threads - 1)._per_rating_kernel(3).keywords["cpus"].size == 0
    monkeypatch.setattr(ParallelBackend, "per_rating_bind_threads", False)
    assert ParallelBackend(threads=threads)._per_rating_kernel(3).keywords["cpus"].size == 0


def test_pinned_epoch_equals_the_unpinned_one_and_restores_the_affinity():
    """Pinning the threads changes no weight, and every thread (the caller's too) gets its CPU mask back."""
    import os

    import numba

    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no sched_getaffinity on this system")
    before = os.sched_getaffinity(0)
    cpus = np.array(sorted(before), dtype=np.int64)
    data, model = problem(np.float32)
    blocks, _ = layout(data, np.arange(len(data.ratings)), 3)
    weights = []
    for pin in (None, cpus):
        params = model.params.copy()
        losses = np.empty(len(data.ratings))
        n = cpu.train_epoch_per_rating_dynamic(
            params, SHAPE, data, blocks, np.full(1, 0.05), 0.1, RANGE, EpochOut(losses, np.zeros(1, np.int64)),
            min(2, numba.config.NUMBA_NUM_THREADS), NO_ORDER, 0, cpus=pin,
        )  # fmt: skip
        assert n == len(data.ratings)
        weights.append(params)
        assert os.sched_getaffinity(0) == before
    np.testing.assert_array_equal(weights[0], weights[1])


def test_free_scheduler_on_one_thread_takes_the_layout_order():
    """LIBMF's rule with one thread: no block is ever running when it looks, so it takes the blocks in
    layout order, and the fit equals the reproducible schedulers' bit for bit."""
    free = _per_rating_fit("parallel", 1, "free", 3)
    kernel = free.backend._per_rating_kernel(3)
    assert kernel.func is cpu.train_epoch_per_rating_dynamic
    assert kernel.keywords["n_workers"] == 1 and kernel.keywords["free"] is True
    barrier = _per_rating_fit("parallel", 1, "barrier", 3)
    np.testing.assert_array_equal(free.model.params, barrier.model.params)


def test_free_scheduler_on_every_thread_trains_every_rating_as_well():
    """With every thread, every step of both epochs runs (finite losses, the progress counter complete),
    the fit is declared not reproducible, and it is as good as the reproducible fit's to 1%."""
    import numba

    threads = numba.config.NUMBA_NUM_THREADS
    free = _per_rating_fit("parallel", threads, "free", 4)
    dynamic = _per_rating_fit("parallel", threads, None, 4)
    assert free.backend.reproducible("per-rating") is False and dynamic.backend.reproducible("per-rating") is True
    steps = free.dls.n_train
    assert len(free.recorder.mean_losses) == 2 and np.isfinite(free.recorder.mean_losses).all()
    assert free.recorder.steps[-1] == 2 * steps - 1
    (_, v_free), (_, v_dyn) = free.recorder.values[-1], dynamic.recorder.values[-1]
    assert abs(v_free - v_dyn) <= 0.01 * v_dyn


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--backend", "cpu"], "error: per_rating_scheduler hands per-rating blocks to the parallel backend"),
        (["--backend", "dask"], "error: --per-rating-scheduler applies to --backend parallel"),
    ],
)
def test_per_rating_scheduler_needs_the_parallel_backend(argv, message, capsys):
    from mfscratch import cli

    assert cli.main(["train", "--mode", "per-rating", "--per-rating-scheduler", "free", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message)


def test_threads_option_reaches_the_dynamic_scheduler(tmp_path):
    """``threads=`` (API) and ``--threads`` (CLI) set the parallel backend's block-taking threads."""
    import numba

    from mfscratch import cli
    from mfscratch.backends.cpu import ParallelBackend

    threads = min(2, numba.config.NUMBA_NUM_THREADS)
    kernel = ParallelBackend(threads=threads)._per_rating_kernel(3)
    assert kernel.func is cpu.train_epoch_per_rating_dynamic
    assert kernel.keywords["n_workers"] == threads and kernel.keywords["free"] is False
    assert ParallelBackend(threads=1)._per_rating_kernel(1) is cpu.train_epoch_per_rating_parallel
    path = tmp_path / "r.csv"
    path.write_text("user,item,rating\n" + "".join(f"{u % 23},{(u * 7) % 31},{1 + u % 5}\n" for u in range(600)))
    argv = ["train", "--ratings", str(path), "--mode", "per-rating", "--backend", "parallel", "--quiet"]
    assert cli.main([*argv, "--threads", str(threads), "--epochs", "2"]) == 0
