"""Pictures of a fit: loss curves, the learning-rate and momentum schedule, and the item PCA map (PNG).

matplotlib is an optional extra (``pip install 'mfscratch[plot]'``); without it every call raises a
:class:`~mfscratch.errors.ConfigError` saying so. Figures are drawn on matplotlib's ``Figure``
directly (Agg canvas), never through ``pyplot``, so nothing opens a window or touches global state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ConfigError

__all__ = ["plot_losses", "plot_schedule", "plot_item_pca", "write_all", "PLOT_FILES"]

#: The files :func:`write_all` writes into its folder.
PLOT_FILES = ("losses.png", "schedule.png", "item_pca.png")


def _figure(figsize):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'mfscratch[plot]' (or pip install matplotlib)") from None
    return Figure(figsize=figsize, layout="constrained")


def _save(fig, path) -> Path:
    from .io import atomic_write

    path = Path(path)
    return atomic_write(path, lambda f: fig.savefig(f, format=path.suffix[1:] or "png", dpi=110))


def _need_fit(recorder) -> int:
    if not recorder.values:
        raise ConfigError("nothing to plot yet: train first (fit or fit_one_cycle)")
    return len(recorder.lrs) // len(recorder.values)


def plot_losses(recorder, path) -> Path:
    """Batch losses per step (light; dark: their moving average over a twentieth of an epoch), and
    fastai's train_loss and the valid_loss at each epoch's end."""
    steps_per_epoch = _need_fit(recorder)
    fig = _figure((8, 5))
    ax = fig.add_subplot()
    epochs = np.arange(1, len(recorder.values) + 1)
    values = np.asarray(recorder.values, dtype=np.float64)
    top = np.nanmax(values) if np.isfinite(values).any() else 1.0
    if recorder.losses:
        losses = np.asarray(recorder.losses, dtype=np.float64)
        x = np.arange(1, len(losses) + 1) / steps_per_epoch
        ax.plot(x, losses, color="0.85", linewidth=0.5, label="batch loss")
        window = max(1, min(len(losses), steps_per_epoch // 20))
        moving = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(x[window - 1 :], moving, color="0.4", linewidth=1, label=f"batch loss, mean of {window} steps")
        top = max(top, float(np.nanpercentile(moving, 99)))
    ax.plot(epochs, values[:, 0], "o-", label="train_loss (fastai's smoothed)")
    ax.plot(epochs, values[:, 1], "s-", label="valid_loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean squared error")
    ax.set_ylim(0, 1.2 * top)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Training and validation loss")
    return _save(fig, path)


def plot_schedule(recorder, path) -> Path:
    """The learning rate and the momentum at every step (one-cycle: up then down, and the mirror)."""
    _need_fit(recorder)
    fig = _figure((10, 4))
    ax_lr, ax_mom = fig.subplots(1, 2)
    steps = np.arange(len(recorder.lrs))
    ax_lr.plot(steps, recorder.lrs)
    ax_lr.set_title("learning rate")
    ax_mom.plot(steps, recorder.moms, color="tab:orange")
    ax_mom.set_title("momentum")
    for ax in (ax_lr, ax_mom):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_item_pca(names, coords, path, n: int = 50, seed: int = 0) -> Path:
    """fastbook's map: the first ``n`` items (most-rated first) at their first two PCA coordinates, labelled."""
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] < 2:
        raise ConfigError("the PCA map needs at least two components (and two items with embeddings)")
    n = min(n, len(names))
    rng = np.random.default_rng(seed)
    fig = _figure((12, 12))
    ax = fig.add_subplot()
    x, y = coords[:n, 0], coords[:n, 1]
    ax.scatter(x, y, s=12)
    for name, xi, yi in zip(names[:n], x, y):
        ax.text(xi, yi, str(name), color=rng.random(3) * 0.7, fontsize=9)
    ax.set_xlabel("PCA component 1")
    ax.set_ylabel("PCA component 2")
    ax.set_title(f"Item embeddings of the {n} most-rated items (PCA)")
    return _save(fig, path)


def write_all(learn, folder, n_items: int = 50) -> list[Path]:
    """``losses.png``, ``schedule.png`` and ``item_pca.png`` for a trained learner, in ``folder``."""
    losses, sched, pca = (Path(folder) / name for name in PLOT_FILES)
    return [learn.plot_losses(losses), learn.plot_schedule(sched), learn.plot_item_pca(pca, n=n_items)]
