"""Encoding, vocabularies and the split of ``CollabDataLoaders``; the cache folder of ``untar_data``."""

import numpy as np
import pandas as pd
import pytest

from mfscratch import CollabDataLoaders, URLs, data_dir, untar_data
from mfscratch.errors import DataError


def test_vocab_is_na_plus_sorted_values(ratings_df):
    dls = CollabDataLoaders.from_df(ratings_df, seed=0)
    users = dls.classes["user"]
    assert users[0] == "#na#" and list(users[1:]) == sorted(ratings_df.user.unique())
    assert dls.n_users == ratings_df.user.nunique() + 1
    assert dls.n_items == ratings_df.item.nunique() + 1
    titles = dls.classes["item"]
    assert titles.o2i[titles[5]] == 5
    assert titles.o2i["no such item"] == 0  # unknown -> #na#, as fastai's defaultdict


def test_codes_round_trip(ratings_df):
    dls = CollabDataLoaders.from_df(ratings_df, valid_pct=0.0, seed=1)
    assert dls.train_users.dtype == np.int32 and dls.train_ratings.dtype == np.float32
    users = [dls.classes["user"][c] for c in dls.train_users]
    items = [dls.classes["item"][c] for c in dls.train_items]
    got = pd.DataFrame({"user": users, "item": items, "rating": dls.train_ratings.astype(float)})
    want = ratings_df.astype({"rating": float})
    key = ["user", "item", "rating"]
    pd.testing.assert_frame_equal(
        got.sort_values(key).reset_index(drop=True), want.sort_values(key).reset_index(drop=True)
    )


def test_split_sizes_and_seed(ratings_df):
    a = CollabDataLoaders.from_df(ratings_df, valid_pct=0.2, seed=5)
    b = CollabDataLoaders.from_df(ratings_df, valid_pct=0.2, seed=5)
    c = CollabDataLoaders.from_df(ratings_df, valid_pct=0.2, seed=6)
    assert a.n_valid == int(0.2 * len(ratings_df)) and a.n_train + a.n_valid == len(ratings_df)
    assert np.array_equal(a.valid_users, b.valid_users) and np.array_equal(a.valid_items, b.valid_items)
    assert not np.array_equal(a.valid_users, c.valid_users)


def test_default_columns_are_0_1_2(ratings_df):
    dls = CollabDataLoaders.from_df(ratings_df[["user", "item", "rating"]], seed=0)
    assert dls.user_name == "user" and dls.item_name == "item" and dls.rating_name == "rating"


def test_missing_column_is_a_clear_error(ratings_df):
    with pytest.raises(DataError, match="title"):
        CollabDataLoaders.from_df(ratings_df, item_name="title")


def test_data_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MFSCRATCH_DATA", str(tmp_path))
    assert data_dir() == tmp_path


def test_untar_data_finds_existing_copy_without_network(monkeypatch, tmp_path):
    (tmp_path / "ml-100k").mkdir()
    (tmp_path / "ml-100k" / "u.data").write_text("1\t1\t5\t0\n")
    monkeypatch.setenv("MFSCRATCH_DATA", str(tmp_path))

    def no_network(*a, **k):
        raise AssertionError("must not download")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    assert untar_data(URLs.ML_100k) == tmp_path / "ml-100k"


def test_untar_data_offline_says_where_to_put_files(monkeypatch, tmp_path):
    import urllib.error

    monkeypatch.setenv("MFSCRATCH_DATA", str(tmp_path))

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(DataError, match=str(tmp_path / "ml-100k")):
        untar_data(URLs.ML_100k)


def test_show_batch_decodes_names(ratings_df, capsys):
    dls = CollabDataLoaders.from_df(ratings_df, seed=0)
    df = dls.show_batch(max_n=4, seed=1)
    assert list(df.columns) == ["user", "item", "rating"] and len(df) == 4
    assert set(df["item"]) <= set(ratings_df["item"])
    assert "item" in capsys.readouterr().out


@pytest.mark.parametrize(
    "n, valid_pct, seed", [(1, 0.0, 0), (2, 0.5, 1), (997, 0.2, 42), (50_000, 0.2, 7), (3001, 0.9, 3)]
)
def test_split_equals_the_permutation_gather(n, valid_pct, seed):
    """The split (an int32 shuffle, one gathered array per column, training rows first) gives exactly the rows,
    in exactly the order, of ``perm = rng.permutation(n)``: validation ``perm[:n_valid]``, training the rest."""
    rng = np.random.default_rng(seed + 100)
    users = rng.integers(0, 30, n).astype(np.int32)
    items = rng.integers(0, 40, n).astype(np.int32)
    ratings = rng.normal(size=n).astype(np.float32)
    dls = CollabDataLoaders.from_codes(users, items, ratings, 30, 40, valid_pct=valid_pct, seed=seed)
    perm = np.random.default_rng(seed).permutation(n)
    n_valid = int(valid_pct * n)
    for got, column in (
        ((dls.train_users, dls.valid_users), users),
        ((dls.train_items, dls.valid_items), items),
        ((dls.train_ratings, dls.valid_ratings), ratings),
    ):
        train, valid = got
        assert train.dtype == valid.dtype == column.dtype
        assert train.flags.c_contiguous and valid.flags.c_contiguous
        np.testing.assert_array_equal(valid, column[perm[:n_valid]])
        np.testing.assert_array_equal(train, column[perm[n_valid:]])


def test_split_of_from_df_equals_the_permutation_gather():
    """``from_df`` on a random table: the same rows in the same order as the gather by ``rng.permutation``."""
    rng = np.random.default_rng(5)
    n = 20_000
    df = pd.DataFrame(
        {"user": rng.integers(10, 500, n), "item": rng.integers(3, 900, n), "rating": rng.integers(1, 11, n) / 2}
    )
    dls = CollabDataLoaders.from_df(df, valid_pct=0.2, seed=11)
    perm = np.random.default_rng(11).permutation(n)
    n_valid = int(0.2 * n)
    users = np.searchsorted(np.unique(df["user"]), df["user"]) + 1
    items = np.searchsorted(np.unique(df["item"]), df["item"]) + 1
    y = df["rating"].to_numpy(np.float32)
    np.testing.assert_array_equal(dls.valid_users, users[perm[:n_valid]])
    np.testing.assert_array_equal(dls.train_users, users[perm[n_valid:]])
    np.testing.assert_array_equal(dls.valid_items, items[perm[:n_valid]])
    np.testing.assert_array_equal(dls.train_items, items[perm[n_valid:]])
    np.testing.assert_array_equal(dls.valid_ratings, y[perm[:n_valid]])
    np.testing.assert_array_equal(dls.train_ratings, y[perm[n_valid:]])


def test_non_finite_ratings_counted_across_chunks(monkeypatch):
    """The float32 check runs a chunk at a time: the count and the first bad row are those of the whole column."""
    from mfscratch import validate

    monkeypatch.setattr(validate, "_FINITE_CHUNK", 4)
    ratings = [1.0, 2.0, 3.0, 4.0, 5.0, 1e39, 2.0, 3.0, np.nan, 1.0, 2.0, np.inf, 4.0]
    df = pd.DataFrame({"user": np.arange(13) % 3, "item": np.arange(13) % 5, "rating": ratings}, index=range(100, 113))
    with pytest.raises(DataError, match=r"has 3 value\(s\) that are not finite numbers \(first: row 105, \S*1e\+39"):
        CollabDataLoaders.from_df(df, seed=0)
    with np.errstate(over="ignore"):
        finite = np.isfinite(np.array(ratings, dtype=np.float32))
    df["rating"] = np.where(finite, ratings, 3.0)
    dls = CollabDataLoaders.from_df(df, valid_pct=0.0, seed=0)
    np.testing.assert_array_equal(np.sort(dls.train_ratings), np.sort(df["rating"].to_numpy(np.float32)))


def test_a_consuming_from_df_gives_the_freed_heap_back_and_empties_the_table():
    """``consume=True`` empties the table and ends with ``malloc_trim`` (glibc; a no-op elsewhere): same loaders."""
    from mfscratch.data import _give_back_freed_memory

    _give_back_freed_memory()
    rng = np.random.default_rng(2)
    df = pd.DataFrame({"u": rng.integers(0, 40, 500), "i": rng.integers(0, 60, 500), "r": rng.integers(1, 6, 500)})
    want = CollabDataLoaders.from_df(df.copy(), seed=4)
    got = CollabDataLoaders.from_df(df, seed=4, consume=True)
    assert df.shape[1] == 0
    for name in ("train_users", "train_items", "train_ratings", "valid_users", "valid_items", "valid_ratings"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
