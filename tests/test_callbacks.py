"""Fitting with a watch on the validation loss: early stopping and keeping the best epoch, API and CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_ratings

from mfscratch import (
    CancelFitException,
    CollabDataLoaders,
    EarlyStoppingCallback,
    SaveModelCallback,
    collab_learner,
)
from mfscratch.cli import main
from mfscratch.errors import ConfigError


@pytest.fixture(scope="module")
def dls():
    return CollabDataLoaders.from_df(make_ratings(), seed=0, bs=16)


def overfitting(dls, **kw):
    """20 factors, no weight decay, a high constant rate: valid_loss falls for a few epochs, then wanders."""
    return collab_learner(dls, n_factors=20, y_range=(0, 5.5), seed=0, log=None, **kw)


class Snapshots:
    """Keeps every epoch's weights (synced first, as any callback reading them must)."""

    def __init__(self):
        self.params = []

    def __call__(self, learn, epoch):
        learn.backend.sync()
        self.params.append(learn.model.params.copy())


def test_early_stopping_waits_patience_epochs(dls):
    learn = overfitting(dls)
    stop = EarlyStoppingCallback(patience=2)
    learn.fit(30, 3e-2, wd=0.0, cbs=[stop])
    valid = [v for _, v in learn.recorder.values]
    assert stop.stopped_epoch is not None and len(valid) == stop.stopped_epoch + 1 < 30
    best = int(np.argmin(valid))
    assert best == stop.best_epoch == len(valid) - 1 - 2  # two epochs without a new best, then stop
    assert stop not in learn.after_epoch  # the callbacks of one fit leave with it


def test_min_delta_counts_only_real_improvements(dls):
    plain, strict = EarlyStoppingCallback(patience=1), EarlyStoppingCallback(patience=1, min_delta=0.5)
    overfitting(dls).fit(30, 3e-2, wd=0.0, cbs=[plain])
    overfitting(dls).fit(30, 3e-2, wd=0.0, cbs=[strict])
    assert strict.stopped_epoch < plain.stopped_epoch


def test_keep_best_restores_the_best_epoch_in_memory_and_on_disk(dls, tmp_path):
    for fname in (None, "best"):
        learn, snaps = overfitting(dls), Snapshots()
        learn.path = tmp_path
        keep = SaveModelCallback(fname=fname)
        learn.fit(10, 3e-2, wd=0.0, cbs=[keep, snaps])
        valid = [v for _, v in learn.recorder.values]
        assert keep.best_epoch == int(np.argmin(valid)) < len(valid) - 1
        np.testing.assert_array_equal(learn.model.params, snaps.params[keep.best_epoch])
        assert learn.validate() == pytest.approx(min(valid), rel=1e-6)
        assert (tmp_path / "models" / "best.npz").is_file() == (fname == "best")


def test_a_callback_cancels_after_its_epoch_and_the_fit_ends_cleanly(dls):
    class StopAfter:
        def __init__(self, epoch):
            self.epoch, self.finished = epoch, False

        def __call__(self, learn, epoch):
            if epoch == self.epoch:
                raise CancelFitException()

        def after_fit(self, learn):
            self.finished = True

    stopped, snaps = collab_learner(dls, n_factors=4, seed=1, log=None), Snapshots()
    stopper = StopAfter(1)
    stopped.fit(3, 1e-2, cbs=[stopper])
    assert len(stopped.recorder.values) == 2 and stopper.finished
    whole = collab_learner(dls, n_factors=4, seed=1, log=None)
    whole.fit(3, 1e-2, cbs=[snaps])
    np.testing.assert_array_equal(stopped.model.params, snaps.params[1])  # synced: no deferred row left behind


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="patience"):
        EarlyStoppingCallback(patience=0)
    with pytest.raises(ConfigError, match="monitor"):
        SaveModelCallback(monitor="accuracy")
    no_valid = CollabDataLoaders.from_df(make_ratings(n_ratings=200), valid_pct=0.0, seed=0, bs=16)
    learn = collab_learner(no_valid, n_factors=2, log=None)
    with pytest.raises(ConfigError, match="no validation rows"):
        learn.fit(2, cbs=[EarlyStoppingCallback()])
    learn.fit(2, cbs=[EarlyStoppingCallback(monitor="train_loss")])


def test_cli_early_stop_and_keep_best(tmp_path, capsys):
    make_ratings().to_csv(tmp_path / "r.csv", index=False)
    report = tmp_path / "r.json"
    argv = ["train", "--ratings", str(tmp_path / "r.csv"), "--factors", "20", "--bs", "16", "--wd", "0"]
    argv += ["--lr", "0.05", "--epochs", "30", "--early-stop", "2", "--keep-best", "--json", str(report)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "early stopping" in out and "Better model found" in out
    r = json.loads(report.read_text())
    assert len(r["epochs"]) < 30 and r["settings"]["early_stop"] == 2 and r["settings"]["keep_best"]


class Interrupt(Exception):
    pass


def test_a_resumed_fit_keeps_counting_the_patience(dls, tmp_path):
    from mfscratch import checkpoint

    whole = EarlyStoppingCallback(patience=3)
    overfitting(dls).fit(30, 3e-2, wd=0.0, cbs=[whole])
    stop = whole.stopped_epoch
    assert stop is not None and whole.best_epoch == stop - 3

    def interrupt_after(epoch):
        def cb(learn, e):
            if e == epoch:
                raise Interrupt

        return cb

    first = overfitting(dls)  # interrupted two epochs after its best, its checkpoint on disk
    first.after_epoch.append(checkpoint.Checkpoint(tmp_path))
    with pytest.raises(Interrupt):
        first.fit(30, 3e-2, wd=0.0, cbs=[EarlyStoppingCallback(patience=3), interrupt_after(stop - 1)])
    resumed = overfitting(dls)
    start = checkpoint.restore(resumed, tmp_path)
    assert start == stop
    again = EarlyStoppingCallback(patience=3)
    resumed.fit(30, 3e-2, wd=0.0, start_epoch=start, cbs=[again])
    assert again.stopped_epoch == stop and again.best_epoch == whole.best_epoch  # not three more epochs
    assert len(resumed.recorder.values) == stop + 1
