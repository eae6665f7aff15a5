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
