"""Reading ratings files (CSV/TSV/'::'/Parquet, with or without header) and the MovieLens sets by name.

MovieLens-shaped folders here are synthetic (a few made-up rows in each set's own format), never
copies of the real data; the real ML-100k is used only through the ``ml100k`` fixture.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import make_ratings

from mfscratch.errors import DataError
from mfscratch.readers import (
    ML100K_SPLITS,
    attach_titles,
    default_y_range,
    loaders_from_split,
    read_items,
    read_ml100k_split,
    read_movielens,
    read_ratings,
)


@pytest.fixture
def df():
    return make_ratings(n_users=8, n_items=10, n_ratings=60)


def test_csv_with_header_by_name(tmp_path, df):
    path = tmp_path / "r.csv"
    df.rename(columns={"user": "uid"}).assign(ts=1).to_csv(path, index=False)
    t = read_ratings(path, "uid", "item", "rating")
    assert (t.user, t.item, t.rating) == ("uid", "item", "rating")
    assert t.df["uid"].tolist() == df["user"].tolist()
    assert t.df["item"].tolist() == df["item"].tolist()


def test_header_detected_with_positions(tmp_path, df):
    path = tmp_path / "r.csv"
    df[["rating", "user", "item"]].to_csv(path, index=False)
    t = read_ratings(path, 1, "2", 0)  # positions, as ints or as text
    assert (t.user, t.item, t.rating) == ("user", "item", "rating")
    assert np.allclose(t.df["rating"], df["rating"])


@pytest.mark.parametrize("suffix,sep", [(".tsv", "\t"), (".csv", ","), (".dat", "::")])
def test_text_without_header(tmp_path, df, suffix, sep):
    path = tmp_path / f"r{suffix}"
    path.write_text("\n".join(sep.join(str(v) for v in row) for row in df.itertuples(index=False)) + "\n")
    t = read_ratings(path)
    assert (t.user, t.item, t.rating) == ("user", "item", "rating")
    assert t.df["user"].tolist() == df["user"].tolist()
    assert t.df["item"].tolist() == df["item"].tolist()
    assert np.allclose(t.df["rating"], df["rating"])


def test_parquet(tmp_path, df):
    pytest.importorskip("pyarrow")
    path = tmp_path / "r.parquet"
    df.to_parquet(path)
    t = read_ratings(path, "user", "item", "rating")
    pd.testing.assert_frame_equal(t.df, df)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match="nope.csv"):
        read_ratings(tmp_path / "nope.csv")


def test_missing_column_names_file_and_column(tmp_path, df):
    path = tmp_path / "r.csv"
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"r\.csv.*'stars' not found"):
        read_ratings(path, "user", "item", "stars")
    with pytest.raises(DataError, match="position 7 is out of range"):
        read_ratings(path, 0, 1, 7)


@pytest.mark.parametrize("content", ["", "user,item,rating\n"])
def test_no_rows(tmp_path, content):
    path = tmp_path / "r.csv"
    path.write_text(content)
    with pytest.raises(DataError, match="r.csv"):
        read_ratings(path, "user", "item", "rating")


def test_items_join_suffixes_shared_titles(tmp_path):
    ratings = tmp_path / "r.csv"
    pd.DataFrame({"u": [1, 1, 2, 2], "m": [10, 11, 12, 99], "r": [5, 4, 3, 2]}).to_csv(ratings, index=False)
    items = tmp_path / "movies.tsv"
    pd.DataFrame({"id": [10, 11, 12], "name": ["Emma (1996)", "Emma (1996)", "Heat (1995)"]}).to_csv(
        items, sep="\t", index=False
    )
    t = attach_titles(read_ratings(ratings, "u", "m", "r"), read_items(items, "id", "name"))
    assert t.item == "title"
    assert t.df["title"].tolist() == ["Emma (1996) [id 10]", "Emma (1996) [id 11]", "Heat (1995)", "99"]
    merged = attach_titles(read_ratings(ratings, "u", "m", "r"), read_items(items, "id", "name"), merge_duplicates=True)
    assert merged.df["title"].tolist()[:2] == ["Emma (1996)", "Emma (1996)"]


def test_items_join_without_any_match(tmp_path):
    ratings = tmp_path / "r.csv"
    pd.DataFrame({"u": [1], "m": [10], "r": [5]}).to_csv(ratings, index=False)
    items = tmp_path / "i.csv"
    pd.DataFrame({"id": [1], "name": ["X"]}).to_csv(items, index=False)
    with pytest.raises(DataError, match="none of its keys match"):
        attach_titles(read_ratings(ratings, "u", "m", "r"), read_items(items, "id", "name"), items_source="i.csv")


@pytest.mark.parametrize(
    "ratings,expected",
    [
        ([1, 2, 5], (0.0, 5.5)),
        ([0.5, 3.5, 5.0], (0.0, 5.5)),
        ([1, 10], (0.0, 11.0)),
        ([-10, 10], (-12.0, 12.0)),
        ([0, 0], (-1.0, 1.0)),
    ],
)
def test_default_y_range(ratings, expected):
    assert default_y_range(ratings) == pytest.approx(expected)


# --- MovieLens formats, on synthetic folders -------------------------------------------------------
def test_ml1m_format(tmp_path, monkeypatch):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::10::5::978300760\n1::20::3::978302109\n2::10::4::978301968\n")
    # latin-1 titles, one with a colon inside
    (folder / "movies.dat").write_bytes(
        "10::Amélie (2001)::Comedy\n20::Star Wars: Episode IV (1977)::Sci-Fi\n".encode("latin-1")
    )
    monkeypatch.setenv("MFSCRATCH_DATA", str(tmp_path))
    t = read_movielens("ml-1m")
    assert (t.user, t.item, t.rating) == ("user", "title", "rating")
    assert t.df["title"].tolist() == ["Amélie (2001)", "Star Wars: Episode IV (1977)", "Amélie (2001)"]
    assert t.df["rating"].tolist() == [5, 3, 4]
    assert t.df["user"].tolist() == [1, 1, 2]


def test_csv_sets_format(tmp_path, monkeypatch):
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,0.5,964981247\n2,2,5.0,964982224\n"
    )
    (folder / "movies.csv").write_text(
        'movieId,title,genres\n1,"Emma (1996)",Comedy\n2,"Emma (1996)",Drama\n3,"Heat, The (1995)",Action\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("MFSCRATCH_DATA", str(tmp_path))
    t = read_movielens("ml-latest-small")
    assert t.df["title"].tolist() == ["Emma (1996) [id 1]", "Heat, The (1995)", "Emma (1996) [id 2]"]
    assert t.df["rating"].tolist() == [4.0, 0.5, 5.0]
    assert read_movielens("ml-latest-small", titles=False).df.columns.tolist() == ["userId", "movieId", "rating"]


# --- the real ML-100k --------------------------------------------------------------------------
@pytest.mark.realdata
def test_ml100k_recipe_table(ml100k):
    t = read_movielens("ml-100k")
    assert len(t.df) == 100_000 and t.df["title"].nunique() == 1664
    dls = t.loaders(seed=42)
    assert (dls.n_users, dls.n_items) == (944, 1665)


@pytest.mark.realdata
@pytest.mark.parametrize("split", ["u1", "ua"])
def test_ml100k_split_keeps_test_rows_as_validation(ml100k, split):
    train, valid = read_ml100k_split(split)
    dls = loaders_from_split(train, valid)
    assert dls.n_valid == len(valid.df) and dls.n_train == len(train.df)
    assert split in ML100K_SPLITS
    users = dls.classes["user"]
    titles = dls.classes["title"]
    assert [users[c] for c in dls.valid_users[:5]] == valid.df["user"].tolist()[:5]
    assert [titles[c] for c in dls.valid_items[:5]] == valid.df["title"].tolist()[:5]
    assert np.array_equal(dls.valid_ratings, valid.df["rating"].to_numpy(np.float32))
