"""Using a trained model: recommendations, similar items, biases, fallbacks for unknown names, plots."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
from conftest import make_ratings

from mfscratch import CollabDataLoaders, collab_learner
from mfscratch.analysis import FallbackWarning, Trained, item_pca, lookup, predict_named
from mfscratch.errors import ConfigError
from mfscratch.io import load_model, save_model
from mfscratch.metrics import SeenItems


@pytest.fixture(scope="module")
def learn():
    dls = CollabDataLoaders.from_df(make_ratings(n_users=25, n_items=30, n_ratings=500), seed=0, bs=16)
    learn = collab_learner(dls, n_factors=4, y_range=(0, 5.5), seed=0, log=None)
    learn.fit_one_cycle(2, 1e-2)
    return learn


def brute_force_recommend(learn, user, n):
    d = learn.dls
    code = d.classes["user"].o2i[user]
    seen = set(d.train_items[d.train_users == code].tolist())
    cands = [i for i in range(1, d.n_items) if i not in seen]
    preds = learn.model.forward(np.full(len(cands), code), np.array(cands)).astype(np.float64)
    order = np.lexsort((cands, -preds))[:n]
    return [d.classes["item"][cands[j]] for j in order], preds[order]


def test_recommend_matches_brute_force_and_skips_seen(learn):
    user = learn.dls.classes["user"][3]
    df = learn.recommend(user, 5)
    names, preds = brute_force_recommend(learn, user, 5)
    assert df["item"].tolist() == names
    np.testing.assert_allclose(df["predicted_rating"], preds, rtol=1e-5)
    assert (df["n_ratings"] >= 0).all()


def test_recommend_accepts_the_id_as_text(learn):
    user = learn.dls.classes["user"][3]  # an int
    assert learn.recommend(str(user), 3)["item"].tolist() == learn.recommend(user, 3)["item"].tolist()


def test_recommend_unknown_user_falls_back_to_item_bias(learn):
    with pytest.warns(FallbackWarning, match="not in the training data"):
        df = learn.recommend("nobody", 4)
    vocab = learn.dls.classes["item"]
    bias = learn.model.i_bias.weight[:, 0]
    want = np.argsort(-bias[1:], kind="stable")[:4] + 1
    assert df["item"].tolist() == [vocab[c] for c in want]
    lo, hi = learn.model.y_range
    np.testing.assert_allclose(df["predicted_rating"], lo + (hi - lo) / (1 + np.exp(-bias[want])), rtol=1e-5)


def test_predict_named_fallbacks(learn):
    m, d = learn.model, learn.dls
    uv, iv = d.classes["user"], d.classes["item"]
    u, i = uv[2], iv[5]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known names: no warning
        known = predict_named(m, uv, iv, [u], [i])
    np.testing.assert_allclose(known, m.forward([2], [5]), rtol=1e-5)
    lo, hi = m.y_range
    sig = lambda x: lo + (hi - lo) / (1 + np.exp(-x))  # noqa: E731
    with pytest.warns(FallbackWarning, match="unknown user.*ghost.*unknown item.*nothing"):
        p = predict_named(m, uv, iv, ["ghost", u, "ghost"], [i, "nothing", "nothing"])
    np.testing.assert_allclose(p, [sig(m.i_bias.weight[5, 0]), sig(m.u_bias.weight[2, 0]), (lo + hi) / 2], rtol=1e-5)


def test_lookup_never_returns_na(learn):
    uv = learn.dls.classes["user"]
    assert lookup(uv, "#na#") is None and lookup(uv, "missing") is None
    assert lookup(uv, uv[1]) == 1 and lookup(uv, str(uv[1])) == 1


def test_similar_popularity_floor_and_unknown_title(learn):
    vocab = learn.dls.classes["item"]
    counts = SeenItems.from_loaders(learn.dls).item_counts
    name = vocab[1]
    df = learn.similar(name, 50)
    assert name not in df["item"].tolist() and "#na#" not in df["item"].tolist()
    assert df["similarity"].is_monotonic_decreasing
    floor = int(np.median(counts[1:]))
    filtered = learn.similar(name, 50, min_ratings=floor)
    assert (filtered["n_ratings"] >= floor).all()
    assert filtered["item"].tolist() == [x for x in df["item"] if counts[vocab.o2i[x]] >= floor]
    with pytest.raises(ConfigError, match="did you mean"):
        learn.similar(name + "x")


def test_biases_frame(learn):
    df = learn.biases(3)
    assert df["side"].tolist() == ["highest"] * 3 + ["lowest"] * 3
    bias = learn.model.i_bias.weight[1:, 0]
    assert df["bias"].iloc[0] == pytest.approx(bias.max()) and df["bias"].iloc[3] == pytest.approx(bias.min())


def test_saved_model_carries_seen_items(learn, tmp_path):
    d = learn.dls
    path = save_model(
        tmp_path / "m.npz", learn.model, d.classes, "user", "item", extra=SeenItems.from_loaders(d).arrays()
    )
    t = Trained.load(path)
    user = d.classes["user"][4]
    assert t.recommend(user, 5).equals(learn.recommend(user, 5))
    assert t.similar(d.classes["item"][2], 5, min_ratings=2).equals(learn.similar(d.classes["item"][2], 5, 2))
    # A file without the training pairs still recommends, and says that seen items may come back.
    save_model(tmp_path / "bare.npz", learn.model, d.classes, "user", "item")
    with pytest.warns(FallbackWarning, match="already rated"):
        Trained.load(tmp_path / "bare.npz").recommend(user, 3)
    with pytest.raises(ConfigError, match="--min-ratings"):
        Trained.load(tmp_path / "bare.npz").similar(d.classes["item"][2], 3, min_ratings=2)
    assert load_model(path)[2]["item_counts"].shape == (d.n_items,)


def test_learner_ranking(learn):
    r = learn.ranking(k=5, threshold=4)
    assert r["k"] == 5 and r["n_users"] > 0
    assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 and 0 <= r["ndcg"] <= 1


def test_warm_ranking_changes_nothing(learn):
    before, params = learn.ranking(k=5, threshold=4), learn.model.params.copy()
    learn.warm_ranking(5, 4)
    after = learn.ranking(k=5, threshold=4)
    assert np.array_equal(learn.model.params, params)
    assert {k: v for k, v in before.items() if k != "seconds"} == {k: v for k, v in after.items() if k != "seconds"}


def test_item_pca_shapes(learn):
    names, coords = item_pca(
        learn.model, learn.dls.classes["item"], SeenItems.from_loaders(learn.dls).item_counts, n_top=20
    )
    assert len(names) == 20 and coords.shape == (20, 2) and "#na#" not in names
    np.testing.assert_allclose(coords.mean(axis=0), 0, atol=1e-9)


def test_plots_write_pngs(learn, tmp_path):
    pytest.importorskip("matplotlib")
    for path in (
        learn.plot_losses(tmp_path / "a.png"),
        learn.plot_schedule(tmp_path / "b.png"),
        learn.plot_item_pca(tmp_path / "c.png", n=10),
    ):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_without_matplotlib(learn, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ConfigError, match="matplotlib"):
        learn.plot_losses(tmp_path / "a.png")


def test_progress_bar_chunks_give_the_same_weights(capsys):
    dls = CollabDataLoaders.from_df(make_ratings(n_ratings=400), seed=1, bs=8)
    results = []
    for progress in (False, True):
        learn = collab_learner(dls, n_factors=3, y_range=(0, 5.5), seed=1, log=None)
        learn.progress = progress
        learn.fit_one_cycle(2, 1e-2)
        results.append((learn.model.params.copy(), learn.recorder.values))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]
    assert "epoch 2/2" in capsys.readouterr().err


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda l: l.biases(-3), "n must be a positive integer, got -3"),
        (lambda l: l.biases(0), "n must be a positive integer, got 0"),
        (lambda l: l.similar(first_title(l), n=0), "n must be a positive integer, got 0"),
        (lambda l: l.similar(first_title(l), min_ratings=-5), "min_ratings must be an integer >= 0, got -5"),
        (lambda l: l.recommend(l.dls.classes[l.dls.user_name][1], n=2.5), "n must be a positive integer, got 2.5"),
    ],
)
def test_nonsense_counts_are_refused(learn, call, message):
    with pytest.raises(ConfigError, match=message):
        call(learn)


def first_title(learn):
    return learn.dls.classes[learn.dls.item_name][1]


def test_cli_min_ratings_must_not_be_negative(capsys):
    from mfscratch.cli import main

    assert main(["similar", "--model", "m.npz", "Toy Story (1995)", "--min-ratings", "-5"]) == 2
    assert "an integer >= 0" in capsys.readouterr().err
