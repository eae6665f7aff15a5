"""Pictures of a fit: loss curves, the learning-rate and momentum schedule, the item PCA map and the
learning-rate finder's curve (PNG).

matplotlib is an optional extra (``pip install 'mfscratch[plot]'``); without it every call raises a
:class:`~mfscratch.errors.ConfigError` saying so. Figures are drawn on matplotlib's ``Figure``
directly (Agg canvas), never through ``pyplot``, so nothing opens a window or touches global state.
Each picture has a ``*_figure`` function returning the ``Figure`` and a ``plot_*`` one writing it.

Legibility: every axis is labelled; text is drawn in colours dark enough to read on white
(:data:`LABEL_COLOURS`, each at least 4.5:1 against white, WCAG's bar for normal text); the PCA
map places each title where it overlaps no other (trying a ring of positions around its point)
and leaves out a title that finds no free place rather than print it over another.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ConfigError

__all__ = [
    "losses_figure",
    "schedule_figure",
    "item_pca_figure",
    "lr_find_figure",
    "plot_losses",
    "plot_schedule",
    "plot_item_pca",
    "plot_lr_find",
    "write_all",
    "LABEL_COLOURS",
    "PLOT_FILES",
]

#: Dark, distinct colours for text on white (contrast ratios 7.5 to 12.6).
LABEL_COLOURS = ("#1f3b73", "#8c2d04", "#1b5e20", "#5e1f78", "#9b1c1c", "#00504a", "#4e342e", "#263238")

#: The files :func:`write_all` writes into its folder.
PLOT_FILES = ("losses.png", "schedule.png", "item_pca.png")


def _figure(figsize):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install 'mfscratch[plot]' (or pip install matplotlib)") from None
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Path:
    from .io import atomic_write

    path = Path(path)
    return atomic_write(path, lambda f: fig.savefig(f, format=path.suffix[1:] or "png", dpi=110))


def _need_fit(recorder) -> int:
    if not recorder.values:
        raise ConfigError("nothing to plot yet: train first (fit or fit_one_cycle)")
    steps = recorder.steps  # the last kept step is the fit's last step
    return (steps[-1] + 1) // len(recorder.values) if steps else 0


# --- losses and schedule -------------------------------------------------------------------------
def losses_figure(recorder):
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
        x = (np.asarray(recorder.steps, dtype=np.float64) + 1) / steps_per_epoch  # a long epoch's steps: a sample
        kept_per_epoch = max(1, len(losses) // len(recorder.values))
        ax.plot(x, losses, color="0.8", linewidth=0.5, label="batch loss")
        window = max(1, min(len(losses), kept_per_epoch // 20))
        moving = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(
            x[window - 1 :],
            moving,
            color="0.35",
            linewidth=1,
            label=f"batch loss, mean of {window} {'sampled ' if recorder.sampled else ''}steps",
        )
        top = max(top, float(np.nanpercentile(moving, 99)))
    ax.plot(epochs, values[:, 0], "o-", color=LABEL_COLOURS[0], label="train_loss (fastai's smoothed)")
    ax.plot(epochs, values[:, 1], "s-", color=LABEL_COLOURS[1], label="valid_loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean squared error")
    ax.set_ylim(0, 1.2 * top)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Training and validation loss")
    return fig


def schedule_figure(recorder):
    """The learning rate and the momentum at every step (one-cycle: up then down, and the mirror)."""
    _need_fit(recorder)
    fig = _figure((10, 4))
    ax_lr, ax_mom = fig.subplots(1, 2)
    steps = np.asarray(recorder.steps)  # every step, or a sample of a long epoch's (see Recorder)
    ax_lr.plot(steps, recorder.lrs, color=LABEL_COLOURS[0])
    ax_lr.set_title("learning rate")
    ax_lr.set_ylabel("learning rate")
    ax_mom.plot(steps, recorder.moms, color=LABEL_COLOURS[1])
    ax_mom.set_title("momentum")
    ax_mom.set_ylabel("momentum (Adam's beta1)")
    for ax in (ax_lr, ax_mom):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return fig


# --- the PCA map ---------------------------------------------------------------------------------
def _overlaps(box, boxes) -> bool:
    return any(box.overlaps(other) for other in boxes)


def _place_labels(fig, ax, names, x, y, colours) -> None:
    """Each title beside its point where it overlaps no title placed before it (most-rated first) and no point."""
    from matplotlib.transforms import Bbox

    fig.canvas.draw()  # settle the layout, then freeze it so the measured positions stay true
    fig.set_layout_engine("none")
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    points = ax.transData.transform(np.c_[x, y])
    # The points are obstacles too, so that no title covers another item's dot.
    placed: list = [Bbox.from_bounds(px - 3, py - 3, 6, 6) for px, py in points]
    pixels = fig.dpi / 72  # offsets are in points
    ring = [
        (dx, dy)
        for r in (4, 9, 15)
        for dx, dy in ((r, 0), (-r, 0), (0, r), (0, -r), (r, r), (-r, -r), (r, -r), (-r, r))
    ]
    for name, (px, py), colour in zip(names, points, colours):
        probe = ax.text(0, 0, str(name), fontsize=9)
        size = probe.get_window_extent(renderer)
        probe.remove()
        w, h = size.width, size.height
        for dx, dy in ring:
            ha = "left" if dx > 0 else "right" if dx < 0 else "center"
            va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
            x0 = px + dx * pixels - {"left": 0, "right": w, "center": w / 2}[ha]
            y0 = py + dy * pixels - {"bottom": 0, "top": h, "center": h / 2}[va]
            box = Bbox.from_bounds(x0, y0, w, h)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not _overlaps(box, placed):
                placed.append(box)
                ax.annotate(
                    str(name),
                    ax.transData.inverted().transform((px, py)),
                    xytext=(dx, dy),
                    textcoords="offset points",
                    fontsize=9,
                    color=colour,
                    ha=ha,
                    va=va,
                )
                break


def item_pca_figure(names, coords, n: int = 50):
    """fastbook's map: the first ``n`` items (most-rated first) at their first two PCA coordinates,
    each titled where the title collides with no other."""
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] < 2:
        raise ConfigError("the PCA map needs at least two components (and two items with embeddings)")
    n = min(n, len(names))
    fig = _figure((12, 12))
    ax = fig.add_subplot()
    x, y = coords[:n, 0], coords[:n, 1]
    colours = [LABEL_COLOURS[i % len(LABEL_COLOURS)] for i in range(n)]
    ax.scatter(x, y, s=14, c=colours)
    pad_x, pad_y = 0.15 * (np.ptp(x) or 1.0), 0.08 * (np.ptp(y) or 1.0)
    ax.set_xlim(x.min() - pad_x, x.max() + pad_x)
    ax.set_ylim(y.min() - pad_y, y.max() + pad_y)
    ax.set_xlabel("PCA component 1")
    ax.set_ylabel("PCA component 2")
    ax.set_title(f"Item embeddings of the {n} most-rated items (PCA)")
    _place_labels(fig, ax, names[:n], x, y, colours)
    return fig


# --- the learning-rate finder ---------------------------------------------------------------------
def lr_find_figure(result, skip_end: int = 5):
    """fastai's ``plot_lr_find``: the smoothed loss against the learning rate (log scale, the last
    ``skip_end`` points left out) and the suggestions."""
    fig = _figure((7, 4.5))
    ax = fig.add_subplot()
    end = max(len(result.lrs) - skip_end, 1)
    ax.plot(result.lrs[:end], result.losses[:end], color=LABEL_COLOURS[0])
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    for (lr, loss), name, colour in zip(result.points, result.names, LABEL_COLOURS[1:]):
        ax.plot(lr, loss, "o", color=colour, label=f"{name}: {lr:.2e}")
    if result.names:
        ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title("Learning-rate finder")
    return fig


# --- files ---------------------------------------------------------------------------------------
def plot_losses(recorder, path) -> Path:
    """``losses_figure`` as a PNG at ``path``."""
    return _save(losses_figure(recorder), path)


def plot_schedule(recorder, path) -> Path:
    """``schedule_figure`` as a PNG at ``path``."""
    return _save(schedule_figure(recorder), path)


def plot_item_pca(names, coords, path, n: int = 50) -> Path:
    """``item_pca_figure`` as a PNG at ``path``."""
    return _save(item_pca_figure(names, coords, n), path)


def plot_lr_find(result, path) -> Path:
    """``lr_find_figure`` as a PNG at ``path``."""
    return _save(lr_find_figure(result), path)


def write_all(learn, folder, n_items: int = 50) -> list[Path]:
    """``losses.png``, ``schedule.png`` and ``item_pca.png`` for a trained learner, in ``folder``."""
    losses, sched, pca = (Path(folder) / name for name in PLOT_FILES)
    return [learn.plot_losses(losses), learn.plot_schedule(sched), learn.plot_item_pca(pca, n=n_items)]
