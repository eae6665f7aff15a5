"""What a :class:`~mfscratch.learner.Learner` offers besides training, as fastai's ``Learner`` does.

* predictions: ``predict`` (ids as they appear in the data, a DataFrame row or a DataFrame),
  ``predict_codes`` (integer codes), ``get_preds`` and ``show_results`` (the validation rows);
* fastai's ``bias`` and ``weight`` of users or items by id, and the learned tables' uses:
  ``recommend``, ``similar``, ``biases``, ``ranking`` and the pictures;
* saving and loading: ``export`` (for ``load_learner``) and ``save``/``load`` (with the optimiser
  state, so that a fit can continue), in ``export.py``; ``lr_find`` in ``lr_find.py``.

The work lives in ``analysis.py``, ``names.py``, ``metrics.py``, ``plots.py``, ``export.py`` and
``lr_find.py``; the methods here are thin calls into them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import export as export_
from . import lr_find as lr_find_
from .errors import ConfigError

if TYPE_CHECKING:
    from .analysis import Trained
    from .data import CollabDataLoaders
    from .model import EmbeddingDotBias

__all__ = ["LearnerAPI"]


def _is_scalar(value) -> bool:
    return isinstance(value, (str, bytes)) or np.ndim(value) == 0


class LearnerAPI:
    """The using, inspecting, saving and loading half of :class:`~mfscratch.learner.Learner`."""

    dls: CollabDataLoaders
    model: EmbeddingDotBias
    log: Any
    recorder: Any
    #: The last ``lr_find``'s curve and suggestions (``lr_find.LRFinderResult``), for ``plot_lr_find``.
    lr_finder: Any = None

    #: fastai's ``learn.path / learn.model_dir``: where ``save(name)`` and ``load(name)`` keep ``name.npz``.
    path: Path = Path(".")
    model_dir: str = "models"

    # --- predictions -------------------------------------------------------------------------
    def predict(self, users, items=None):
        """Predicted ratings for users and items given by their ids as they appear in the data.

        * ``predict(users, items)``: two sequences of ids (strings or integers; an integer is an id
          from the data, never a code) -> a NumPy array; two single ids -> a float;
        * ``predict(row)``: fastai's single-row form, a DataFrame row holding the user and item
          columns (``df.iloc[0]``) -> a float;
        * ``predict(df)``: a DataFrame with the user and item columns -> a NumPy array.

        Items are found by ``names.find_item`` (a title several items share, or a near miss of a
        known title, is an error naming the candidates). Unknown users or items fall back to the
        known biases with a ``FallbackWarning``. Codes go through :meth:`predict_codes`.
        """
        if items is None:
            users, items, one = self._columns(users)
        else:
            one = _is_scalar(users) and _is_scalar(items)
            if one:
                users, items = [users], [items]
        preds = self.trained().predict(users, items)
        return float(preds[0]) if one else preds

    def _columns(self, rows) -> tuple[list, list, bool]:
        """The user and item ids of a DataFrame row or DataFrame, and whether it was one row."""
        d = self.dls
        if isinstance(rows, (pd.Series, pd.DataFrame)):
            names = rows.index if isinstance(rows, pd.Series) else rows.columns
            missing = [c for c in (d.user_name, d.item_name) if c not in names]
            if not missing:
                if isinstance(rows, pd.Series):
                    return [rows[d.user_name]], [rows[d.item_name]], True
                return rows[d.user_name].tolist(), rows[d.item_name].tolist(), False
            raise ConfigError(
                f"predict needs the columns {d.user_name!r} and {d.item_name!r}; this row has {list(names)}"
            )
        raise ConfigError(
            "predict takes users and items (ids as in the data), a DataFrame row or a DataFrame; "
            f"got only {type(rows).__name__}: pass the items too"
        )

    def predict_codes(self, users, items) -> np.ndarray:
        """Predicted ratings for integer code pairs (``dls.classes[name].o2i`` encodes ids to codes)."""
        return self.model.forward(users, items)

    def get_preds(self, ds_idx: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """fastai's ``get_preds``: ``(predictions, targets)`` on the validation rows (``ds_idx=0``: training rows)."""
        d = self.dls
        if ds_idx not in (0, 1):
            raise ConfigError(f"ds_idx must be 0 (training rows) or 1 (validation rows), got {ds_idx!r}")
        users, items, ratings = (
            (d.valid_users, d.valid_items, d.valid_ratings)
            if ds_idx
            else (d.train_users, d.train_items, d.train_ratings)
        )
        return self.model.forward(users, items), np.array(ratings)

    def show_results(self, ds_idx: int = 1, max_n: int = 9) -> pd.DataFrame:
        """fastai's ``show_results``: the first ``max_n`` validation rows with their ids, rating and
        prediction (``rating_pred``), printed and returned."""
        d = self.dls
        preds, targets = self.get_preds(ds_idx)
        users, items = (d.valid_users, d.valid_items) if ds_idx else (d.train_users, d.train_items)
        n = min(max_n, len(preds))
        uv, iv = d.classes[d.user_name], d.classes[d.item_name]
        df = pd.DataFrame(
            {
                d.user_name: [uv[c] for c in users[:n]],
                d.item_name: [iv[c] for c in items[:n]],
                d.rating_name: targets[:n],
                f"{d.rating_name}_pred": preds[:n],
            }
        )
        print(df.to_string(index=False))
        return df

    # --- fastai's lookups by id ----------------------------------------------------------------
    def bias(self, values, is_item: bool = True) -> np.ndarray:
        """Learned biases for users or items given by their ids or titles (fastai's ``learn.bias``)."""
        return self.model.tables()["i_bias" if is_item else "u_bias"][self._codes(values, is_item), 0]

    def weight(self, values, is_item: bool = True) -> np.ndarray:
        """Learned embedding vectors for users or items given by their ids or titles (fastai's ``learn.weight``)."""
        return self.model.tables()["i_weight" if is_item else "u_weight"][self._codes(values, is_item)]

    def _codes(self, values, is_item: bool) -> np.ndarray:
        """Codes of known users or items; an unknown one is an error (it has no row), never code 0."""
        from .names import item_code, lookup

        d = self.dls
        vocab = d.classes[d.item_name if is_item else d.user_name]
        if is_item:
            return np.array([item_code(vocab, v) for v in values], dtype=np.int64)
        codes = [lookup(vocab, v) for v in values]
        unknown = [v for v, c in zip(values, codes) if c is None]
        if unknown:
            raise ConfigError(f"unknown user(s) {unknown[:5]}: they have no learned row")
        return np.array(codes, dtype=np.int64)

    # --- using the trained model -----------------------------------------------------------------
    def trained(self) -> Trained:
        """This learner's model, vocabularies and training pairs as an :class:`analysis.Trained`."""
        from .analysis import Trained

        cached = getattr(self, "_trained", None)
        if cached is None or cached.model is not self.model:
            cached = self._trained = Trained.from_learner(self)
        return cached

    def recommend(self, user, n: int = 10) -> pd.DataFrame:
        """The user's ``n`` best unseen items (DataFrame ``item, predicted_rating, n_ratings``)."""
        return self.trained().recommend(user, n)

    def similar(self, item, n: int = 10, min_ratings: int = 0) -> pd.DataFrame:
        """The ``n`` items nearest ``item`` by cosine similarity, rated at least ``min_ratings`` times."""
        return self.trained().similar(item, n, min_ratings)

    def biases(self, n: int = 10) -> pd.DataFrame:
        """The ``n`` highest and ``n`` lowest item biases (DataFrame ``side, item, bias, n_ratings``)."""
        return self.trained().biases(n)

    def ranking(self, k: int = 10, threshold: float = 4.0, users="auto", seed: int = 0) -> dict:
        """Precision@k, recall@k and NDCG@k over the validation rows (see ``metrics.ranking_metrics``):
        ``users`` ``"auto"`` (every user up to a size, above it a sample), ``"all"`` or a number of
        users, a sample drawn with ``seed``."""
        from .analysis import first_item
        from .metrics import ranking_metrics

        d, t = self.dls, self.trained()
        if t.seen is None:
            raise ConfigError("ranking needs the training pairs, which this learner does not carry")
        return ranking_metrics(
            self.model,
            t.seen,
            d.valid_users,
            d.valid_items,
            d.valid_ratings,
            k,
            threshold,
            first_item(t.item_vocab),
            users=users,
            seed=seed,
            valid_pairs_unseen=getattr(d, "repeated_pairs", None) == 0,
        )

    def warm_ranking(self, k: int = 10, threshold: float = 4.0) -> None:
        """Load (or compile) the kernels :meth:`ranking` runs, on a model of 4 users, 4 items and 2
        factors and codes of this learner's dtypes (so the same compiled code): the lookup of
        validation pairs among the training pairs, a sample of one user, that user's training items
        and top-k. Nothing of the learner changes. The command line counts this in its ``compile``
        phase, as it counts the epochs' kernels, so that a ranking's seconds are its work."""
        from .metrics import SeenItems, ranking_metrics
        from .model import EmbeddingDotBias

        d, m = self.dls, self.model
        tiny = EmbeddingDotBias(2, 4, 4, y_range=m.y_range, seed=0, dtype=m.dtype)
        users = np.array([0, 0, 1, 2, 3], dtype=np.asarray(d.train_users).dtype)
        items = np.array([1, 2, 3, 1, 2], dtype=np.asarray(d.train_items).dtype)
        seen = SeenItems.later_from_pairs(users, items, 4, 4)
        valid_users = np.array([0, 1, 2, 3], dtype=np.asarray(d.valid_users).dtype)
        valid_items = np.array([3, 1, 2, 3], dtype=np.asarray(d.valid_items).dtype)
        relevant = np.full(4, threshold, dtype=np.asarray(d.valid_ratings).dtype)
        ranking_metrics(tiny, seen, valid_users, valid_items, relevant, k, threshold, 1, users=1)

    # --- saving and loading (export.py), the learning-rate finder (lr_find.py) ----------------------
    #: fastai's ``export``: the model, vocabularies, training pairs and settings, for ``load_learner``.
    export = export_.export
    #: fastai's ``save``: weights and optimiser state at ``path / model_dir / name.npz``, to continue a fit.
    save = export_.save
    #: fastai's ``load``: the weights (and optimiser state) of ``save(name)``; returns the learner.
    load = export_.load
    #: fastai's ``lr_find``: returns ``SuggestedLRs`` (``.valley``); nothing of the learner changes.
    lr_find = lr_find_.lr_find

    def plot_lr_find(self, path) -> Path:
        """PNG of the last ``lr_find``'s curve and suggestions."""
        from .plots import plot_lr_find

        if self.lr_finder is None:
            raise ConfigError("nothing to plot yet: run learn.lr_find() first")
        return plot_lr_find(self.lr_finder, path)

    # --- pictures --------------------------------------------------------------------------------
    def plot_losses(self, path) -> Path:
        """PNG of the batch losses and the per-epoch train/valid losses."""
        from .plots import plot_losses

        return plot_losses(self.recorder, path)

    def plot_schedule(self, path) -> Path:
        """PNG of the learning rate and momentum at every step."""
        from .plots import plot_schedule

        return plot_schedule(self.recorder, path)

    def plot_item_pca(self, path, n: int = 50) -> Path:
        """PNG of fastbook's 2-D PCA map of the most-rated items' embeddings, ``n`` of them labelled."""
        from .analysis import item_pca
        from .plots import plot_item_pca

        t = self.trained()
        names, coords = item_pca(self.model, t.item_vocab, t.item_counts)
        return plot_item_pca(names, coords, path, n)
