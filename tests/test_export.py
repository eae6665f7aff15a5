"""Saving and loading from Python: learn.export / load_learner, learn.save / learn.load, save_model's names."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import make_ratings

from mfscratch import SGD, CollabDataLoaders, collab_learner, load_learner, load_model, save_model
from mfscratch.cli import main
from mfscratch.errors import ConfigError, ModelFileError


def loaders(first_user=100):
    df = make_ratings(n_users=20, n_items=25, n_ratings=400).rename(
        columns={"user": "uid", "item": "sku", "rating": "stars"}
    )
    df["uid"] += first_user - 100
    return CollabDataLoaders.from_df(df, user_name="uid", item_name="sku", rating_name="stars", seed=0, bs=16)


@pytest.fixture(scope="module")
def dls():
    return loaders()


def trained(dls, **kw):
    learn = collab_learner(dls, n_factors=3, y_range=(0, 5.5), seed=1, log=None, **kw)
    learn.fit_one_cycle(2, 1e-2, wd=0.05)
    return learn


def test_export_then_load_learner_without_the_data(dls, tmp_path):
    learn = trained(dls, opt_func=SGD(mom=0.9), sparse=True)
    learn.path = tmp_path
    path = learn.export()
    assert path == tmp_path / "export.npz"
    user, item = dls.classes["uid"][3], dls.classes["sku"][4]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # in particular no "does not carry its training pairs"
        loaded = load_learner(path, log=None)
        assert loaded.recommend(user, 5).equals(learn.recommend(user, 5))
        assert loaded.similar(item, 5, min_ratings=2).equals(learn.similar(item, 5, min_ratings=2))
        assert loaded.biases(3).equals(learn.biases(3))
        np.testing.assert_array_equal(loaded.predict([user], [item]), learn.predict([user], [item]))
    assert loaded.opt == learn.opt and loaded.sparse and loaded.dls.bs == 16
    assert (loaded.dls.user_name, loaded.dls.item_name, loaded.dls.rating_name) == ("uid", "sku", "stars")
    with pytest.raises(ConfigError, match="holds no training ratings"):
        loaded.fit(1)


def test_a_loaded_learner_continues_training_with_the_same_data(dls, tmp_path):
    learn = trained(dls)
    path = learn.export(tmp_path / "m.npz")
    loaded = load_learner(path, dls=dls, log=None)
    before = loaded.model.params.copy()
    loaded.fit_one_cycle(1, 1e-2)
    assert loaded.recorder.values and not np.array_equal(before, loaded.model.params)
    with pytest.raises(ConfigError, match="differ"):
        load_learner(path, dls=loaders(first_user=500))


def test_save_and_load_keep_the_optimiser_state(dls, tmp_path):
    first = trained(dls)
    first.path = tmp_path
    assert first.save("stage1") == tmp_path / "models" / "stage1.npz"
    second = collab_learner(dls, n_factors=3, y_range=(0, 5.5), seed=7, log=None)
    second.path = tmp_path
    assert second.load("stage1") is second
    np.testing.assert_array_equal(second.model.params, first.model.params)
    np.testing.assert_array_equal(second.opt_state.exp_avg_sq, first.opt_state.exp_avg_sq)
    assert second.opt_state.step == first.opt_state.step > 0
    # The same batches from here on give the same weights: the fit continues where it stood.
    second.rng.bit_generator.state = first.rng.bit_generator.state
    for learn in (first, second):
        learn.fit(1, 1e-3)
    np.testing.assert_array_equal(second.model.params, first.model.params)
    fresh = collab_learner(dls, n_factors=3, y_range=(0, 5.5), seed=7, log=None)
    fresh.path = tmp_path
    fresh.load("stage1", with_opt=False)
    assert fresh.opt_state.step == 0 and not fresh.opt_state.exp_avg.any()


def test_load_refuses_another_shape_or_other_ids(dls, tmp_path):
    learn = trained(dls)
    learn.path = tmp_path
    learn.save("m")
    other = collab_learner(dls, n_factors=4, log=None)
    other.path = tmp_path
    with pytest.raises(ConfigError, match="n_factors=3"):
        other.load("m")
    others = loaders(first_user=500)
    assert others.n_users == dls.n_users and others.n_items == dls.n_items
    renamed = collab_learner(others, n_factors=3, log=None)
    renamed.path = tmp_path
    with pytest.raises(ConfigError, match="other users or items"):
        renamed.load("m")
    with pytest.raises(ModelFileError, match="does not exist"):
        renamed.load("missing")


def test_save_model_works_for_any_column_names(dls, tmp_path):
    learn = trained(dls)
    path = save_model(tmp_path / "m.npz", learn.model, dls.classes)  # names taken from dls.classes
    _, classes, meta = load_model(path)
    assert (meta["user_name"], meta["item_name"]) == ("uid", "sku")
    assert list(classes["sku"]) == list(dls.classes["sku"])
    with pytest.raises(ConfigError, match="pass user_name= and item_name="):
        save_model(tmp_path / "bad.npz", learn.model, dls.classes, "user", "item")


def test_cli_save_is_an_export(tmp_path, capsys):
    make_ratings(n_ratings=300).to_csv(tmp_path / "r.csv", index=False)
    path = tmp_path / "m.npz"
    argv = ["train", "--ratings", str(tmp_path / "r.csv"), "--epochs", "1", "--factors", "3", "--bs", "16"]
    assert main([*argv, "--save", str(path), "--quiet"]) == 0
    learn = load_learner(path, log=None)
    assert learn.model.n_factors == 3 and learn.dls.bs == 16
    assert len(learn.recommend(learn.dls.classes["user"][1], 3)) == 3


def test_a_model_trained_on_a_gpu_loads_on_the_cpu_when_asked(dls, tmp_path):
    from mfscratch.backends import available_backends

    learn = trained(dls)
    learn.backend_name = "cuda"  # as if trained on a GPU
    path = learn.export(tmp_path / "gpu.npz")
    if "cuda" not in available_backends():
        with pytest.raises(ConfigError, match="backend='cpu'"):
            load_learner(path)
    assert load_learner(path, backend="cpu", log=None).backend_name == "cpu"
