"""Using a trained model: biases, similar items, recommendations, predictions by name, and the PCA map.

Everything here works on ``(model, vocabularies, seen)`` so that it serves a :class:`Learner` (just
trained) and a model file (``io.load_model``) alike; :class:`Trained` bundles the three, and the
learner's ``recommend``/``similar``/``biases`` methods are thin calls into this module.

Unknown users and items. A name outside the vocabulary has no trained row, and code 0 (``#na#``)
is *not* a stand-in for it. Predictions then use the parts of the model that are known:
``x = u_weight[u] . i_weight[i] + u_bias[u] + i_bias[i]`` loses the dot product and the unknown
side's bias (both taken as 0), so an unknown user gets ``lo + (hi - lo) * sigmoid(i_bias[i])``
(the item's popularity baseline), an unknown item the user's baseline, and an unknown pair the
midpoint ``(lo + hi) / 2``. Each such fallback issues a :class:`FallbackWarning` saying so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import notices
from .errors import ConfigError
from .metrics import SeenItems, topk
from .model import EmbeddingDotBias
from .names import find_item, has_na, item_code, lookup

__all__ = [
    "top_biases",
    "cosine_neighbours",
    "FallbackWarning",
    "lookup",
    "predict_named",
    "predict_codes",
    "codes_of",
    "recommend",
    "similar",
    "biases",
    "item_pca",
    "first_item",
    "Trained",
]


class FallbackWarning(UserWarning):
    """A prediction or recommendation used only part of the model (an unknown user or item)."""


def first_item(vocab) -> int:
    """The first code that names a real item: 1 when code 0 is ``#na#``, else 0."""
    return 1 if has_na(vocab) else 0


def _to_output(model: EmbeddingDotBias, x: np.ndarray) -> np.ndarray:
    """``lo + (hi - lo) * sigmoid(x)``, or ``x`` for a model without ``y_range``."""
    if model.y_range is None:
        return x
    lo, hi = model.y_range
    return lo + (hi - lo) / (1.0 + np.exp(-x))


def _check_count(name: str, value, least: int) -> int:
    """``value`` as an int of at least ``least``, else one ConfigError naming the argument and the fix."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        what = "a positive integer" if least == 1 else f"an integer >= {least}"
        raise ConfigError(f"{name} must be {what}, got {value!r}")
    return int(value)


# --- biases ------------------------------------------------------------------------------------
def top_biases(model: EmbeddingDotBias, vocab, n: int = 5, lowest: bool = False) -> list:
    """The ``n`` items with the highest (or lowest) learned bias, as ``(name, bias)`` pairs.

    Code 0 (``#na#``) is never listed.
    """
    bias = model.i_bias.weight[:, 0].astype(np.float64)
    codes = np.argsort(bias if lowest else -bias, kind="stable")
    codes = codes[codes != 0] if has_na(vocab) else codes
    return [(vocab[c], float(bias[c])) for c in codes[:n]]


def biases(model: EmbeddingDotBias, vocab, n: int = 10, item_counts=None) -> pd.DataFrame:
    """The ``n`` highest and ``n`` lowest item biases: columns ``side`` (highest/lowest), ``item``,
    ``bias`` and, when ``item_counts`` is known, ``n_ratings``."""
    n = _check_count("n", n, 1)
    rows = [("highest", name, b) for name, b in top_biases(model, vocab, n)]
    rows += [("lowest", name, b) for name, b in top_biases(model, vocab, n, lowest=True)]
    df = pd.DataFrame(rows, columns=["side", "item", "bias"])
    if item_counts is not None:
        df["n_ratings"] = [int(item_counts[vocab.o2i[name]]) for name in df["item"]]
    return df


# --- similar items -----------------------------------------------------------------------------
def _cosine_to(model: EmbeddingDotBias, code: int) -> np.ndarray:
    q = model.i_weight.weight.astype(np.float64)
    norms = np.linalg.norm(q, axis=1)
    return q @ q[code] / np.maximum(norms * norms[code], 1e-12)


def cosine_neighbours(model: EmbeddingDotBias, vocab, name, n: int = 1) -> list:
    """The ``n`` items whose embeddings are closest to ``name``'s by cosine similarity (itself excluded)."""
    df = similar(model, vocab, name, n)
    return list(zip(df["item"], df["similarity"]))


def similar(model: EmbeddingDotBias, vocab, name, n: int = 10, min_ratings: int = 0, item_counts=None) -> pd.DataFrame:
    """The ``n`` items nearest to ``name`` by cosine similarity of their embeddings (itself excluded).

    ``min_ratings`` drops candidates rated fewer times than that in training (``item_counts``):
    a barely-rated item's embedding is mostly its random start plus weight decay, so its
    "similarity" is noise. Columns: ``item``, ``similarity`` (and ``n_ratings`` when counts are known).
    """
    n = _check_count("n", n, 1)
    min_ratings = _check_count("min_ratings", min_ratings, 0)
    code = item_code(vocab, name)
    if min_ratings > 0 and item_counts is None:
        raise ConfigError(
            "--min-ratings needs the training counts per item, which this model does not carry; "
            "retrain and save it with this version"
        )
    sims = _cosine_to(model, code)
    sims[code] = -np.inf
    if has_na(vocab):
        sims[0] = -np.inf
    if min_ratings > 0:
        sims[np.asarray(item_counts) < min_ratings] = -np.inf
    best = np.argsort(-sims, kind="stable")[:n]
    best = best[np.isfinite(sims[best])]
    df = pd.DataFrame({"item": [vocab[c] for c in best], "similarity": sims[best]})
    if item_counts is not None:
        df["n_ratings"] = np.asarray(item_counts)[best].astype(np.int64)
    return df


# --- predictions and recommendations ------------------------------------------------------------
def codes_of(vocab, values, find=lookup) -> np.ndarray:
    """The codes of ``values`` (``-1`` for unknown ones), each distinct value looked up once by ``find``."""
    inverse, uniques = pd.factorize(np.asarray(list(values), dtype=object), use_na_sentinel=True)
    found = np.array([-1 if c is None else c for c in (find(vocab, v) for v in uniques)] + [-1], dtype=np.int64)
    return found[inverse]  # the sentinel -1 (a missing value) picks the trailing -1


def predict_codes(model: EmbeddingDotBias, uc: np.ndarray, ic: np.ndarray) -> np.ndarray:
    """Predictions for code pairs where ``-1`` marks an unknown side (the fallbacks of the module docstring)."""
    ku, ki = uc >= 0, ic >= 0
    both = ku & ki
    x = np.zeros(len(uc), dtype=np.float64)
    uw, iw = model.u_weight.weight, model.i_weight.weight
    x[both] = np.einsum("ij,ij->i", uw[uc[both]].astype(np.float64), iw[ic[both]].astype(np.float64))
    x[ku] += model.u_bias.weight[uc[ku], 0]
    x[ki] += model.i_bias.weight[ic[ki], 0]
    return _to_output(model, x)


def _few(values) -> str:
    names = sorted({str(v) for v in values})
    return ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")


def predict_named(model: EmbeddingDotBias, user_vocab, item_vocab, users, items) -> np.ndarray:
    """Predicted ratings for ``(users[r], items[r])`` given by id or name (``names.find_item``), with the
    fallbacks of the module docstring for unknown ones (and a :class:`FallbackWarning` naming them)."""
    users, items = list(users), list(items)
    if len(users) != len(items):
        raise ConfigError(f"users and items must have the same length, got {len(users)} and {len(items)}")
    uc, ic = codes_of(user_vocab, users), codes_of(item_vocab, items, find_item)
    parts = []
    if (uc < 0).any():
        parts.append(f"unknown user(s) {_few(u for u, c in zip(users, uc) if c < 0)}")
    if (ic < 0).any():
        parts.append(f"unknown item(s) {_few(i for i, c in zip(items, ic) if c < 0)}")
    if parts:
        notices.warn(
            f"{'; '.join(parts)}: predicted from the known biases only (the rating midpoint when "
            "neither side is known)",
            FallbackWarning,
        )
    return predict_codes(model, uc, ic)


def recommend(
    model: EmbeddingDotBias, user_vocab, item_vocab, seen: SeenItems | None, user, n: int = 10
) -> pd.DataFrame:
    """The user's ``n`` unseen items with the highest predicted rating: columns ``item``,
    ``predicted_rating`` (and ``n_ratings`` when counts are known).

    An unknown user gets the items with the highest bias (the model's popularity baseline), with a
    :class:`FallbackWarning`; so does a model without the training pairs (seen items kept).
    """
    n = _check_count("n", n, 1)
    code = lookup(user_vocab, user)
    first = first_item(item_vocab)
    if code is None:
        notices.warn(
            f"user {user!r} is not in the training data: ranking items by their learned bias alone "
            "(the model's popularity baseline)",
            FallbackWarning,
        )
        zeros_w = np.zeros((1, model.n_factors), dtype=model.dtype)
        items, scores = topk(model, [0], None, n, first, u_weight=zeros_w, u_bias=np.zeros(1, model.dtype))
    else:
        if seen is None:
            notices.warn(
                "this model file does not carry its training pairs, so items the user already rated "
                "may be recommended; write it with learn.export(path) or mfscratch train --save",
                FallbackWarning,
            )
        items, scores = topk(model, [code], seen, n, first)
    items, scores = items[0], scores[0]
    found = items >= 0
    items, scores = items[found], scores[found]
    df = pd.DataFrame({"item": [item_vocab[c] for c in items], "predicted_rating": _to_output(model, scores)})
    counts = None if seen is None else seen.item_counts
    if counts is not None:
        df["n_ratings"] = counts[items].astype(np.int64)
    return df


# --- the PCA map -------------------------------------------------------------------------------
def item_pca(model: EmbeddingDotBias, vocab, item_counts=None, n_top: int = 1000, n_components: int = 2):
    """fastbook's map of the item embeddings: PCA of the ``n_top`` most-rated items' vectors.

    Returns ``(names, coords)`` with ``coords`` ``(len(names), n_components)``, most-rated first.
    Without ``item_counts`` the items are taken in vocabulary order. PCA: centre the vectors and
    take the leading right singular vectors (the sign of each axis is arbitrary).
    """
    start = 1 if has_na(vocab) else 0
    codes = np.arange(start, len(vocab))
    if item_counts is not None:
        codes = codes[np.argsort(-np.asarray(item_counts)[codes], kind="stable")]
    codes = codes[:n_top]
    w = model.i_weight.weight[codes].astype(np.float64)
    w = w - w.mean(axis=0)
    n_components = min(n_components, *w.shape)
    _, _, vt = np.linalg.svd(w, full_matrices=False)
    return [vocab[c] for c in codes], w @ vt[:n_components].T


# --- a model with its vocabularies -------------------------------------------------------------
@dataclass
class Trained:
    """A model, its vocabularies and training pairs: what the ``recommend``/``similar``/``biases`` calls need."""

    model: EmbeddingDotBias
    user_vocab: object
    item_vocab: object
    seen: SeenItems | None = None

    @property
    def item_counts(self):
        return None if self.seen is None else self.seen.item_counts

    @classmethod
    def load(cls, path) -> Trained:
        """From a model file written by ``mfscratch train --save`` (vocabularies required)."""
        from .io import load_model

        model, classes, meta = load_model(path)
        if not classes:
            raise ConfigError(
                f"{path} carries no vocabularies, so users and items cannot be named; "
                "save it with its classes (mfscratch train --save does)"
            )
        return cls(model, classes[meta["user_name"]], classes[meta["item_name"]], SeenItems.from_meta(meta))

    @classmethod
    def from_learner(cls, learn) -> Trained:
        d = learn.dls
        return cls(learn.model, d.classes[d.user_name], d.classes[d.item_name], SeenItems.from_loaders(d))

    def recommend(self, user, n: int = 10) -> pd.DataFrame:
        return recommend(self.model, self.user_vocab, self.item_vocab, self.seen, user, n)

    def similar(self, name, n: int = 10, min_ratings: int = 0) -> pd.DataFrame:
        return similar(self.model, self.item_vocab, name, n, min_ratings, self.item_counts)

    def biases(self, n: int = 10) -> pd.DataFrame:
        return biases(self.model, self.item_vocab, n, self.item_counts)

    def predict(self, users, items) -> np.ndarray:
        return predict_named(self.model, self.user_vocab, self.item_vocab, users, items)
