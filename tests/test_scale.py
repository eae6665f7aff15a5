"""The path at scale (issue 17): the report's phase fields, the recorder's bounded memory, ranking
metrics on a sample of users, the compiled seen-items matrix. Correctness only, never timings."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import make_ratings
from robust_helpers import assert_one_line_error, run_cli

from benchmarks.ml25m_path import write_ratings_csv
from mfscratch import SGD, CollabDataLoaders, collab_learner, metrics
from mfscratch.learner import Recorder
from mfscratch.metrics import SeenItems, ranking_metrics, ranking_users
from mfscratch.synthetic import synthetic_dataloaders

PHASES = ("read", "check", "encode", "split", "init", "compile", "setup", "report", "total")


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory):
    return write_ratings_csv(tmp_path_factory.mktemp("scale") / "ratings.csv", 6000, 120, 90, seed=3)


def _train(capsys, csv, tmp_path, *extra):
    report = tmp_path / "r.json"
    argv = ["train", "--ratings", csv, "--user-col", "userId", "--item-col", "movieId", "--rating-col", "rating"]
    rc, out, err = run_cli(capsys, *argv, "--quiet", "--json", report, *extra)
    assert rc == 0, err
    return json.loads(report.read_text())


def test_report_has_every_phase_and_the_old_keys(capsys, small_csv, tmp_path):
    r = _train(capsys, small_csv, tmp_path, "--epochs", "2", "--mode", "sparse", "--optimizer", "sgd", "--bs", "1")
    for key in ("epochs", "train_seconds", "compile_seconds", "n_users", "n_items", "n_train", "n_valid", "ranking"):
        assert key in r  # the keys reports had before
    for phase in PHASES:
        assert isinstance(r[f"{phase}_seconds"], float) and r[f"{phase}_seconds"] >= 0, phase
    assert r["n_train"] + r["n_valid"] == 6000  # every row read, none lost
    assert len(r["epochs"]) == 2
    for e in r["epochs"]:
        assert set(e) >= {"epoch", "train_loss", "valid_loss", "seconds", "train_seconds", "valid_seconds", "mean_loss"}
        assert (
            0 < e["train_seconds"]
            and 0 <= e["valid_seconds"]
            and e["train_seconds"] + e["valid_seconds"] <= e["seconds"]
        )
    assert r["train_seconds"] >= sum(e["seconds"] for e in r["epochs"])  # the fit's wall time holds the epochs
    assert r["total_seconds"] >= r["train_seconds"] + r["read_seconds"] + r["compile_seconds"]
    ranking = r["ranking"]
    assert ranking["sampled"] is False and ranking["sample_seed"] is None
    assert ranking["n_users"] == ranking["n_users_eligible"] > 0


def test_ranking_users_on_the_command_line(capsys, small_csv, tmp_path):
    r = _train(capsys, small_csv, tmp_path, "--epochs", "1", "--ranking-users", "7", "--seed", "5")
    assert r["ranking"]["n_users"] == 7 and r["ranking"]["sampled"] and r["ranking"]["sample_seed"] == 5
    everyone = _train(capsys, small_csv, tmp_path, "--epochs", "1", "--ranking-users", "all")["ranking"]
    assert not everyone["sampled"] and everyone["n_users"] == everyone["n_users_eligible"]
    rc, _, err = run_cli(capsys, "train", "--ratings", small_csv, "--ranking-users", "0")
    assert rc == 2
    assert_one_line_error(err, "--ranking-users")
    rc, _, err = run_cli(capsys, "train", "--ratings", small_csv, "--ranking-users", "10")
    assert rc == 2
    assert_one_line_error(err, "--ranking-users", "--ranking-k")


def _per_rating_fit(epochs=3, seed=0):
    dls = synthetic_dataloaders(4000, 60, 50, bs=1, seed=seed)
    learn = collab_learner(dls, n_factors=8, y_range=(0.5, 5.5), opt_func=SGD, sparse=True, seed=1, log=None)
    learn.fit_one_cycle(epochs, 0.02)
    return learn


def test_recorder_keeps_a_seeded_sample_of_long_epochs(monkeypatch):
    everything = _per_rating_fit().recorder
    steps_per_epoch = 3200
    assert everything.steps == list(range(3 * steps_per_epoch)) and not everything.sampled
    monkeypatch.setattr(Recorder, "STEPS_KEPT", 1000)
    monkeypatch.setattr(Recorder, "SAMPLE_STEPS", 100)
    sample = _per_rating_fit().recorder
    assert sample.sampled and len(sample.losses) == len(sample.lrs) == len(sample.moms) == len(sample.steps) == 300
    steps = np.array(sample.steps)
    assert (np.diff(steps) > 0).all() and steps[0] >= 0 and steps[-1] < 3 * steps_per_epoch
    for e in range(3):  # a sample inside every epoch
        assert ((steps >= e * steps_per_epoch) & (steps < (e + 1) * steps_per_epoch)).sum() == 100
    # the kept values are the values of those steps, and the fit itself is unchanged
    np.testing.assert_array_equal(sample.losses, np.array(everything.losses)[steps])
    np.testing.assert_array_equal(sample.lrs, np.array(everything.lrs)[steps])
    np.testing.assert_array_equal(sample.moms, np.array(everything.moms)[steps])  # made at the kept steps alone
    assert sample.values == everything.values
    # each epoch's mean is over all its steps, not the sample
    full = np.array(everything.losses).reshape(3, steps_per_epoch)
    np.testing.assert_allclose(sample.mean_losses, full.mean(axis=1), rtol=1e-12)
    assert _per_rating_fit().recorder.mean_losses == everything.mean_losses


def test_per_rating_runner_reuses_its_loss_buffer():
    learn = _per_rating_fit(epochs=1)
    backend = learn.backend
    backend.bind(learn.model, learn.opt_state, learn.dls)
    runner = backend.runner(learn.opt, "per-rating", 1)
    lrs = np.full(learn.dls.n_train, 1e-3)
    first = runner.train_epoch(np.random.default_rng(0), lrs, lrs, 0)
    kept = first.copy()
    second = runner.train_epoch(np.random.default_rng(1), lrs, lrs, 0)
    assert np.shares_memory(first, second)  # no new 8-bytes-a-rating array every epoch
    assert not np.array_equal(kept, second)


def test_seen_items_match_the_sorted_unique_pairs():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 300, 20000).astype(np.int32)
    items = rng.integers(0, 200, 20000).astype(np.int32)
    seen = SeenItems.from_pairs(users, items, 301, 200)
    keys = np.unique(users.astype(np.int64) * 200 + items)
    np.testing.assert_array_equal(seen.indices, keys % 200)
    np.testing.assert_array_equal(np.diff(seen.indptr), np.bincount(keys // 200, minlength=301))
    np.testing.assert_array_equal(seen.item_counts, np.bincount(items, minlength=200))
    from mfscratch.kernels.pairs import pairs_in_rows

    qu, qi = rng.integers(0, 301, 5000), rng.integers(0, 200, 5000)
    got = np.empty(5000, dtype=np.bool_)
    pairs_in_rows(seen.indptr, seen.indices, qu, qi, got)
    np.testing.assert_array_equal(got, np.isin(qu * 200 + qi, keys))


def test_ranking_samples_users_above_the_budget(monkeypatch):
    learn = _per_rating_fit(epochs=1)
    d, t = learn.dls, learn.trained()
    args = (learn.model, t.seen, d.valid_users, d.valid_items, d.valid_ratings, 5, 3.0)
    exact = ranking_metrics(*args)
    assert not exact["sampled"] and exact["n_users"] == exact["n_users_eligible"] > 20
    assert ranking_metrics(*args, users="all") | {"seconds": 0} == exact | {"seconds": 0}
    sample = ranking_metrics(*args, users=20, seed=3)
    assert sample["sampled"] and sample["n_users"] == 20 and sample["sample_seed"] == 3
    assert sample | {"seconds": 0} == ranking_metrics(*args, users=20, seed=3) | {"seconds": 0}  # seeded
    assert ranking_metrics(*args, users=10**6)["n_users"] == exact["n_users"]
    # the automatic rule: above the budget of scores, budget // n_items users (at least the minimum)
    monkeypatch.setattr(metrics, "RANKING_MIN_BUDGET", 10 * learn.model.n_items)
    monkeypatch.setattr(metrics, "RANKING_SCORES_PER_RATING", 0)
    monkeypatch.setattr(metrics, "RANKING_MIN_SAMPLE", 4)
    auto = ranking_metrics(*args)
    assert auto["sampled"] and auto["n_users"] == 10
    assert ranking_users(5, 10**9) == 4 and ranking_users(3, 10**9) == 3
    monkeypatch.setattr(metrics, "RANKING_SCORES_PER_RATING", 5)
    assert metrics.ranking_budget(10**7) == 5 * 10**7
    assert ranking_users(10**5, 1000, n_train=10**7) == 5 * 10**4 and ranking_users(10**4, 1000, n_train=10**7) == 10**4
    with pytest.raises(Exception, match="users must be"):
        ranking_users(10, 10, users=0)


def test_repeated_pairs_counted_on_codes_as_pandas_counts_them():
    from mfscratch.kernels.pairs import count_repeated_pairs

    rng = np.random.default_rng(1)
    for n_users, n_items, n in ((5, 4, 60), (300, 200, 20000), (2, 2, 3)):
        users = rng.integers(0, n_users, n).astype(np.int32)
        items = rng.integers(0, n_items, n).astype(np.int32)
        want = int(pd.DataFrame({"u": users, "i": items}).duplicated().sum())
        assert count_repeated_pairs(users, items, n_users, n_items) == want


def test_consuming_the_table_gives_the_same_loaders():
    df = make_ratings(n_users=50, n_items=40, n_ratings=2000, seed=4)
    kept = CollabDataLoaders.from_df(df.copy(), seed=3, bs=8)
    table = df.copy()
    consumed = CollabDataLoaders.from_df(table, seed=3, bs=8, consume=True)
    assert list(table.columns) == []  # the columns went as they were encoded
    for name in ("train_users", "train_items", "train_ratings", "valid_users", "valid_items", "valid_ratings"):
        np.testing.assert_array_equal(getattr(kept, name), getattr(consumed, name))
    assert kept.classes == consumed.classes
    assert set(kept.phase_seconds) == {"check", "encode", "split"}


@pytest.mark.parametrize("pct", [0.25, 0.0, 1.0, 0.3])
def test_one_cycle_in_chunks_is_bit_equal_to_combined_cos(pct):
    from mfscratch import schedule

    for total in (1, 7, 6250, 200_003):
        for a, b in ((0, total), (0, total // 3), (total // 3, total), (total // 2, total // 2 + 1)):
            pos = np.arange(a, b, dtype=np.float64) / total
            want_lrs = schedule.combined_cos(pct, 0.02 / 25, 0.02, 0.02 / 1e5, pos)
            want_moms = schedule.combined_cos(pct, 0.95, 0.85, 0.95, pos)
            lrs, moms = schedule.one_cycle(total, 0.02, pct_start=pct, start=a, stop=b)
            np.testing.assert_array_equal(lrs, want_lrs)
            np.testing.assert_array_equal(moms, want_moms)


def _read_both_ways(monkeypatch, path):
    """``read_ratings`` of ``path`` block by block (tiny blocks) and as one table: (result or error text) each."""
    from mfscratch import tablefile
    from mfscratch.errors import DataError
    from mfscratch.readers import read_ratings

    stream = tablefile._stream_arrow
    results: list = []
    streamed_blocks = []

    def recorded(*args):
        out = stream(*args)
        streamed_blocks.append(out is not None)
        return out

    for streaming in (True, False):
        monkeypatch.setattr(tablefile, "_STREAM_BLOCK", 64)
        monkeypatch.setattr(tablefile, "_stream_arrow", recorded if streaming else (lambda *a: None))
        try:
            t = read_ratings(path)
            results.append((t.df, t.info))
        except DataError as e:
            results.append(str(e))
    return results, streamed_blocks == [True]


@pytest.mark.parametrize(
    "tail",
    [
        "",  # plain ids: read block by block
        "7,007,4\n",  # an id with a leading zero: text ids, read whole
        "8,,4\n",  # a missing id
        "9,3,4.5\n",  # the ratings turn from integers to decimals in a later block
        "9,3,\n",  # a missing rating alone in a later block: read whole
        "9,3,4\n9,3,\n",  # a missing rating among others: the ratings read so far go back into Arrow chunks
        "9,3,4,5\n",  # a row of the wrong width
        "   \n9,3,4\n",  # a blank line of spaces
        "user 9,3,4\n",  # a text id
    ],
)
def test_block_by_block_reading_equals_the_whole_file_read(monkeypatch, tmp_path, tail):
    rng = np.random.default_rng(0)
    lines = [
        f"{u},{i},{r}" for u, i, r in zip(rng.integers(1, 50, 300), rng.integers(1, 40, 300), rng.integers(1, 6, 300))
    ]
    path = tmp_path / "r.csv"
    path.write_text("user,item,rating\n" + "\n".join(lines) + "\n" + tail)
    (streamed, whole), used_blocks = _read_both_ways(monkeypatch, path)
    assert used_blocks == (
        tail in ("", "   \n9,3,4\n", "9,3,4\n9,3,\n")
    )  # plain ids are read block by block, the rest whole
    if isinstance(whole, str):
        assert streamed == whole
        return
    pd.testing.assert_frame_equal(streamed[0], whole[0])
    assert streamed[1] == whole[1] and len(whole[0]) == 300 + tail.count(",") // 2


@pytest.mark.parametrize("values", [[5, 3, 5, 9, 3], [-4, 10**6, 7, 7], [2**40, 2**40 + 3, 2**40], [0, 1]])
def test_integer_ids_encoded_through_a_table_as_factorize_encodes_them(values):
    from mfscratch.data import _encode

    col = pd.Series(np.array(values, dtype=np.int64))
    codes, vocab = _encode(col, "user")
    want, uniques = pd.factorize(col, sort=True)
    np.testing.assert_array_equal(codes, want + 1)
    assert codes.dtype == np.int32 and list(vocab) == ["#na#"] + uniques.tolist()
    assert all(type(v) is int for v in vocab[1:])


def _attach_titles_by_row(table, items, merge_duplicates=False):
    """attach_titles as it named every row (before it named each distinct key once): the reference."""
    has_title = items["title"].notna() & items["title"].astype(str).str.strip().ne("")
    items = items[has_title].drop_duplicates()
    keys = table.df[table.item]
    if keys.dtype != items["key"].dtype:
        keys, items = keys.astype(str), items.assign(key=items["key"].astype(str))
    titles = items["title"].astype(str)
    if not merge_duplicates:
        shared = titles.duplicated(keep=False)
        titles = titles.where(~shared, titles + " [id " + items["key"].astype(str) + "]")
    named = keys.map(pd.Series(titles.to_numpy(), index=items["key"].to_numpy()))
    untitled = keys.astype(str)
    untitled = untitled.where(~untitled.isin(set(titles)), "[id " + untitled + "]")
    return named.where(named.notna(), untitled).tolist()


@pytest.mark.parametrize("merge", [False, True])
@pytest.mark.parametrize(
    "keys",
    [
        [3, 1, 2, 3, 30, 1, 7],  # int keys, the items' keys int too
        np.array([3, 1, 2, 3, 30, 1, 7], dtype=np.int32),  # int32 keys (read_ratings(narrow_ids=True)): as int64
        ["3", "1", "2", "3", "30", "1", "7"],  # text keys against int item keys: compared as text
        ["3", None, "2", "3", "30", "1", None],  # missing keys
    ],
)
def test_titles_attached_per_distinct_key_as_per_row(keys, merge):
    from mfscratch.readers import RatingsTable, attach_titles

    items = pd.DataFrame({"key": [1, 2, 3, 4, 5], "title": ["Heat", "Up", "Heat", "30", ""]})
    ratings = pd.DataFrame({"u": range(len(keys)), "m": keys, "r": [4.0] * len(keys)})
    table = RatingsTable(ratings, "u", "m", "r")
    titled = attach_titles(table, items, merge_duplicates=merge)
    assert titled.df["title"].tolist() == _attach_titles_by_row(table, items, merge)
    assert list(titled.df.columns) == ["u", "title", "r"] and titled.df["u"].tolist() == list(range(len(keys)))
    if not any(k is None for k in keys):
        dls = CollabDataLoaders.from_df(titled.df, valid_pct=0.0, seed=0, bs=1)
        want = pd.DataFrame({"u": ratings["u"], "title": _attach_titles_by_row(table, items, merge), "r": ratings["r"]})
        ref = CollabDataLoaders.from_df(want, valid_pct=0.0, seed=0, bs=1)
        assert list(dls.classes["title"]) == list(ref.classes["title"])
        np.testing.assert_array_equal(dls.train_items, ref.train_items)


def test_a_schedule_at_any_steps_equals_its_slices():
    from mfscratch import schedule

    sched = schedule.OneCycle(100_003, 0.02, pct_start=0.3)
    steps = np.sort(np.random.default_rng(0).choice(100_003, 500, replace=False))
    lrs, moms = sched(0, 100_003)
    at_lrs, at_moms = sched.at(steps)
    np.testing.assert_array_equal(at_lrs, lrs[steps])
    np.testing.assert_array_equal(at_moms, moms[steps])
    only, none = sched(10, 5000, with_moms=False)
    np.testing.assert_array_equal(only, lrs[10:5000])
    assert len(none) == 0
    const = schedule.Constant(50, 0.1, 0.9)
    assert const.at(np.arange(3))[1].tolist() == [0.9] * 3 and len(const(0, 50, with_moms=False)[1]) == 0


def test_data_ml25m_by_name_takes_the_same_path(capsys, tmp_path, monkeypatch, small_csv):
    """A stand-in ml-25m folder (synthetic ratings.csv, movies.csv with a shared title): read block by
    block, titled per distinct movie, every row kept."""
    folder = tmp_path / "ml-25m"
    folder.mkdir()
    (folder / "ratings.csv").write_bytes(small_csv.read_bytes())
    movie_ids = sorted(pd.read_csv(small_csv)["movieId"].unique())
    titles = [f"Film {m} (2000)" for m in movie_ids]
    titles[1] = titles[0]  # two movies share a title: kept apart as "[id KEY]"
    pd.DataFrame({"movieId": movie_ids[:-3], "title": titles[:-3], "genres": "Drama"}).to_csv(
        folder / "movies.csv", index=False
    )  # the last three movies have no title: their id names them
    monkeypatch.setenv("MFSCRATCH_DATA", str(tmp_path))
    report = tmp_path / "r.json"
    rc, _, err = run_cli(capsys, "train", "--data", "ml-25m", "--epochs", "1", "--quiet", "--json", report)
    assert rc == 0, err
    r = json.loads(report.read_text())
    assert r["n_train"] + r["n_valid"] == 6000 and r["n_items"] == len(movie_ids) + 1  # no row lost, no id merged
    assert r["settings"]["data"] == "ml-25m" and r["read_seconds"] >= 0


@pytest.mark.parametrize("late_id", [None, 2**31, 10**15, 2**31 - 1])
def test_narrow_ids_read_the_same_values(monkeypatch, tmp_path, late_id):
    """``narrow_ids``: int32 id columns while every id fits, widened to int64 at a later block's id that does
    not; the values (and everything else) are those of the ordinary read, and the loaders made from both equal."""
    from mfscratch import tablefile
    from mfscratch.readers import read_ratings

    monkeypatch.setattr(tablefile, "_STREAM_BLOCK", 64)
    rng = np.random.default_rng(1)
    rows = [
        f"{u},{i},{r}" for u, i, r in zip(rng.integers(1, 50, 300), rng.integers(1, 40, 300), rng.integers(1, 6, 300))
    ]
    if late_id is not None:
        rows.append(f"{late_id},3,4")
    path = tmp_path / "r.csv"
    path.write_text("user,item,rating\n" + "\n".join(rows) + "\n")
    wide, narrow = read_ratings(path), read_ratings(path, narrow_ids=True)
    assert wide.df["user"].dtype == wide.df["item"].dtype == np.int64
    fits = late_id is None or late_id < 2**31
    assert narrow.df["user"].dtype == (np.int32 if fits else np.int64) and narrow.df["item"].dtype == np.int32
    pd.testing.assert_frame_equal(narrow.df, wide.df, check_dtype=False)
    assert narrow.info == wide.info
    a, b = wide.loaders(seed=3), narrow.loaders(seed=3)
    assert a.classes == b.classes and all(type(v) is int for v in b.classes["user"][1:])
    for name in ("train_users", "train_items", "train_ratings", "valid_users", "valid_items", "valid_ratings"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_init_params_in_chunks_is_bit_equal_to_whole_tables(monkeypatch, dtype, chunk):
    """The initialisation drawn a chunk at a time gives the bytes (and leaves the generator in the state) of
    ``fmod(N(0, 1), 2) * 0.01`` drawn table by table in float64 and cast at the end."""
    from mfscratch import model

    def whole_tables(n_users, n_items, n_factors, rng, dtype):
        shapes = model.table_shapes(n_users, n_items, n_factors).values()
        return np.concatenate([np.fmod(rng.standard_normal(r * c), 2.0) * 0.01 for r, c in shapes]).astype(dtype)

    monkeypatch.setattr(model, "_INIT_CHUNK", chunk)
    for shape in ((3, 4, 2), (944, 1665, 50), (10, 10, 1)):
        want_rng, got_rng = np.random.default_rng(3), np.random.default_rng(3)
        want, got = whole_tables(*shape, want_rng, dtype), model.init_params(*shape, got_rng, dtype)
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
        assert got_rng.bit_generator.state == want_rng.bit_generator.state
