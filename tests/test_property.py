"""Property: whatever small rating table comes in, fit and predict either stop with a clean
``MfscratchError`` or give finite predictions inside ``y_range`` (and the model saves and loads).

Tables vary in size (down to empty), id kinds (small ints, text, integers beyond 64 bits, uint64,
floats, mixed kinds), duplicate pairs, rating scales, a stray NaN, batch size, split and k.
The structure is drawn by hypothesis; the bulk of the rows comes from a NumPy generator seeded by
hypothesis, so that examples stay cheap and still shrink. ``MFSCRATCH_PROPERTY_EXAMPLES`` raises
the number of examples for a longer local search (CI runs 30, derandomised so that runs repeat).
"""

import os
import warnings

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mfscratch import CollabDataLoaders, collab_learner
from mfscratch.errors import MfscratchError
from mfscratch.io import load_model, save_model

EXAMPLES = int(os.environ.get("MFSCRATCH_PROPERTY_EXAMPLES", "30"))


def id_pool(kind: str, n: int, rng: np.random.Generator) -> list:
    """``n`` distinct ids of one kind (or of mixed kinds, which must be refused cleanly)."""
    base = rng.choice(10_000, n, replace=False)
    if kind == "int":
        return [int(b) for b in base]
    if kind == "text":
        return [f"id-{b}" for b in base]
    if kind == "huge":
        return [2**70 + int(b) * 2**40 for b in base]
    if kind == "uint64":
        return [np.uint64(2**64 - 1 - int(b)) for b in base]
    if kind == "float":
        return [float(b) / 7 for b in base]
    return [int(b) if j % 2 else f"id-{b}" for j, b in enumerate(base)]  # "mixed"


@st.composite
def problems(draw):
    # Ordinary tables mostly; ``edge`` now and then forces one of the cases that must fail cleanly.
    kinds = st.sampled_from(["int", "text", "huge", "uint64", "float"])
    edge = draw(st.sampled_from(["none"] * 6 + ["one_user", "one_item", "empty", "nan_rating", "mixed_ids"]))
    lo = draw(st.sampled_from([0.0, 1.0, -10.0, 0.5]))
    hi = lo + draw(st.sampled_from([4.0, 0.5, 100.0]))
    return {
        "seed": draw(st.integers(0, 2**32 - 1)),
        "edge": edge,
        "user_kind": "mixed" if edge == "mixed_ids" else draw(kinds),
        "item_kind": draw(kinds),
        "n_users": 1 if edge == "one_user" else draw(st.integers(2, 8)),
        "n_items": 1 if edge == "one_item" else draw(st.integers(2, 8)),
        "n_rows": 0 if edge == "empty" else draw(st.integers(4, 80)),
        "lo": lo,
        "hi": hi,
        "integer_ratings": draw(st.booleans()),
        "nan_rating": edge == "nan_rating",
        # y_range usually a little wider than the data (as (0, 5.5) for 1-5 stars), sometimes narrower.
        "margin": draw(st.sampled_from([0.5, 0.0, -0.1])),
        "bs": draw(st.integers(1, 16)),
        "valid_pct": draw(st.sampled_from([0.2, 0.0, 0.5])),
        "n_factors": draw(st.integers(1, 4)),
        "lr": draw(st.sampled_from([1e-2, 1e-3, 1e-1])),
    }


def build_table(p) -> pd.DataFrame:
    rng = np.random.default_rng(p["seed"])
    users = id_pool(p["user_kind"], p["n_users"], rng)
    items = id_pool(p["item_kind"], p["n_items"], rng)
    n = p["n_rows"]
    ratings = rng.uniform(p["lo"], p["hi"], n)
    if p["integer_ratings"]:
        ratings = np.round(ratings)
    if p["nan_rating"] and n:
        ratings[rng.integers(n)] = np.nan
    # Drawing rows with replacement gives duplicate (user, item) pairs whenever rows outnumber pairs.
    return pd.DataFrame(
        {
            "user": pd.Series([users[j] for j in rng.integers(0, len(users), n)], dtype=object),
            "item": pd.Series([items[j] for j in rng.integers(0, len(items), n)], dtype=object),
            "rating": ratings,
        }
    ).infer_objects()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 30,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(problems())
def test_fit_and_predict_give_a_clean_error_or_finite_predictions_in_range(tmp_path_factory, p):
    df = build_table(p)
    y_range = (p["lo"] - p["margin"], p["hi"] + p["margin"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicates and out-of-range ratings warn; that is allowed
        try:
            dls = CollabDataLoaders.from_df(df, valid_pct=p["valid_pct"], seed=0, bs=p["bs"])
            learn = collab_learner(dls, n_factors=p["n_factors"], y_range=y_range, seed=0, log=None)
            learn.fit(1, p["lr"])
        except MfscratchError as e:
            assert str(e) and "\n" not in str(e)
            event(f"{type(e).__name__}: {str(e)[:40]}")  # shown by --hypothesis-show-statistics
            return
    event("trained")
    lo, hi = y_range
    users = np.concatenate([dls.train_users, dls.valid_users, [0]])  # code 0: an unknown user/item
    items = np.concatenate([dls.train_items, dls.valid_items, [0]])
    pred = learn.predict_codes(users, items)
    assert np.isfinite(pred).all() and (pred >= lo).all() and (pred <= hi).all(), (pred.min(), pred.max())
    assert np.isfinite(learn.recorder.values[0][0])

    path = save_model(tmp_path_factory.mktemp("m") / "m.npz", learn.model, dls.classes, "user", "item")
    model, classes, _ = load_model(path)
    assert np.array_equal(model.params, learn.model.params)
    assert list(classes["user"]) == list(dls.classes["user"]) and list(classes["item"]) == list(dls.classes["item"])
