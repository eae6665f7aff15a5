"""Writes this folder: checkpoints and models saved by mfscratch 0.1, for the compatibility test in
tests/test_checkpoint.py. Run it with the 0.1 source first on PYTHONPATH: ``python make.py FOLDER``."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from mfscratch import SGD, CollabDataLoaders, collab_learner
from mfscratch import checkpoint as ck
from mfscratch.io import save_model


class Stop(Exception):
    """Stands in for a killed process after the first epoch's checkpoint."""


def stop_after_first(learner, epoch):
    if epoch == 0:
        raise Stop


def learner(frame, bs, kw):
    dls = CollabDataLoaders.from_df(frame, seed=1, bs=bs)
    return collab_learner(dls, n_factors=4, y_range=(0, 5.5), seed=3, log=None, **kw), dls


def main(out: Path) -> None:
    rng = np.random.default_rng(0)
    pairs = rng.choice(20 * 30, 300, replace=False)
    frame = pd.DataFrame({"user": pairs // 30, "item": pairs % 30, "rating": rng.integers(1, 6, 300).astype(float)})
    frame.to_csv(out / "synthetic_ratings.csv", index=False)
    for name, kw, bs in (("exact", {}, 16), ("per-rating", {"opt_func": SGD, "sparse": True}, 1)):
        learn, dls = learner(frame, bs, kw)
        learn.fit_one_cycle(2, 1e-2, wd=0.1)
        save_model(out / f"{name}-model.npz", learn.model, dls.classes, dls.user_name, dls.item_name)
        stopped, _ = learner(frame, bs, kw)
        (out / f"{name}-checkpoint").mkdir(exist_ok=True)
        stopped.after_epoch += [ck.Checkpoint(out / f"{name}-checkpoint"), stop_after_first]
        try:
            stopped.fit_one_cycle(2, 1e-2, wd=0.1)
        except Stop:
            pass


if __name__ == "__main__":
    main(Path(sys.argv[1]))
