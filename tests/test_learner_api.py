"""fastai's inspection surface: predict by ids (and fastai's single row), predict_codes, get_preds, show_results."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import make_ratings

from mfscratch import CollabDataLoaders, collab_learner
from mfscratch.analysis import FallbackWarning
from mfscratch.errors import ConfigError


@pytest.fixture(scope="module")
def learn():
    df = make_ratings(n_users=12, n_items=15, n_ratings=300, seed=2)
    df["user"] = 3 * (df["user"] - 100) + 3  # integer ids 3, 6, 9, ...: never equal to their codes
    dls = CollabDataLoaders.from_df(df, seed=0, bs=16)
    learn = collab_learner(dls, n_factors=3, y_range=(0, 5.5), seed=0, log=None)
    learn.fit_one_cycle(1, 1e-2)
    return learn


def codes(learn, users, items):
    d = learn.dls
    return [d.classes["user"].o2i[u] for u in users], [d.classes["item"].o2i[i] for i in items]


def test_predict_takes_ids_as_in_the_data(learn):
    users, items = [3, 6, 9], ["item001", "item004", "item002"]
    want = learn.predict_codes(*codes(learn, users, items))
    got = learn.predict(users, items)
    assert isinstance(got, np.ndarray) and got.shape == (3,)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(learn.predict(["3", "6", "9"], items), want, rtol=1e-5)  # ids typed as text
    assert learn.predict(6, "item004") == pytest.approx(float(want[1]), rel=1e-5)


def test_an_integer_is_an_id_never_a_code(learn):
    # code 3 is user 9; the integer 3 is user 3 (code 1)
    assert learn.predict(3, "item001") == pytest.approx(
        float(learn.predict_codes([1], [learn.dls.classes["item"].o2i["item001"]])[0]), rel=1e-5
    )
    with pytest.warns(FallbackWarning, match="unknown user"):
        learn.predict(4, "item001")  # 4 is no user's id, though 4 is a valid code


def test_fastai_single_row_and_a_frame(learn):
    df = pd.DataFrame({"user": [3, 9], "item": ["item001", "item002"], "rating": [4.0, 2.0]})
    want = learn.predict([3, 9], ["item001", "item002"])
    assert learn.predict(df.iloc[1]) == pytest.approx(float(want[1]))
    np.testing.assert_array_equal(learn.predict(df), want)
    with pytest.raises(ConfigError, match="'user' and 'item'"):
        learn.predict(df.rename(columns={"item": "sku"}))
    with pytest.raises(ConfigError, match="pass the items too"):
        learn.predict([3, 9])


def test_get_preds_and_show_results(learn, capsys):
    preds, targets = learn.get_preds()
    d = learn.dls
    np.testing.assert_array_equal(preds, learn.predict_codes(d.valid_users, d.valid_items))
    np.testing.assert_array_equal(targets, d.valid_ratings)
    assert float(np.mean((preds - targets) ** 2)) == pytest.approx(learn.validate(), rel=1e-5)
    assert len(learn.get_preds(ds_idx=0)[0]) == d.n_train
    shown = learn.show_results(max_n=4)
    assert list(shown.columns) == ["user", "item", "rating", "rating_pred"] and len(shown) == 4
    assert shown["user"].iloc[0] == d.classes["user"][d.valid_users[0]]
    assert "rating_pred" in capsys.readouterr().out


def test_bias_and_weight_by_id_refuse_unknown_ones(learn):
    np.testing.assert_array_equal(learn.bias([6], is_item=False), learn.model.u_bias.weight[[2], 0])
    with pytest.raises(ConfigError, match="unknown user"):
        learn.bias([4], is_item=False)
    with pytest.raises(ConfigError, match="not in the model's vocabulary"):
        learn.weight(["no such item"])
