"""Rating and ranking metrics on held-out ratings: RMSE/MAE, and precision@k, recall@k, NDCG@k.

Ranking protocol (``ranking_metrics``). For each user ``u``:

* candidates: every item except ``#na#`` and the items ``u`` rated in training (``seen``);
* ``L``: the ``k`` candidates with the highest predicted rating (``kernels.ranking.topk_items``);
* relevant ``R``: the items ``u`` rated at or above ``threshold`` in the validation rows, minus seen ones;
* users with an empty ``R`` are skipped (nothing to find); the metrics are means over the others
  (the eligible users), or over a seeded sample of them when scoring them all would cost more
  than the budget of :func:`ranking_budget` (``users=`` chooses: ``"auto"``, ``"all"`` or a number):

  ``precision@k = |L ∩ R| / k``,  ``recall@k = |L ∩ R| / |R|``,
  ``NDCG@k = DCG / IDCG`` with ``DCG = sum_{j<k} [L_j in R] / log2(j + 2)`` and
  ``IDCG = sum_{j < min(|R|, k)} 1 / log2(j + 2)`` (binary relevance, ``j`` 0-based).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .errors import ConfigError
from .kernels.pairs import pairs_in_pairs, pairs_in_rows, seen_rows, take_pairs
from .kernels.ranking import topk_items

__all__ = [
    "SeenItems",
    "rating_errors",
    "topk",
    "ranking_from_topk",
    "ranking_users",
    "ranking_metrics",
    "ranking_budget",
    "RANKING_MIN_BUDGET",
    "RANKING_SCORES_PER_RATING",
    "RANKING_MIN_SAMPLE",
]

#: The ranking metrics score every eligible user while users x items is at most
#: ``max(RANKING_MIN_BUDGET, RANKING_SCORES_PER_RATING x training ratings)`` scores; above it, a
#: seeded sample of ``budget // n_items`` users. A score (a dot product of k factors) costs a small
#: fraction of a per-rating SGD step, so the budget costs less than a per-rating epoch (ML-25M's
#: shape: 60M scores, 1,016 of about 160,000 users); every user of ML-100k (1.6M scores) and ML-1M
#: (22M) is scored.
RANKING_MIN_BUDGET = 25_000_000
RANKING_SCORES_PER_RATING = 3
#: The smallest sample the ranking metrics draw (when items are so many that the budget allows fewer).
RANKING_MIN_SAMPLE = 1_000


def _check_codes(users, items, n_users: int, n_items: int) -> None:
    if len(users) and not (0 <= users.min() and users.max() < n_users and 0 <= items.min() and items.max() < n_items):
        raise ConfigError(f"user codes must lie in [0, {n_users}) and item codes in [0, {n_items})")


class SeenItems:
    """The items each user rated in training, as a CSR matrix: user ``u``'s items are
    ``indices[indptr[u]:indptr[u + 1]]`` (sorted, unique). ``item_counts[i]``: training ratings of item ``i``.

    ``indices`` are int32 where every item code fits (half the bytes: 80 MB at ML-25M's 20M training
    pairs), else int64; ``indptr`` is int64.

    :meth:`from_loaders` makes the matrix on first use (a sort of every training pair: 0.2 s at 20M):
    until then it holds the pairs, the item counts come from one count, and :meth:`restricted_to`
    makes the rows of a few users from one pass over the pairs (a ranking of a sample of users).
    """

    def __init__(self, indptr, indices, item_counts=None):
        self._indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        indices = np.asarray(indices)
        self._indices = np.ascontiguousarray(indices, dtype=np.int32 if indices.dtype == np.int32 else np.int64)
        self._item_counts = None if item_counts is None else np.asarray(item_counts, dtype=np.int64)
        self._pairs: tuple | None = None  # (users, items, n_users, n_items) until the matrix is made
        self._distinct = True

    @classmethod
    def from_pairs(cls, users, items, n_users: int, n_items: int) -> SeenItems:
        users = np.ascontiguousarray(users)
        items = np.ascontiguousarray(items)
        _check_codes(users, items, n_users, n_items)
        counts = np.empty(n_items, dtype=np.int64)
        indptr = np.empty(n_users + 1, dtype=np.int64)
        indices = np.empty(len(users), dtype=np.int32 if n_items <= np.iinfo(np.int32).max else np.int64)
        used = seen_rows(
            users, items, int(n_users), int(n_items), indptr, indices, counts
        )  # sorted by user, then item; repeats dropped; counts: each item's ratings
        return cls(indptr, indices[:used], counts)  # a view: the few repeats' slots are not worth a copy

    @classmethod
    def later_from_pairs(cls, users, items, n_users: int, n_items: int, distinct: bool = False) -> SeenItems:
        """:meth:`from_pairs`, made on first use of ``indptr`` or ``indices`` (the codes are checked now).
        ``distinct``: no pair repeats (the loaders counted none), so :attr:`n_pairs` needs no matrix."""
        users = np.ascontiguousarray(users)
        items = np.ascontiguousarray(items)
        _check_codes(users, items, n_users, n_items)
        seen = cls.__new__(cls)
        seen._indptr = seen._indices = seen._item_counts = None
        seen._pairs = (users, items, int(n_users), int(n_items))
        seen._distinct = distinct
        return seen

    @property
    def made(self) -> bool:
        """Whether the matrix exists (``False`` until first use after :meth:`later_from_pairs`)."""
        return self._pairs is None

    def _make(self) -> None:
        if self._pairs is not None:
            made = SeenItems.from_pairs(*self._pairs)
            self._indptr, self._indices, self._item_counts, self._pairs = (
                made._indptr,
                made._indices,
                made._item_counts,
                None,
            )

    @property
    def indptr(self) -> np.ndarray:
        self._make()
        return self._indptr

    @property
    def indices(self) -> np.ndarray:
        self._make()
        return self._indices

    @property
    def n_users(self) -> int:
        return len(self._indptr) - 1 if self._pairs is None else self._pairs[2]

    @property
    def n_pairs(self) -> int:
        """The distinct (user, item) pairs (the matrix's entries)."""
        if self._pairs is not None and self._distinct:
            return len(self._pairs[0])
        return len(self.indices)

    @property
    def n_ratings(self) -> int:
        """The training ratings the matrix comes from (rows: a repeated pair counts each time), from the
        item counts; the entries where those are not known (a model file without them)."""
        if self._pairs is not None:
            return len(self._pairs[0])
        return self.n_pairs if self._item_counts is None else int(self._item_counts.sum())

    def contains(self, users, items) -> np.ndarray:
        """Whether each ``(users[r], items[r])`` is a training pair: a search in the user's row once the
        matrix is made; before, a hash join over the pairs (``kernels.pairs.pairs_in_pairs``, a third
        of the time of making the matrix at 20M pairs), which leaves the matrix unmade."""
        users = np.ascontiguousarray(users)
        items = np.ascontiguousarray(items)
        out = np.empty(len(users), dtype=np.bool_)
        if len(users) == 0:
            return out
        if self._pairs is None:
            pairs_in_rows(self._indptr, self._indices, users, items, out)
        else:
            pair_users, pair_items, _, n_items = self._pairs
            pairs_in_pairs(users, items, pair_users, pair_items, n_items, out)
        return out

    @property
    def item_counts(self):
        if self._item_counts is None and self._pairs is not None:
            _, items, _, n_items = self._pairs
            self._item_counts = np.bincount(items, minlength=n_items).astype(np.int64)
        return self._item_counts

    def restricted_to(self, users) -> SeenItems:
        """The same matrix with only ``users``' rows (every other row empty; no item counts): before the
        whole matrix is made, from one pass over the pairs that keeps these users' pairs."""
        users = np.asarray(users)
        n_users = self.n_users
        chosen = np.zeros(n_users, dtype=np.bool_)
        chosen[users] = True
        if self._pairs is None:
            rows = np.zeros(n_users + 1, dtype=np.int64)
            lengths = np.where(chosen, np.diff(self._indptr), 0)
            np.cumsum(lengths, out=rows[1:])
            take = np.repeat(chosen, np.diff(self._indptr))
            return SeenItems(rows, self._indices[take])
        pair_users, pair_items, n_users, n_items = self._pairs
        kept_users, kept_items = take_pairs(pair_users, pair_items, chosen, by_user=True)
        part = SeenItems.from_pairs(kept_users, kept_items, n_users, n_items)
        return SeenItems(part._indptr, part._indices)

    @classmethod
    def from_loaders(cls, dls) -> SeenItems:
        """The loaders' training pairs, the matrix made on first use (:meth:`later_from_pairs`)."""
        distinct = getattr(dls, "repeated_pairs", None) == 0
        return cls.later_from_pairs(dls.train_users, dls.train_items, dls.n_users, dls.n_items, distinct)

    def items_of(self, user: int) -> np.ndarray:
        return self.indices[self.indptr[user] : self.indptr[user + 1]]

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays a model file carries (see ``io.py``)."""
        return {"seen_indptr": self.indptr, "seen_indices": self.indices, "item_counts": self.item_counts}

    @classmethod
    def from_meta(cls, meta: dict) -> SeenItems | None:
        if "seen_indptr" not in meta or "seen_indices" not in meta:
            return None
        return cls(meta["seen_indptr"], meta["seen_indices"], meta.get("item_counts"))


def _isin_sorted(queries: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """``np.isin(queries, sorted_keys)`` for sorted keys, by binary search (no hashing or re-sorting)."""
    pos = np.searchsorted(sorted_keys, queries)
    return (
        sorted_keys[np.minimum(pos, len(sorted_keys) - 1)] == queries
        if len(sorted_keys)
        else np.zeros(np.shape(queries), dtype=bool)
    )


def rating_errors(model, users, items, ratings) -> dict[str, float]:
    """``mse``, ``rmse`` and ``mae`` of the model's predictions on these code triples."""
    ratings = np.asarray(ratings, dtype=np.float64)
    if ratings.size == 0:
        return {"mse": float("nan"), "rmse": float("nan"), "mae": float("nan")}
    err = model.forward(users, items).astype(np.float64) - ratings
    mse = float(np.mean(err**2))
    return {"mse": mse, "rmse": float(np.sqrt(mse)), "mae": float(np.mean(np.abs(err)))}


def topk(model, users, seen: SeenItems | None, k: int, first_item: int = 1, u_weight=None, u_bias=None):
    """``(items, scores)``: each user's ``k`` best unseen items and their scores ``x`` (pre-sigmoid).

    ``u_weight``/``u_bias`` replace the model's user tables (the fallback for an unknown user).
    """
    if int(k) != k or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    uw, iw, ub, ib = model.kernel_tables()
    k = min(int(k), iw.shape[0])  # no more slots than items: a huge k (-n 10000000000) is every item
    uw = uw if u_weight is None else np.ascontiguousarray(u_weight, dtype=uw.dtype)
    ub = ub if u_bias is None else np.ascontiguousarray(u_bias, dtype=ub.dtype)
    if seen is None:
        seen = SeenItems(np.zeros(uw.shape[0] + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))
    users = np.ascontiguousarray(users, dtype=np.int64)
    out_items = np.empty((len(users), int(k)), dtype=np.int64)
    out_scores = np.empty((len(users), int(k)), dtype=np.float64)
    topk_items(uw, iw, ub, ib, users, seen.indptr, seen.indices, int(first_item), int(k), out_items, out_scores)
    return out_items, out_scores


def ranking_from_topk(top_items, users, rel_users, rel_items, n_items: int) -> dict[str, float]:
    """Mean precision@k, recall@k and NDCG@k of ranked lists ``top_items[r]`` for ``users[r]``.

    ``(rel_users, rel_items)`` are the relevant pairs; users without any are not scored (pass only
    those with at least one). ``-1`` entries in ``top_items`` are empty slots (never a hit).
    """
    top_items = np.asarray(top_items, dtype=np.int64)
    users = np.asarray(users, dtype=np.int64)
    k = top_items.shape[1]
    rel_keys = np.unique(np.asarray(rel_users, dtype=np.int64) * n_items + np.asarray(rel_items, dtype=np.int64))
    n_rel = np.bincount(rel_keys // n_items, minlength=int(users.max(initial=-1)) + 1)[users]
    if len(users) == 0 or (n_rel == 0).any():
        raise ConfigError("ranking_from_topk needs users that each have at least one relevant item")
    hits = _isin_sorted(users[:, None] * n_items + top_items, rel_keys) & (top_items >= 0)
    discount = 1.0 / np.log2(np.arange(k) + 2.0)
    dcg = hits @ discount
    idcg = np.cumsum(discount)[np.minimum(n_rel, k) - 1]
    n_hits = hits.sum(axis=1)
    return {
        "precision": float(np.mean(n_hits / k)),
        "recall": float(np.mean(n_hits / n_rel)),
        "ndcg": float(np.mean(dcg / idcg)),
    }


def ranking_budget(n_train: int) -> int:
    """The scores (users x items) the ranking metrics compute by default for ``n_train`` training ratings."""
    return max(RANKING_MIN_BUDGET, RANKING_SCORES_PER_RATING * int(n_train))


def ranking_users(n_eligible: int, n_items: int, users="auto", n_train: int = 0) -> int:
    """How many of ``n_eligible`` users the ranking metrics score (see the module docstring).

    ``users``: ``"auto"`` (every user while ``n_eligible * n_items`` is within
    :func:`ranking_budget` of ``n_train``, else ``budget // n_items`` of them, at least
    :data:`RANKING_MIN_SAMPLE`), ``"all"``, or a number of users (all of them when there are fewer).
    """
    if users == "all":
        return n_eligible
    if users == "auto":
        budget = ranking_budget(n_train)
        if n_eligible * n_items <= budget:
            return n_eligible
        return min(n_eligible, max(RANKING_MIN_SAMPLE, budget // max(n_items, 1)))
    if isinstance(users, (bool, np.bool_)) or not isinstance(users, (int, np.integer)) or users < 1:
        raise ConfigError(f"users must be 'auto', 'all' or a positive number of users, got {users!r}")
    return min(n_eligible, int(users))


def ranking_metrics(
    model,
    seen: SeenItems,
    valid_users,
    valid_items,
    valid_ratings,
    k: int = 10,
    threshold: float = 4.0,
    first_item: int = 1,
    users="auto",
    seed: int = 0,
    valid_pairs_unseen: bool = False,
) -> dict:
    """Precision@k, recall@k and NDCG@k over the validation rows (protocol in the module docstring).

    ``users``: which users are scored (:func:`ranking_users`); a sample is drawn with ``seed``.
    ``valid_pairs_unseen``: no validation pair is a training pair (no pair repeats in the data), so
    none is looked up in ``seen`` (:meth:`SeenItems.contains`). With a sample, only the sampled users'
    rows of ``seen`` are made (:meth:`SeenItems.restricted_to`) when the whole matrix does not exist
    yet. The budget of scores counts ``seen``'s training ratings (:attr:`SeenItems.n_ratings`).
    Returns ``{"k", "threshold", "precision", "recall", "ndcg", "n_users", "n_users_eligible",
    "sampled", "sample_seed", "seconds"}``; ``n_users`` is the number of users scored (0, with NaN
    metrics, when nobody has a relevant item), ``n_users_eligible`` the users with a relevant item,
    ``sample_seed`` the seed of the sample (``None`` when every eligible user is scored).
    """
    t0 = time.perf_counter()
    n_items = model.n_items
    vu = np.asarray(valid_users)
    vi = np.asarray(valid_items)
    vr = np.asarray(valid_ratings)
    if not len(vu) == len(vi) == len(vr):
        raise ConfigError(
            f"the validation users, items and ratings must be one a row: got {len(vu)}, {len(vi)} and {len(vr)}"
        )
    vu, vi = take_pairs(vu, vi, (vr >= threshold) & (vi >= first_item))
    _check_codes(vu, vi, seen.n_users, n_items)
    if len(vu) and not valid_pairs_unseen:
        # A validation item the user also rated in training can never be recommended: not relevant.
        vu, vi = take_pairs(vu, vi, ~seen.contains(vu, vi))
    n_users = seen.n_users
    eligible = np.flatnonzero(np.bincount(vu, minlength=n_users)) if len(vu) else np.empty(0, dtype=np.int64)
    n_scored = ranking_users(len(eligible), n_items, users, n_train=seen.n_ratings)
    sampled = n_scored < len(eligible)
    chosen = np.sort(np.random.default_rng(seed).choice(eligible, n_scored, replace=False)) if sampled else eligible
    result: dict[str, Any] = {"k": int(k), "threshold": float(threshold)}
    if len(chosen) == 0:
        result.update(precision=float("nan"), recall=float("nan"), ndcg=float("nan"), n_users=0)
    else:
        if sampled:
            is_chosen = np.zeros(n_users, dtype=np.bool_)  # every code is below n_users (checked above)
            is_chosen[chosen] = True
            vu, vi = take_pairs(vu, vi, is_chosen, by_user=True)
            if not seen.made:
                seen = seen.restricted_to(chosen)
        top_items, _ = topk(model, chosen, seen, k, first_item)
        result.update(ranking_from_topk(top_items, chosen, vu, vi, n_items), n_users=int(len(chosen)))
    result.update(
        n_users_eligible=int(len(eligible)), sampled=bool(sampled), sample_seed=int(seed) if sampled else None
    )
    result["seconds"] = time.perf_counter() - t0
    return result
