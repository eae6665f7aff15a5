"""Ranking metrics and the top-k kernel, checked against hand-worked values and plain NumPy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mfscratch.errors import ConfigError
from mfscratch.metrics import SeenItems, ranking_from_topk, ranking_metrics, rating_errors, topk
from mfscratch.model import EmbeddingDotBias


def random_model(n_users=7, n_items=12, k=4, seed=0, y_range=(0.0, 5.5)):
    m = EmbeddingDotBias(k, n_users, n_items, y_range=y_range, seed=seed)
    m.params[:] = np.random.default_rng(seed).normal(size=m.params.shape).astype(np.float32)
    return m


def test_seen_items_csr_drops_duplicates_and_counts_ratings():
    seen = SeenItems.from_pairs([2, 0, 2, 2], [3, 1, 1, 3], n_users=3, n_items=5)
    assert seen.indptr.tolist() == [0, 1, 1, 3]
    assert seen.items_of(2).tolist() == [1, 3]
    assert seen.items_of(1).tolist() == []
    assert seen.item_counts.tolist() == [0, 2, 0, 2, 0]  # ratings, duplicates included


def _seen_pairs(n_users=40, n_items=30, n=600, seed=2):
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_users, n), rng.integers(0, n_items, n), n_users, n_items  # with repeats


def test_seen_items_made_on_first_use_equal_those_made_at_once():
    users, items, n_users, n_items = _seen_pairs()
    now = SeenItems.from_pairs(users, items, n_users, n_items)
    later = SeenItems.later_from_pairs(users, items, n_users, n_items)
    assert now.made and not later.made
    np.testing.assert_array_equal(later.item_counts, now.item_counts)  # counted without the matrix
    assert not later.made and later.n_users == n_users
    np.testing.assert_array_equal(later.indptr, now.indptr)
    assert later.made
    np.testing.assert_array_equal(later.indices, now.indices)
    np.testing.assert_array_equal(later.item_counts, now.item_counts)
    assert later.n_pairs == now.n_pairs == len(now.indices) < len(users)
    # pairs said to be distinct: their number needs no matrix
    unique = np.unique(users * n_items + items)
    distinct = SeenItems.later_from_pairs(unique // n_items, unique % n_items, n_users, n_items, distinct=True)
    assert distinct.n_pairs == len(unique) and not distinct.made
    with pytest.raises(ConfigError, match="codes must lie"):
        SeenItems.later_from_pairs([0, n_users], [0, 0], n_users, n_items)


@pytest.mark.parametrize("made", [True, False])
def test_seen_items_restricted_to_some_users_keep_their_rows_only(made):
    users, items, n_users, n_items = _seen_pairs()
    whole = SeenItems.from_pairs(users, items, n_users, n_items)
    seen = whole if made else SeenItems.later_from_pairs(users, items, n_users, n_items)
    chosen = np.array([0, 3, 17, 39])
    part = seen.restricted_to(chosen)
    assert seen.made == made  # restricting does not make the whole matrix
    for u in range(n_users):
        want = whole.items_of(u) if u in chosen else []
        np.testing.assert_array_equal(part.items_of(u), want)
    assert part.n_users == n_users


@pytest.mark.parametrize("users", ["all", 9])
def test_ranking_with_the_matrix_not_made_equals_the_ranking_with_it(users):
    """Training pairs that repeat, some validation pairs among them: a ranking given the seen items
    before their matrix exists equals the ranking given the matrix. The validation pairs are looked up
    by a hash join; the matrix is made only when every user is scored (a sample takes its users' rows)."""
    n_users, n_items = 30, 25
    rng = np.random.default_rng(6)
    tu, ti = rng.integers(0, n_users, 400), rng.integers(0, n_items, 400)
    vu, vi = (
        np.concatenate([tu[:40], rng.integers(0, n_users, 160)]),
        np.concatenate([ti[:40], rng.integers(0, n_items, 160)]),
    )
    vr = rng.integers(1, 6, 200).astype(float)
    m = random_model(n_users, n_items, seed=4)
    want = ranking_metrics(m, SeenItems.from_pairs(tu, ti, n_users, n_items), vu, vi, vr, k=4, users=users, seed=1)
    later = SeenItems.later_from_pairs(tu, ti, n_users, n_items)
    got = ranking_metrics(m, later, vu, vi, vr, k=4, users=users, seed=1)
    assert got | {"seconds": 0} == want | {"seconds": 0} and want["n_users_eligible"] > 9
    assert later.made == (users == "all")


@pytest.mark.parametrize("n_pairs, n_queries", [(0, 5), (5, 0), (1, 1), (400, 200), (50_000, 30_000)])
def test_contains_by_hash_join_equals_the_search_in_rows(n_pairs, n_queries):
    """``SeenItems.contains`` before the matrix is made (a hash join over the pairs) answers as the
    search in the made matrix's rows: repeated pairs, repeated queries, codes at both ends."""
    rng = np.random.default_rng(n_pairs)
    n_users, n_items = 40, 1 + n_pairs // 200
    tu, ti = rng.integers(0, n_users, n_pairs).astype(np.int32), rng.integers(0, n_items, n_pairs).astype(np.int32)
    qu = np.concatenate([tu[: n_queries // 2], rng.integers(0, n_users, n_queries - n_queries // 2)]).astype(np.int32)
    qi = np.concatenate([ti[: n_queries // 2], rng.integers(0, n_items, n_queries - n_queries // 2)]).astype(np.int32)
    later = SeenItems.later_from_pairs(tu, ti, n_users, n_items)
    got = later.contains(qu, qi)
    assert not later.made
    want = SeenItems.from_pairs(tu, ti, n_users, n_items).contains(qu, qi)
    np.testing.assert_array_equal(got, want)
    keys = set(zip(tu.tolist(), ti.tolist()))
    np.testing.assert_array_equal(got, [(u, i) in keys for u, i in zip(qu.tolist(), qi.tolist())])
    if n_queries <= 200:  # the join run as Python, where NumPy checks every index (the table, the filter)
        from mfscratch.kernels.pairs import pairs_in_pairs

        out = np.empty(len(qu), dtype=np.bool_)
        with np.errstate(over="ignore"):  # the hash's products wrap around, as they do compiled
            pairs_in_pairs.py_func(qu, qi, tu, ti, n_items, out)
        np.testing.assert_array_equal(out, got)
    assert later.n_ratings == n_pairs == SeenItems.from_pairs(tu, ti, n_users, n_items).n_ratings


@pytest.mark.parametrize("n", [0, 1, 1000, 300_000])
def test_take_pairs_equals_boolean_indexing(n):
    """``take_pairs``: the kept rows' pairs in row order, by a row mask or by a user mask, as NumPy's
    boolean indexing gives them (with several chunks on the threads from 131,072 rows)."""
    from mfscratch.kernels.pairs import take_pairs

    rng = np.random.default_rng(n)
    users, items = rng.integers(0, 50, n).astype(np.int32), rng.integers(0, 9, n).astype(np.int64)
    rows = rng.random(n) < 0.4
    got_users, got_items = take_pairs(users, items, rows)
    np.testing.assert_array_equal(got_users, users[rows])
    np.testing.assert_array_equal(got_items, items[rows])
    assert got_users.dtype == np.int32 and got_items.dtype == np.int64
    chosen = rng.random(50) < 0.2
    got_users, got_items = take_pairs(users, items, chosen, by_user=True)
    np.testing.assert_array_equal(got_users, users[chosen[users]])
    np.testing.assert_array_equal(got_items, items[chosen[users]])


@pytest.mark.parametrize("users", ["all", 9])
def test_ranking_without_the_seen_lookup_when_no_pair_repeats(users):
    """Data in which no pair repeats: ``valid_pairs_unseen`` skips the lookup of validation pairs in
    ``seen`` and (for a sample) makes only the sampled users' rows, with the same metrics."""
    n_users, n_items = 30, 25
    rng = np.random.default_rng(5)
    pairs = rng.permutation(n_users * n_items)[:400]
    u, i = pairs // n_items, pairs % n_items
    r = rng.integers(1, 6, 400).astype(float)
    tu, ti, vu, vi, vr = u[:300], i[:300], u[300:], i[300:], r[300:]
    m = random_model(n_users, n_items, seed=4)
    want = ranking_metrics(m, SeenItems.from_pairs(tu, ti, n_users, n_items), vu, vi, vr, k=4, users=users, seed=1)
    later = SeenItems.later_from_pairs(tu, ti, n_users, n_items, distinct=True)
    got = ranking_metrics(m, later, vu, vi, vr, k=4, users=users, seed=1, valid_pairs_unseen=True)
    assert got | {"seconds": 0} == want | {"seconds": 0} and want["n_users"] > 5
    assert later.made == (users == "all")  # a sample makes only its users' rows


@pytest.mark.parametrize("chunks", [1, 2, 3, 7])
def test_seen_rows_and_repeats_on_any_number_of_chunks(monkeypatch, chunks):
    """The counting sorts split the rows into chunks on the threads; any split gives the same CSR
    matrix as sorting the distinct pairs, and the same count of repeats as pandas."""
    import pandas as pd

    from mfscratch.kernels import pairs

    monkeypatch.setattr(pairs, "sort_chunks", lambda n, n_keys: chunks)
    rng = np.random.default_rng(chunks)
    for n_users, n_items, n in ((1, 1, 1), (5, 4, 60), (40, 3, 500), (300, 200, 20000), (9, 9, 0)):
        users = rng.integers(0, n_users, n).astype(np.int32)
        items = rng.integers(0, n_items, n).astype(np.int32)
        distinct = np.unique(users.astype(np.int64) * n_items + items)
        indptr = np.empty(n_users + 1, dtype=np.int64)
        indices = np.empty(n, dtype=np.int32)
        counts = np.empty(n_items, dtype=np.int64)
        used = pairs.seen_rows(users, items, n_users, n_items, indptr, indices, counts)
        assert used == len(distinct)
        assert counts.tolist() == np.bincount(items, minlength=n_items).tolist()
        assert indptr.tolist() == np.searchsorted(distinct // n_items, np.arange(n_users + 1)).tolist()
        assert indices[:used].tolist() == (distinct % n_items).tolist()
        want = int(pd.DataFrame({"u": users, "i": items}).duplicated().sum())
        assert pairs.count_repeated_pairs(users, items, n_users, n_items) == want
        start = np.empty(n_users + 1, dtype=np.int64)
        grouped = np.empty(n, dtype=np.int32)
        pairs.group_rows(users, n_users, np.arange(n, dtype=np.int32), chunks, start, grouped)
        assert grouped.tolist() == np.argsort(users, kind="stable").tolist()  # stable: rows in order


def test_hand_checked_metrics_one_user():
    # Ranked list [2, 5, 3], relevant {3, 4}: one hit, at rank 3.
    r = ranking_from_topk([[2, 5, 3]], [1], [1, 1], [3, 4], n_items=6)
    assert r["precision"] == pytest.approx(1 / 3)
    assert r["recall"] == pytest.approx(1 / 2)
    # DCG = 1/log2(4) = 0.5; IDCG = 1/log2(2) + 1/log2(3) = 1.63093; NDCG = 0.30657.
    assert r["ndcg"] == pytest.approx(0.5 / (1 + 1 / math.log2(3)))
    assert r["ndcg"] == pytest.approx(0.306574, abs=1e-6)


def test_hand_checked_metrics_two_users_and_empty_slots():
    # user 0: list [1, 2], relevant {1, 2, 3}: 2 hits at ranks 1, 2 -> p=1, r=2/3, ndcg=1 (IDCG over min(3, 2)=2 ranks)
    # user 1: list [4, -1] (only one candidate), relevant {0}: nothing found.
    r = ranking_from_topk([[1, 2], [4, -1]], [0, 1], [0, 0, 0, 1], [1, 2, 3, 0], n_items=5)
    assert r["precision"] == pytest.approx((1.0 + 0.0) / 2)
    assert r["recall"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert r["ndcg"] == pytest.approx((1.0 + 0.0) / 2)


def test_ranking_refuses_validation_rows_that_do_not_fit():
    """Codes outside the tables or columns of different lengths are refused before any compiled pass."""
    m = random_model(n_users=7, n_items=12)
    seen = SeenItems.from_pairs([1, 2], [3, 4], 7, 12)
    with pytest.raises(ConfigError, match="user codes"):
        ranking_metrics(m, seen, [1, 7], [2, 3], [5.0, 5.0])
    with pytest.raises(ConfigError, match="item codes"):
        ranking_metrics(m, seen, [1, 2], [2, 12], [5.0, 5.0])
    with pytest.raises(ConfigError, match="must be one a row: got 2, 1 and 2"):
        ranking_metrics(m, seen, [1, 2], [2], [5.0, 5.0])


def test_users_without_relevant_items_are_refused():
    with pytest.raises(ConfigError):
        ranking_from_topk([[1]], [0], [1], [1], n_items=3)


def numpy_topk(model, user, seen_items, k, first_item):
    """The obvious way: score every item, drop the excluded ones, stable sort by score descending."""
    uw, iw, ub, ib = (t.astype(np.float64) for t in model.kernel_tables())
    x = iw @ uw[user] + ub[user] + ib
    allowed = np.ones(len(x), bool)
    allowed[:first_item] = False
    allowed[list(seen_items)] = False
    cands = np.flatnonzero(allowed)
    order = cands[np.lexsort((cands, -x[cands]))][:k]
    return order, x[order]


@pytest.mark.parametrize("k", [1, 3, 11, 15])
def test_topk_kernel_matches_numpy(k):
    m = random_model()
    rng = np.random.default_rng(1)
    users, items = rng.integers(0, 7, 30), rng.integers(0, 12, 30)
    seen = SeenItems.from_pairs(users, items, 7, 12)
    got_items, got_scores = topk(m, np.arange(7), seen, k, first_item=1)
    for u in range(7):
        want_items, want_scores = numpy_topk(m, u, set(seen.items_of(u)), k, 1)
        n = len(want_items)
        assert got_items[u, :n].tolist() == want_items.tolist()
        np.testing.assert_allclose(got_scores[u, :n], want_scores, rtol=1e-6)
        assert (got_items[u, n:] == -1).all() and np.isneginf(got_scores[u, n:]).all()


def test_topk_kernel_matches_numpy_across_tiles_and_blocks():
    # More users than a tile, items over several blocks, factors not a multiple of 4, long seen rows.
    from mfscratch.kernels.ranking import ITEM_BLOCK, USER_TILE

    n_users, n_items = 2 * USER_TILE + 5, 2 * ITEM_BLOCK + 37
    m = random_model(n_users=n_users, n_items=n_items, k=7, seed=3)
    rng = np.random.default_rng(4)
    users, items = rng.integers(0, n_users, 6000), rng.integers(0, n_items, 6000)
    seen = SeenItems.from_pairs(users, items, n_users, n_items)
    chosen = np.array([0, 5, 3, n_users - 1] + list(range(6, n_users - 1)))
    got_items, got_scores = topk(m, chosen, seen, 20, first_item=1)
    for r, u in enumerate(chosen):
        want_items, want_scores = numpy_topk(m, u, set(seen.items_of(u)), 20, 1)
        assert got_items[r].tolist() == want_items.tolist()
        np.testing.assert_allclose(got_scores[r], want_scores, rtol=1e-12, atol=1e-12)


def test_topk_orders_by_float64_where_float32_scores_tie():
    """Scores that differ only below float32's resolution (1 + d 2^-40) are ranked as float64 ranks
    them: the float32 screen lets every near tie through to the float64 scores."""
    n_items = 3000
    m = random_model(n_users=2, n_items=n_items, k=2)
    m.u_weight.weight[:] = 1.0
    m.u_bias.weight[:] = 0.0
    m.i_bias.weight[:] = 0.0
    d = np.random.default_rng(7).permutation(n_items).astype(np.float32)
    m.i_weight.weight[:, 0] = 1.0
    m.i_weight.weight[:, 1] = d * np.float32(2.0**-40)
    items, scores = topk(m, [0, 1], None, 25, first_item=1)
    want_items, want_scores = numpy_topk(m, 0, set(), 25, 1)
    assert items[0].tolist() == items[1].tolist() == want_items.tolist()
    assert (np.diff(scores[0]) < 0).all()  # distinct in float64
    np.testing.assert_array_equal(scores[0], want_scores)


def test_topk_never_chooses_a_nan_score():
    m = random_model(n_users=2, n_items=6)
    m.i_bias.weight[3, 0] = np.nan
    items, scores = topk(m, [0, 1], None, 5, first_item=1)  # five candidates, item 3 scores NaN
    assert (np.sort(items[:, :4], axis=1) == [1, 2, 4, 5]).all()
    assert (items[:, 4] == -1).all() and np.isneginf(scores[:, 4]).all()


def test_topk_ties_go_to_the_lower_item():
    m = random_model(n_users=2, n_items=6)
    m.i_weight.weight[:] = 0.0
    m.i_bias.weight[:] = 0.0
    m.i_bias.weight[4, 0] = 1.0
    items, _ = topk(m, [0, 1], None, 4, first_item=1)
    assert items.tolist() == [[4, 1, 2, 3], [4, 1, 2, 3]]


def plain_ranking(model, train, valid, k, threshold):
    """Per-user sets and loops: the definitions written out directly."""
    seen = {}
    for u, i in train:
        seen.setdefault(u, set()).add(i)
    rel = {}
    for u, i, r in valid:
        if r >= threshold and i >= 1 and i not in seen.get(u, set()):
            rel.setdefault(u, set()).add(i)
    p, rc, nd = [], [], []
    for u, R in sorted(rel.items()):
        L, _ = numpy_topk(model, u, seen.get(u, set()), k, 1)
        hits = [1.0 if i in R else 0.0 for i in L]
        dcg = sum(h / math.log2(j + 2) for j, h in enumerate(hits))
        idcg = sum(1 / math.log2(j + 2) for j in range(min(len(R), k)))
        p.append(sum(hits) / k)
        rc.append(sum(hits) / len(R))
        nd.append(dcg / idcg)
    return np.mean(p), np.mean(rc), np.mean(nd), len(rel)


@pytest.mark.parametrize("k,threshold", [(3, 4.0), (5, 3.0)])
def test_ranking_metrics_match_plain_implementation(k, threshold):
    n_users, n_items = 9, 15
    m = random_model(n_users, n_items, seed=3)
    rng = np.random.default_rng(4)
    tu, ti = rng.integers(1, n_users, 40), rng.integers(0, n_items, 40)
    vu, vi, vr = rng.integers(1, n_users, 40), rng.integers(0, n_items, 40), rng.integers(1, 6, 40).astype(float)
    seen = SeenItems.from_pairs(tu, ti, n_users, n_items)
    got = ranking_metrics(m, seen, vu, vi, vr, k=k, threshold=threshold, first_item=1)
    p, r, nd, n = plain_ranking(m, list(zip(tu, ti)), list(zip(vu, vi, vr)), k, threshold)
    assert got["n_users"] == n > 0
    assert got["precision"] == pytest.approx(p)
    assert got["recall"] == pytest.approx(r)
    assert got["ndcg"] == pytest.approx(nd)


def test_ranking_metrics_with_no_relevant_items_is_nan():
    m = random_model()
    seen = SeenItems.from_pairs([1], [1], 7, 12)
    r = ranking_metrics(m, seen, [2], [3], [1.0], k=5)
    assert r["n_users"] == 0 and math.isnan(r["precision"])


def test_rating_errors():
    m = random_model()
    users, items = np.array([1, 2, 3]), np.array([4, 5, 6])
    truth = np.array([1.0, 2.0, 3.0])
    err = m.forward(users, items).astype(np.float64) - truth
    e = rating_errors(m, users, items, truth)
    assert e["mse"] == pytest.approx(np.mean(err**2))
    assert e["rmse"] == pytest.approx(np.sqrt(np.mean(err**2)))
    assert e["mae"] == pytest.approx(np.mean(np.abs(err)))
