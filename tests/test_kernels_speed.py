"""The fast kernels against the NumPy reference: float32 dense updates, sparse (lazy) mode, the
parallel twins, and the synthetic data generator. Correctness only; timings live in benchmarks/."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from mfscratch import SGD, Adam, collab_learner, reference
from mfscratch.backends import BACKENDS, get_backend
from mfscratch.errors import DivergenceError
from mfscratch.kernels import cpu
from mfscratch.model import EmbeddingDotBias
from mfscratch.synthetic import synthetic_dataloaders, synthetic_ratings

N_USERS, N_ITEMS, K = 13, 17, 5


def _state(dtype, seed=0, n=200):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(dtype)
    g = (rng.standard_normal(n) * (rng.random(n) < 0.3)).astype(dtype)  # mostly zero, like a batch
    m = (rng.standard_normal(n) * 0.1).astype(dtype)
    v = (rng.random(n) * 0.1).astype(dtype)
    return p, g, m, v


# --- dense updates in float32 ---------------------------------------------------------------------
@pytest.mark.parametrize("decouple_wd", [True, False])
@pytest.mark.parametrize("kernel", [cpu.adam_update_dense, cpu.adam_update_dense_parallel])
def test_float32_adam_rounds_as_numpy(kernel, decouple_wd):
    """Same operations in the same order on float32: the kernel equals NumPy bit for bit."""
    p, g, m, v = _state(np.float32)
    want = [a.copy() for a in (p, m, v)]
    for t in (1, 2, 7):
        reference.adam_step(want[0], g, want[1], want[2], t, 3e-3, 0.87, 0.99, 1e-5, 0.1, decouple_wd)
        kernel(p, g, m, v, 3e-3, 0.87, 0.99, 1e-5, 0.1, decouple_wd, t)
    assert p.dtype == np.float32
    for got, ref in zip((p, m, v), want):
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("decouple_wd", [True, False])
@pytest.mark.parametrize("mom", [0.0, 0.9])
@pytest.mark.parametrize("kernel", [cpu.sgd_update_dense, cpu.sgd_update_dense_parallel])
def test_float32_sgd_rounds_as_numpy(kernel, mom, decouple_wd):
    p, g, m, _ = _state(np.float32, seed=1)
    want_p, want_m = p.copy(), m.copy()
    for _ in range(3):
        reference.sgd_step(want_p, g, want_m, 5e-2, mom, 0.1, decouple_wd)
        kernel(p, g, m, 5e-2, mom, 0.1, decouple_wd, mom != 0.0)
    np.testing.assert_array_equal(p, want_p)
    np.testing.assert_array_equal(m, want_m)


# --- whole epochs: a small problem driven straight through the kernels ------------------------------
def _problem(dtype=np.float32, n_ratings=400, seed=0):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, N_USERS, n_ratings).astype(np.int32)
    items = rng.integers(0, N_ITEMS, n_ratings).astype(np.int32)
    ratings = rng.integers(1, 6, n_ratings).astype(np.float32)
    model = EmbeddingDotBias(K, N_USERS, N_ITEMS, y_range=(0.0, 5.5), seed=seed, dtype=dtype)
    model.params[:] = rng.standard_normal(model.params.size) * 0.3  # far from zero, so rows differ
    return users, items, ratings, model


def _run_epoch(
    kernel,
    model,
    users,
    items,
    ratings,
    order,
    bs,
    is_adam,
    use_mom=True,
    wd=0.1,
    decouple_wd=True,
    sparse=False,
    n_chunks=1,
    lr=1e-2,
    has_range=True,
):
    params = model.params.copy()
    m, v = np.zeros_like(params), np.zeros_like(params)
    n_steps = len(order) // bs
    lrs = np.linspace(lr, lr / 3, n_steps)
    moms = np.linspace(0.95, 0.85, n_steps)
    losses = np.empty(n_steps)
    common = (
        N_USERS,
        N_ITEMS,
        K,
        users,
        items,
        ratings,
        order,
        bs,
        lrs,
        moms,
        3,
        is_adam,
        use_mom,
        0.99,
        1e-5,
        wd,
        decouple_wd,
        0.0,
        5.5 if has_range else 1.0,
        has_range,
        losses,
    )
    if sparse:
        n = kernel(params, m, v, *common, n_chunks)
    else:
        n = kernel(params, np.zeros_like(params), m, v, *common)
    return params, m, v, losses[:n]


def _tables(flat):
    """The four tables of a flat buffer, biases as (n, 1) (the reference's shapes)."""
    uw, iw, ub, ib = cpu.split_flat(flat, N_USERS, N_ITEMS, K)
    return {"u_weight": uw, "i_weight": iw, "u_bias": ub[:, None], "i_bias": ib[:, None]}


def _sparse_reference_epoch(
    model, users, items, ratings, order, bs, is_adam, use_mom=True, wd=0.1, decouple_wd=True, lr=1e-2, has_range=True
):
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
        u, i = users[idx].astype(np.int64), items[idx].astype(np.int64)
        loss, grads = reference.loss_and_grads(
            *(P[n] for n in reference.TABLES), u, i, ratings[idx], (0.0, 5.5) if has_range else None
        )
        losses.append(loss)
        for name in reference.TABLES:
            rows = u if name.startswith("u_") else i
            if is_adam:
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
                    wd,
                    decouple_wd,
                )
            else:
                reference.sparse_sgd_step(
                    P[name], grads[name], M[name], rows, lrs[s], moms[s] if use_mom else 0.0, wd, decouple_wd
                )
    return params, m, v, np.array(losses)


@pytest.mark.parametrize("opt", ["adam", "adam_l2", "sgd_mom", "sgd", "adam_no_range"])
def test_sparse_epoch_matches_numpy_lazy_reference(opt):
    """float64 tables, so kernel and reference agree to ~1e-12 and any rule difference would show."""
    users, items, ratings, model = _problem(np.float64)
    order = np.random.default_rng(3).permutation(len(ratings))
    kw = dict(
        is_adam=opt.startswith("adam"),
        use_mom=opt != "sgd",
        decouple_wd=opt != "adam_l2",
        lr=1e-2 if opt.startswith("adam") else 0.3,
        has_range=opt != "adam_no_range",
    )
    if not kw["has_range"]:
        model.params[:] *= 0.3  # keep the raw logits near the ratings' scale
    got = _run_epoch(cpu.train_epoch_sparse, model, users, items, ratings, order, 16, sparse=True, **kw)
    want = _sparse_reference_epoch(model, users, items, ratings, order, 16, **kw)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)
    assert np.abs(got[0] - model.params).max() > 1e-3  # it trained


def test_sparse_leaves_untouched_rows_alone():
    users, items, ratings, model = _problem()
    order = np.arange(32)  # two batches of 16 rows
    params, m, v, _ = _run_epoch(cpu.train_epoch_sparse, model, users, items, ratings, order, 16, True, sparse=True)
    untouched_users = np.setdiff1d(np.arange(N_USERS), users[:32])
    assert untouched_users.size
    before, after = _tables(model.params), _tables(params)
    np.testing.assert_array_equal(after["u_weight"][untouched_users], before["u_weight"][untouched_users])
    assert not _tables(m)["u_weight"][untouched_users].any()


@pytest.mark.parametrize("sparse", [False, True])
def test_serial_is_bit_reproducible(sparse):
    users, items, ratings, model = _problem()
    order = np.random.default_rng(5).permutation(len(ratings))
    kernel = cpu.train_epoch_sparse if sparse else cpu.train_epoch_dense
    a = _run_epoch(kernel, model, users, items, ratings, order, 16, True, sparse=sparse)
    b = _run_epoch(kernel, model, users, items, ratings, order, 16, True, sparse=sparse)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("is_adam", [True, False])
def test_parallel_exact_equals_serial(is_adam):
    """The parallel dense update splits independent elements across threads: same floats, same result."""
    users, items, ratings, model = _problem()
    order = np.random.default_rng(6).permutation(len(ratings))
    serial = _run_epoch(cpu.train_epoch_dense, model, users, items, ratings, order, 16, is_adam)
    parallel = _run_epoch(cpu.train_epoch_dense_parallel, model, users, items, ratings, order, 16, is_adam)
    for s, p in zip(serial, parallel):
        np.testing.assert_allclose(p, s, rtol=1e-6, atol=1e-7)


def test_sparse_one_chunk_parallel_equals_serial():
    users, items, ratings, model = _problem()
    order = np.random.default_rng(7).permutation(len(ratings))
    serial = _run_epoch(cpu.train_epoch_sparse, model, users, items, ratings, order, 16, True, sparse=True)
    one = _run_epoch(cpu.train_epoch_sparse_parallel, model, users, items, ratings, order, 16, True, sparse=True)
    for s, p in zip(serial, one):
        np.testing.assert_array_equal(p, s)


def test_hogwild_chunks_train():
    """Hogwild! is not reproducible, but every step runs and the loss goes down."""
    users, items, ratings, model = _problem(n_ratings=2000)
    order = np.random.default_rng(8).permutation(len(ratings))
    params, _, _, losses = _run_epoch(
        cpu.train_epoch_sparse_parallel,
        model,
        users,
        items,
        ratings,
        order,
        16,
        True,
        sparse=True,
        n_chunks=max(2, numba.get_num_threads()),
        lr=3e-2,
    )
    assert len(losses) == len(order) // 16 and np.isfinite(params).all()
    assert losses[-20:].mean() < losses[:20].mean()


def test_sparse_divergence_stops_before_the_update():
    users, items, ratings, model = _problem()
    model.params[0] = np.nan  # user 0's first factor
    first = int(np.flatnonzero(users == 0)[0]) // 16
    order = np.arange(len(ratings))
    params, _, _, losses = _run_epoch(
        cpu.train_epoch_sparse, model, users, items, ratings, order, 16, True, sparse=True
    )
    assert len(losses) == first + 1 and not np.isfinite(losses[-1])


# --- through the learner ---------------------------------------------------------------------------
def test_backends_are_registered():
    assert {"cpu", "parallel"} <= set(BACKENDS)
    for name in ("cpu", "parallel"):
        get_backend(name).warmup()


@pytest.mark.parametrize("backend", ["cpu", "parallel"])
@pytest.mark.parametrize("opt", [Adam, SGD])
def test_sparse_fit_on_synthetic_data_improves(backend, opt):
    dls = synthetic_dataloaders(6000, 60, 80, bs=32, seed=2)
    learn = collab_learner(
        dls,
        n_factors=8,
        y_range=(0.5, 5.5),
        seed=0,
        sparse=True,
        backend=backend,
        log=None,
        opt_func=opt if opt is Adam else SGD(mom=0.9),
    )
    start = learn.validate()
    learn.fit_one_cycle(3, 3e-2 if opt is Adam else 0.5, wd=0.01)
    assert learn.recorder.values[-1][1] < 0.8 * start


def test_sparse_divergence_raises_through_the_learner():
    dls = synthetic_dataloaders(3000, 30, 40, bs=32, seed=3)
    learn = collab_learner(dls, n_factors=4, seed=0, sparse=True, opt_func=SGD, log=None)
    with pytest.raises(DivergenceError):
        learn.fit(1, lr=1e6)


@pytest.mark.parametrize("min_parallel_params", [0, 10**9])
def test_parallel_backend_exact_fit_matches_cpu(min_parallel_params, monkeypatch):
    """Both kernels the parallel backend picks from (split update, or serial for small models)."""
    from mfscratch.backends import ParallelBackend

    monkeypatch.setattr(ParallelBackend, "min_parallel_params", min_parallel_params)
    dls = synthetic_dataloaders(4000, 40, 50, bs=32, seed=4)
    runs = []
    for backend in ("cpu", "parallel"):
        learn = collab_learner(dls, n_factors=6, y_range=(0.5, 5.5), seed=1, backend=backend, log=None)
        learn.fit_one_cycle(2, 1e-2, wd=0.1)
        runs.append(learn.model.params.copy())
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-5, atol=1e-6)


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


def test_sparse_prefetch_path_changes_nothing():
    """Tables above PREFETCH_MIN_BYTES take the prefetching path: embed the small problem's rows in
    a big user table and check the touched rows come out exactly as without prefetching."""
    users, items, ratings, model = _problem(np.float64)
    order = np.random.default_rng(9).permutation(len(ratings))
    want, _, _, want_losses = _run_epoch(
        cpu.train_epoch_sparse, model, users, items, ratings, order, 16, True, sparse=True
    )
    n_big = cpu.PREFETCH_MIN_BYTES // (8 * (K + 1)) + 1000
    small = _tables(model.params)
    big = EmbeddingDotBias(K, n_big, N_ITEMS, y_range=(0.0, 5.5), dtype=np.float64)
    assert big.params.nbytes > cpu.PREFETCH_MIN_BYTES
    uw, iw, ub, ib = cpu.split_flat(big.params, n_big, N_ITEMS, K)
    uw[:N_USERS], iw[:], ub[:N_USERS], ib[:] = (
        small["u_weight"],
        small["i_weight"],
        small["u_bias"][:, 0],
        small["i_bias"][:, 0],
    )
    params = big.params.copy()
    m, v = np.zeros_like(params), np.zeros_like(params)
    n_steps = len(order) // 16
    losses = np.empty(n_steps)
    cpu.train_epoch_sparse(
        params,
        m,
        v,
        n_big,
        N_ITEMS,
        K,
        users,
        items,
        ratings,
        order,
        16,
        np.linspace(1e-2, 1e-2 / 3, n_steps),
        np.linspace(0.95, 0.85, n_steps),
        3,
        True,
        True,
        0.99,
        1e-5,
        0.1,
        True,
        0.0,
        5.5,
        True,
        losses,
        1,
    )
    got_uw, got_iw, got_ub, got_ib = cpu.split_flat(params, n_big, N_ITEMS, K)
    w = _tables(want)
    np.testing.assert_array_equal(got_uw[:N_USERS], w["u_weight"])
    np.testing.assert_array_equal(got_iw, w["i_weight"])
    np.testing.assert_array_equal(got_ub[:N_USERS], w["u_bias"][:, 0])
    np.testing.assert_array_equal(losses, want_losses)


@pytest.mark.realdata
def test_documented_sparse_setting_on_ml100k(ml100k, tmp_path):
    """docs/speed.md: `mfscratch train --mode sparse` (the seed recipe otherwise) reaches <= 0.82."""
    import json

    from mfscratch import cli

    out = tmp_path / "run.json"
    assert cli.main(["train", "--mode", "sparse", "--quiet", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["epochs"][-1]["valid_loss"] <= 0.82


# --- sparse per-rating SGD (bs = 1): the fused kernel and its stratified parallel twin ---------------
def _layout(users, items, order, n_groups, user_group=None, item_group=None):
    user_group = cpu.balanced_groups(users, N_USERS, n_groups) if user_group is None else user_group
    item_group = cpu.balanced_groups(items, N_ITEMS, n_groups) if item_group is None else item_group
    block = np.empty(len(users), dtype=np.uint16)
    full_start = cpu.block_index(users, items, user_group, item_group, n_groups, block)
    blocked = np.empty(len(order) or len(users), dtype=order.dtype)
    block_start = cpu.block_layout(order, block, n_groups**2, blocked)
    if len(order) in (0, len(users)):
        np.testing.assert_array_equal(block_start, full_start)
    return blocked, block_start


def _per_rating_epoch(
    kernel, model, users, items, ratings, order, lr=0.3, wd=0.1, has_range=True, n_groups=1, lrs=None
):
    params = model.params.copy()
    lrs = np.linspace(lr, lr / 3, len(order)) if lrs is None else lrs
    losses = np.full(len(order), np.nan)
    block_start = np.array([0, len(order)])
    if n_groups > 1:
        order, block_start = _layout(users, items, order, n_groups)
    n = kernel(
        params,
        N_USERS,
        N_ITEMS,
        K,
        users,
        items,
        ratings,
        order,
        block_start,
        n_groups,
        lrs,
        wd,
        True,
        0.0,
        5.5 if has_range else 1.0,
        has_range,
        losses,
    )
    return params, losses[:n]


@pytest.mark.parametrize("decouple_wd", [True, False])
@pytest.mark.parametrize("has_range", [True, False])
def test_per_rating_sgd_matches_numpy_reference(decouple_wd, has_range):
    """bs = 1 sparse SGD written with the NumPy reference, step by step (float64: agreement to rounding)."""
    users, items, ratings, model = _problem(np.float64, n_ratings=120)
    if not has_range:
        model.params[:] *= 0.3
    order = np.random.default_rng(4).permutation(len(ratings))
    lr = 0.3 if has_range else 0.03  # raw logits: a smaller step keeps the epoch stable
    kw = dict(is_adam=False, use_mom=False, wd=0.1, decouple_wd=decouple_wd, lr=lr, has_range=has_range)
    want_params, _, _, want_losses = _sparse_reference_epoch(model, users, items, ratings, order, 1, **kw)
    for kernel in (cpu.train_epoch_sgd_per_rating, cpu.train_epoch_sgd_per_rating_parallel):
        got_params, got_losses = _per_rating_epoch(
            kernel, model, users, items, ratings, order, lr=lr, has_range=has_range
        )
        np.testing.assert_allclose(got_params, want_params, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got_losses, want_losses, rtol=1e-9, atol=1e-12)
    assert np.abs(want_params - model.params).max() > 1e-3  # it trained


def test_per_rating_sgd_float32_close_to_general_sparse_kernel():
    """float32: the fused kernel differs from the general one (bs = 1) by float32 rounding only."""
    users, items, ratings, model = _problem(np.float32, n_ratings=120)
    order = np.random.default_rng(5).permutation(len(ratings))
    want = _run_epoch(
        cpu.train_epoch_sparse, model, users, items, ratings, order, 1, False, use_mom=False, sparse=True, lr=0.05
    )
    got, losses = _per_rating_epoch(cpu.train_epoch_sgd_per_rating, model, users, items, ratings, order, lr=0.05)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(losses, want[3], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-5), (np.float64, 1e-13)])
@pytest.mark.parametrize("k", [1, 15, 16, 17, 50, 64])
def test_dot_rows_in_vector_chunks(k, dtype, rtol):
    """The per-rating dot product (16-lane chunks in LLVM IR, then the tail) equals NumPy's to rounding."""
    rng = np.random.default_rng(k)
    flat = rng.standard_normal(5 * k + 3).astype(dtype)
    a, b = 3, 2 * k + 3  # unaligned starts, as rows in the flat buffer are
    got = cpu._dot_rows(flat, a, b, k)
    want = np.dot(flat[a : a + k].astype(np.float64), flat[b : b + k].astype(np.float64))
    assert np.isclose(got, want, rtol=rtol, atol=rtol)
    assert cpu._dot_rows(flat, a, b, k) == got  # a fixed order of summation


def test_per_rating_float32_with_chunked_rows_close_to_general_sparse_kernel():
    """k = 37 (two vector chunks and a tail): the fused kernel still equals the general one to rounding."""
    rng = np.random.default_rng(3)
    n_users, n_items, k, n = 11, 9, 37, 300
    users = rng.integers(0, n_users, n).astype(np.int32)
    items = rng.integers(0, n_items, n).astype(np.int32)
    ratings = rng.integers(1, 6, n).astype(np.float32)
    params = (rng.standard_normal((n_users + n_items) * (k + 1)) * 0.1).astype(np.float32)
    order = rng.permutation(n)
    lrs = np.full(n, 0.05)
    want, zeros = params.copy(), np.zeros_like(params)
    want_losses = np.empty(n)
    cpu.train_epoch_sparse(
        want,
        zeros,
        zeros.copy(),
        n_users,
        n_items,
        k,
        users,
        items,
        ratings,
        order,
        1,
        lrs,
        lrs,
        0,
        False,
        False,
        0.99,
        1e-5,
        0.1,
        True,
        0.0,
        5.5,
        True,
        want_losses,
        1,
    )
    got, got_losses = params.copy(), np.empty(n)
    cpu.train_epoch_sgd_per_rating(
        got,
        n_users,
        n_items,
        k,
        users,
        items,
        ratings,
        order,
        np.array([0, n]),
        1,
        lrs,
        0.1,
        True,
        0.0,
        5.5,
        True,
        got_losses,
    )
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-4, atol=1e-5)
    assert np.abs(got - params).max() > 1e-3  # it trained


def test_balanced_groups_are_contiguous_with_equal_shares():
    rng = np.random.default_rng(0)
    codes = np.minimum(rng.zipf(1.5, 5000) - 1, 99).astype(np.int32)  # skewed: code 0 the most frequent
    group = cpu.balanced_groups(codes, 100, 4)
    assert group[0] == 0 and group[-1] == 3 and (np.diff(group) >= 0).all()  # contiguous ranges, in order
    shares = np.bincount(group[codes], minlength=4) / len(codes)
    assert shares.min() > 0.1  # equal code ranges would leave the last groups almost empty
    assert (cpu.balanced_groups(codes, 100, 1) == 0).all()


def test_block_layout_strata_share_no_rows():
    """Each block holds its user group's and item group's ratings, in the order's order; a stratum's blocks share no row."""
    users, items, ratings, model = _problem(np.float64)
    order = np.random.default_rng(6).permutation(len(ratings))
    g = 3
    user_group, item_group = cpu.balanced_groups(users, N_USERS, g), cpu.balanced_groups(items, N_ITEMS, g)
    blocked, block_start = _layout(users, items, order, g, user_group, item_group)
    assert sorted(blocked) == sorted(order) and block_start[0] == 0 and block_start[-1] == len(order)
    for t in range(g):
        seen_users, seen_items = set(), set()
        for c in range(g):
            rows = blocked[block_start[t * g + c] : block_start[t * g + c + 1]]
            assert (user_group[users[rows]] == c).all() and (item_group[items[rows]] == (c + t) % g).all()
            where = np.flatnonzero(np.isin(order, rows))
            np.testing.assert_array_equal(order[where], rows)  # stable: the order's order
            assert not seen_users & set(users[rows]) and not seen_items & set(items[rows])
            seen_users |= set(users[rows])
            seen_items |= set(items[rows])
    ident, ident_start = _layout(users, items, order[:0], g, user_group, item_group)  # empty: 0..n-1
    want, want_start = _layout(users, items, np.arange(len(users)), g, user_group, item_group)
    np.testing.assert_array_equal(ident, want)
    np.testing.assert_array_equal(ident_start, want_start)


@pytest.mark.parametrize("kernel", [cpu.train_epoch_sgd_per_rating, cpu.train_epoch_sgd_per_rating_parallel])
def test_sort_by_block_in_place_trains_like_the_layout(kernel):
    """The ratings moved into block order (in place) and read in sequence train like their block layout."""
    users, items, ratings, model = _problem(np.float32)
    g = 3
    user_group, item_group = cpu.balanced_groups(users, N_USERS, g), cpu.balanced_groups(items, N_ITEMS, g)
    su, si, sr = users.copy(), items.copy(), ratings.copy()
    block_start = cpu.sort_by_block(su, si, sr, user_group, item_group, g)
    _, want_start = _layout(users, items, np.arange(len(users)), g, user_group, item_group)
    np.testing.assert_array_equal(block_start, want_start)
    before = sorted(zip(users.tolist(), items.tolist(), ratings.tolist()))
    assert sorted(zip(su.tolist(), si.tolist(), sr.tolist())) == before  # a permutation of the ratings
    for p in range(g * g):  # each stored block holds the ratings its place in the layout says
        rows = slice(block_start[p], block_start[p + 1])
        t, c = divmod(p, g)
        assert (user_group[su[rows]] == c).all() and (item_group[si[rows]] == (c + t) % g).all()
    lrs = np.array([0.2])
    got = model.params.copy()
    kernel(
        got,
        N_USERS,
        N_ITEMS,
        K,
        su,
        si,
        sr,
        np.empty(0, dtype=np.int64),
        block_start,
        g,
        lrs,
        0.1,
        True,
        0.0,
        5.5,
        True,
        np.empty(0),
    )
    want = model.params.copy()
    cpu.train_epoch_sgd_per_rating(
        want,
        N_USERS,
        N_ITEMS,
        K,
        su,
        si,
        sr,
        np.arange(len(su)),
        np.array([0, len(su)]),
        1,
        lrs,
        0.1,
        True,
        0.0,
        5.5,
        True,
        np.empty(0),
    )
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kernel", [cpu.train_epoch_sgd_per_rating, cpu.train_epoch_sgd_per_rating_parallel])
@pytest.mark.parametrize("n_groups", [2, 3])
def test_per_rating_blocks_are_the_serial_epoch_over_the_block_layout(kernel, n_groups):
    """g blocks on the threads: bit for bit the serial per-rating epoch over the ratings in block order."""
    users, items, ratings, model = _problem(np.float32)
    order = np.random.default_rng(6).permutation(len(ratings))
    lrs = np.linspace(0.3, 0.1, len(order))
    got, got_losses = _per_rating_epoch(kernel, model, users, items, ratings, order, n_groups=n_groups, lrs=lrs)
    blocked, _ = _layout(users, items, order, n_groups)
    want, want_losses = _per_rating_epoch(
        cpu.train_epoch_sgd_per_rating, model, users, items, ratings, blocked, lrs=lrs
    )
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_losses, want_losses)


def test_per_rating_one_lr_and_no_losses():
    """A single lr stands for every step, and an empty losses array records nothing: same weights."""
    users, items, ratings, model = _problem(np.float32)
    order = np.random.default_rng(7).permutation(len(ratings))
    want, _ = _per_rating_epoch(
        cpu.train_epoch_sgd_per_rating, model, users, items, ratings, order, lrs=np.full(len(order), 0.2)
    )
    params = model.params.copy()
    n = cpu.train_epoch_sgd_per_rating(
        params,
        N_USERS,
        N_ITEMS,
        K,
        users,
        items,
        ratings,
        order,
        np.array([0, len(order)]),
        1,
        np.array([0.2]),
        0.1,
        True,
        0.0,
        5.5,
        True,
        np.empty(0),
    )
    assert n == len(order)
    np.testing.assert_array_equal(params, want)


@pytest.mark.parametrize("n_groups", [1, 2])
def test_per_rating_divergence_stops_before_the_update(n_groups):
    users, items, ratings, model = _problem(np.float64)
    model.params[:] *= 1e200  # the first dot product overflows to inf
    order = np.arange(len(ratings))
    params, losses = _per_rating_epoch(
        cpu.train_epoch_sgd_per_rating_parallel, model, users, items, ratings, order, n_groups=n_groups
    )
    assert len(losses) < len(order) and not np.isfinite(losses[-1])


def test_per_rating_groups():
    from mfscratch.backends import PER_RATING_GROUP_BYTES, per_rating_groups

    assert per_rating_groups(1000, 1) == 1 and per_rating_groups(1000, 2) == 2
    assert per_rating_groups(10 * PER_RATING_GROUP_BYTES, 1) == 10
    assert per_rating_groups(10 * PER_RATING_GROUP_BYTES, 4) == 12  # a multiple of the threads
    assert per_rating_groups(58_000_000, 2) == 14


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


def test_parallel_per_rating_epoch_order_and_progress_chunks(monkeypatch):
    """The parallel backend orders a per-rating epoch itself (its blocks, shuffled from the learner's
    rng): reproducible from the seed, and the progress bar's chunks give the same weights bit for bit."""
    dls = synthetic_dataloaders(3000, 60, 40, bs=1, seed=1)
    results = []
    for progress in (False, True, False):
        learn = collab_learner(
            dls, n_factors=20, y_range=(0.5, 5.5), seed=0, sparse=True, opt_func=SGD, backend="parallel", log=None
        )
        learn.progress = progress
        learn.fit_one_cycle(2, 0.05, wd=0.05)
        results.append((learn.model.params.copy(), learn.recorder.values, learn.recorder.losses))
    for got in results[1:]:
        np.testing.assert_array_equal(got[0], results[0][0])
        assert got[1] == results[0][1] and got[2] == results[0][2]
    backend = learn.backend
    order = backend.epoch_order(np.random.default_rng(0), SGD(), True)
    assert order is not None and sorted(order) == list(range(dls.n_train))
    assert backend.epoch_order(np.random.default_rng(0), SGD(mom=0.9), True) is None  # not per-rating: the learner's


@pytest.mark.parametrize("backend", ["cpu", "parallel"])
def test_per_rating_sgd_through_the_learner(backend, monkeypatch):
    """sparse=True, SGD, bs = 1 runs the fused kernel (and trains); bs = 2 or momentum do not."""
    from mfscratch.backends import per_rating_sgd

    assert per_rating_sgd(SGD(), 1) and not per_rating_sgd(SGD(), 2) and not per_rating_sgd(SGD(mom=0.9), 1)
    assert not per_rating_sgd(Adam(), 1)
    dls = synthetic_dataloaders(3000, 60, 40, bs=1, seed=1)
    learn = collab_learner(
        dls, n_factors=8, y_range=(0.5, 5.5), seed=0, sparse=True, opt_func=SGD, backend=backend, log=None
    )
    calls = []
    kernel = learn.backend._per_rating_epoch
    monkeypatch.setattr(learn.backend, "_per_rating_epoch", lambda *a: calls.append(a[9]) or kernel(*a))
    before = learn.validate()
    learn.fit_one_cycle(2, 0.05, wd=0.05)
    assert len(calls) == 2 and learn.recorder.values[-1][1] < before
    assert calls[0] == (1 if backend == "cpu" else numba.get_num_threads())  # n_groups


def test_documented_per_rating_setting_on_ml100k(ml100k, tmp_path):
    """docs/speed.md: per-rating SGD (sparse, sgd, bs 1, lr 0.02, wd 0.08, 12 epochs) reaches <= 0.82."""
    import json

    from mfscratch import cli

    out = tmp_path / "run.json"
    argv = [
        "train",
        "--mode",
        "sparse",
        "--optimizer",
        "sgd",
        "--bs",
        "1",
        "--lr",
        "0.02",
        "--wd",
        "0.08",
        "--epochs",
        "12",
        "--quiet",
        "--json",
        str(out),
    ]
    assert cli.main(argv) == 0
    assert json.loads(out.read_text())["epochs"][-1]["valid_loss"] <= 0.82


def test_epoch_kind_picks_the_kernel_and_warmup_compiles_it():
    """train_epoch's choice of kernel, which Learner.warmup compiles alone (a fresh environment's first run)."""
    from mfscratch.backends import CpuBackend

    b = CpuBackend()
    assert b.epoch_kind(Adam(), False, 64, 1000) == "deferred"
    assert b.epoch_kind(Adam(decouple_wd=False, wd=0.1), False, 64, 1000) == "dense"  # L2 decay: every row moves
    assert b.epoch_kind(Adam(), True, 64, 1000) == "sparse"
    assert b.epoch_kind(SGD(), True, 1, 1000) == "per_rating"
    assert b.epoch_kind(SGD(mom=0.9), True, 1, 1000) == "sparse"
    dls = synthetic_dataloaders(300, 20, 10, bs=1, seed=1)
    learn = collab_learner(dls, n_factors=4, y_range=(0.5, 5.5), seed=0, sparse=True, opt_func=SGD, log=None)
    learn.warmup()
    assert cpu.train_epoch_sgd_per_rating.signatures  # compiled (or loaded from the cache)
