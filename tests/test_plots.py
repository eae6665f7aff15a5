"""The pictures are legible: labelled axes everywhere, titles on the PCA map that do not collide, dark text."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_ratings

from mfscratch import CollabDataLoaders, collab_learner
from mfscratch.analysis import item_pca

pytest.importorskip("matplotlib")

from matplotlib.colors import to_rgb  # noqa: E402

from mfscratch import plots  # noqa: E402


@pytest.fixture(scope="module")
def learn():
    dls = CollabDataLoaders.from_df(make_ratings(n_users=60, n_items=80, n_ratings=2000), seed=0, bs=32)
    learn = collab_learner(dls, n_factors=8, y_range=(0, 5.5), seed=0, log=None)
    learn.fit_one_cycle(2, 1e-2)
    learn.lr_find(num_it=40, show_plot=False)
    return learn


@pytest.fixture(scope="module")
def figures(learn):
    t = learn.trained()
    names, coords = item_pca(learn.model, t.item_vocab, t.item_counts)
    names = [f"A Rather Long Film Title {name} (1995)" for name in names]  # long titles collide easily
    return {
        "losses": plots.losses_figure(learn.recorder),
        "schedule": plots.schedule_figure(learn.recorder),
        "item_pca": plots.item_pca_figure(names, coords, n=60),
        "lr_find": plots.lr_find_figure(learn.lr_finder),
    }


def contrast_with_white(colour) -> float:
    """WCAG's contrast ratio of ``colour`` against white (1 to 21)."""
    rgb = np.array(to_rgb(colour))
    linear = np.where(rgb <= 0.03928, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    luminance = float(linear @ [0.2126, 0.7152, 0.0722])
    return 1.05 / (luminance + 0.05)


def test_every_axis_is_labelled(figures):
    for name, fig in figures.items():
        for ax in fig.axes:
            assert ax.get_xlabel().strip() and ax.get_ylabel().strip(), (name, ax.get_title())


def test_pca_titles_do_not_collide_and_stay_inside(figures):
    fig = figures["item_pca"]
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) >= 30  # most of the 60 find a free place
    frame = ax.get_window_extent(renderer)
    for i, box in enumerate(boxes):
        assert not any(box.overlaps(other) for other in boxes[i + 1 :])
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1


def test_text_is_dark_enough_to_read(figures):
    assert all(contrast_with_white(c) >= 4.5 for c in plots.LABEL_COLOURS)
    for fig in figures.values():
        for ax in fig.axes:
            for text in [*ax.texts, ax.title, ax.xaxis.label, ax.yaxis.label]:
                assert contrast_with_white(text.get_color()) >= 4.5, text.get_text()


def test_the_files_are_pngs(learn, tmp_path):
    for path in (*plots.write_all(learn, tmp_path), learn.plot_lr_find(tmp_path / "lr_find.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
