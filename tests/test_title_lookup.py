"""The one lookup of users and items by the names people type, in predict, similar and recommend alike.

Made-up synthetic data: an items file in which two different items share the title ``Emma (1996)``
(keys 838 and 1045), as happens in real catalogues; the readers keep them apart by their ids.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mfscratch.analysis import FallbackWarning, Trained
from mfscratch.cli import main
from mfscratch.names import AmbiguousName, UnknownName, find_item, lookup

TITLES = {
    1: "Toy Story (1995)",
    2: "Toy Story 2 (1999)",
    3: "Silence of the Lambs, The (1991)",
    4: "Heat (1995)",
    5: "Casablanca (1942)",
    6: "Fargo (1996)",
    7: "Lone Star (1996)",
    8: "Only Once (2001)",
    838: "Emma (1996)",
    1045: "Emma (1996)",
}
EMMA_838, EMMA_1045 = "Emma (1996) [id 838]", "Emma (1996) [id 1045]"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("titles")
    rng = np.random.default_rng(3)
    keys = [k for k in TITLES if k != 8]  # key 8 is rated once, below
    users = rng.integers(1, 31, 600)
    ratings = pd.DataFrame({"user": users, "movie": rng.choice(keys, 600), "rating": rng.integers(1, 6, 600)})
    ratings = pd.concat([ratings, pd.DataFrame({"user": [1], "movie": [8], "rating": [5]})], ignore_index=True)
    ratings = ratings.drop_duplicates(["user", "movie"])
    ratings.to_csv(folder / "ratings.csv", index=False)
    pd.DataFrame({"movie": list(TITLES), "title": list(TITLES.values())}).to_csv(folder / "items.csv", index=False)
    path = folder / "m.npz"
    argv = ["train", "--ratings", str(folder / "ratings.csv"), "--items", str(folder / "items.csv")]
    argv += ["--item-key", "movie", "--title-col", "title", "--epochs", "1", "--factors", "3", "--bs", "16"]
    assert main([*argv, "--valid-pct", "0", "--save", str(path), "--quiet"]) == 0
    return path


@pytest.fixture(scope="module")
def trained(model_file):
    return Trained.load(model_file)


def test_shared_title_kept_apart_by_id(trained):
    vocab = trained.item_vocab
    assert EMMA_838 in vocab and EMMA_1045 in vocab and "Emma (1996)" not in vocab


def test_exact_names_and_ids(trained):
    vocab, users = trained.item_vocab, trained.user_vocab
    assert find_item(vocab, "Heat (1995)") == vocab.index("Heat (1995)")
    assert find_item(vocab, EMMA_838) == vocab.index(EMMA_838)  # a shared title, chosen by its id
    assert lookup(users, "7") == lookup(users, 7) == users.index(7)  # an id typed as text is the same id
    assert lookup(users, "#na#") is None and find_item(vocab, "#na#") is None


def test_shared_title_lists_the_items_with_their_ids(trained):
    for call in (
        lambda: find_item(trained.item_vocab, "Emma (1996)"),
        lambda: trained.similar("Emma (1996)", 3),
        lambda: trained.predict([1], ["Emma (1996)"]),
    ):
        with pytest.raises(AmbiguousName, match=r"2 items share the title 'Emma \(1996\)'") as e:
            call()
        assert EMMA_838 in str(e.value) and EMMA_1045 in str(e.value)


@pytest.mark.parametrize(
    "typed,meant",
    [
        ("Toy Story", "Toy Story (1995)"),
        ("toy story (1995)", "Toy Story (1995)"),
        ("The Silence of the Lambs", "Silence of the Lambs, The (1991)"),
        ("  heat  ", "Heat (1995)"),
    ],
)
def test_near_miss_is_did_you_mean_everywhere(trained, typed, meant):
    for call in (lambda: trained.similar(typed, 3), lambda: trained.predict([1], [typed])):
        with pytest.raises(UnknownName, match="did you mean") as e:
            call()
        assert repr(meant) in str(e.value)
        assert "Toy Story 2" not in str(e.value)


def test_unknown_item_similar_stops_predict_falls_back(trained):
    with pytest.raises(UnknownName, match="not in the model's vocabulary"):
        trained.similar("Completely Unknown Film (2030)")
    with pytest.warns(FallbackWarning, match="unknown item"):
        pred = trained.predict([1], ["Completely Unknown Film (2030)"])
    assert np.isfinite(pred).all()


def test_popularity_floor_uses_the_same_names(trained):
    df = trained.similar(EMMA_1045, 20, min_ratings=2)
    assert "Only Once (2001)" not in df["item"].tolist()  # rated once
    assert EMMA_838 in df["item"].tolist()


def test_cli_predict_similar_recommend_agree(model_file, capsys):
    model = str(model_file)
    for argv in (["predict", "--model", model, "--user", "1", "Toy Story"], ["similar", "--model", model, "Toy Story"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "did you mean 'Toy Story (1995)'" in err and len(err.splitlines()) == 1
    for argv in (
        ["predict", "--model", model, "--user", "1", "Emma (1996)"],
        ["similar", "--model", model, "Emma (1996)"],
    ):
        assert main(argv) == 2
        assert EMMA_838 in capsys.readouterr().err
    assert main(["predict", "--model", model, "--user", "1", EMMA_838, "Toy Story (1995)"]) == 0
    assert EMMA_838 in capsys.readouterr().out
    assert main(["recommend", "--model", model, "--user", "1", "-n", "3"]) == 0
    assert "predicted_rating" in capsys.readouterr().out
