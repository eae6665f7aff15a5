"""Checkpoints: a run stopped after an epoch and resumed ends with exactly the weights (bit for bit)
and the recorder of an uninterrupted run, in the library and through ``mfscratch train``."""

import numpy as np
import pandas as pd
import pytest
from robust_helpers import assert_one_line_error, run_cli, write_fake_ml100k

from mfscratch import SGD, CollabDataLoaders, collab_learner
from mfscratch import checkpoint as ck
from mfscratch.errors import ConfigError, ModelFileError
from mfscratch.io import load_model


class Stop(Exception):
    """Stands in for a killed process: raised by a callback after the checkpoint of one epoch."""


def stop_after(epoch):
    def callback(learner, e):
        if e == epoch:
            raise Stop

    return callback


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(0)
    pairs = rng.choice(30 * 40, 900, replace=False)
    return pd.DataFrame({"user": pairs // 40, "item": pairs % 40, "rating": rng.integers(1, 6, 900).astype(float)})


def make_learner(frame, bs=32, **kw):
    dls = CollabDataLoaders.from_df(frame, seed=1, bs=bs)
    return collab_learner(dls, n_factors=6, y_range=(0, 5.5), seed=3, log=None, **kw)


FITS = {
    "one_cycle_adam": ({}, lambda l, **k: l.fit_one_cycle(3, 1e-2, wd=0.1, **k)),
    "constant_sgd_momentum": ({"opt_func": SGD(mom=0.9)}, lambda l, **k: l.fit(3, 0.05, **k)),
    # per-rating SGD on the parallel backend's blocks: the backend orders each epoch itself
    "per_rating_blocks": (
        {"bs": 1, "opt_func": SGD, "sparse": True, "backend": "parallel"},
        lambda l, **k: l.fit_one_cycle(3, 0.05, wd=0.05, **k),
    ),
}


@pytest.mark.parametrize("name", FITS)
def test_resume_is_bit_identical(frame, tmp_path, name):
    kw, run = FITS[name]
    straight = make_learner(frame, **kw)
    run(straight)

    stopped = make_learner(frame, **kw)
    stopped.after_epoch += [ck.Checkpoint(tmp_path), stop_after(1)]
    with pytest.raises(Stop):
        run(stopped)
    assert not np.array_equal(stopped.model.params, straight.model.params)  # really stopped early

    resumed = make_learner(frame, **kw)  # a fresh process: same settings, new objects
    ck.resume(resumed, tmp_path)
    assert np.array_equal(resumed.model.params, straight.model.params)
    assert np.array_equal(resumed.opt_state.exp_avg, straight.opt_state.exp_avg)
    assert np.array_equal(resumed.opt_state.exp_avg_sq, straight.opt_state.exp_avg_sq)
    assert resumed.opt_state.step == straight.opt_state.step
    assert resumed.recorder.values == straight.recorder.values
    assert resumed.recorder.losses == straight.recorder.losses and resumed.recorder.lrs == straight.recorder.lrs
    assert resumed.rng.bit_generator.state == straight.rng.bit_generator.state


def test_checkpoint_file_is_plain_arrays(frame, tmp_path):
    learn = make_learner(frame)
    learn.after_epoch.append(ck.Checkpoint(tmp_path))
    learn.fit_one_cycle(2, 1e-2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ck.FILE_NAME]  # no temporary files left
    with np.load(tmp_path / ck.FILE_NAME, allow_pickle=False) as z:
        assert int(z["epoch"]) == 1 and int(z["step"]) == learn.opt_state.step
        assert z["rng_state"].dtype.kind == "U" and "PCG64" in str(z["rng_state"])
        assert all(z[k].dtype != object for k in z.files)


def test_resume_after_the_last_epoch_trains_nothing(frame, tmp_path):
    learn = make_learner(frame)
    learn.after_epoch.append(ck.Checkpoint(tmp_path))
    learn.fit_one_cycle(2, 1e-2)
    again = make_learner(frame)
    ck.resume(again, tmp_path)
    assert np.array_equal(again.model.params, learn.model.params) and len(again.recorder.values) == 2


def test_refuses_a_checkpoint_of_other_settings_or_data(frame, tmp_path):
    learn = make_learner(frame)
    learn.after_epoch += [ck.Checkpoint(tmp_path), stop_after(0)]
    with pytest.raises(Stop):
        learn.fit_one_cycle(3, 1e-2)
    dls = CollabDataLoaders.from_df(frame, seed=1, bs=32)
    with pytest.raises(ConfigError, match="n_factors=6"):
        ck.restore(collab_learner(dls, n_factors=5, y_range=(0, 5.5), log=None), tmp_path)
    other_split = CollabDataLoaders.from_df(frame, seed=2, bs=32)
    with pytest.raises(ConfigError, match="the data or its split"):
        ck.restore(collab_learner(other_split, n_factors=6, y_range=(0, 5.5), log=None), tmp_path)
    with pytest.raises(ConfigError, match="n_epoch=3, this run asks for n_epoch=4"):
        ck.restore(make_learner(frame), tmp_path, expect={"n_epoch": 4})


def test_missing_or_damaged_checkpoint(frame, tmp_path):
    assert ck.restore(make_learner(frame), tmp_path) is None
    with pytest.raises(ModelFileError, match="no checkpoint"):
        ck.resume(make_learner(frame), tmp_path)
    (tmp_path / ck.FILE_NAME).write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ModelFileError):
        ck.restore(make_learner(frame), tmp_path)


# --- through the CLI ------------------------------------------------------------------------------
ARGS = ["train", "--quiet", "--factors", "5", "--bs", "32", "--lr", "1e-2", "--epochs", "3"]


def test_cli_resume_is_bit_identical(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MFSCRATCH_DATA", str(tmp_path / "data"))
    write_fake_ml100k(tmp_path / "data")
    rc, _, err = run_cli(capsys, *ARGS, "--save", tmp_path / "straight.npz")
    assert rc == 0, err

    # The interrupted run: Ctrl-C right after epoch 1's checkpoint is written.
    write_checkpoint = ck.Checkpoint.__call__

    def interrupt_after_epoch_1(self, learner, epoch):
        write_checkpoint(self, learner, epoch)
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(ck.Checkpoint, "__call__", interrupt_after_epoch_1)
    rc, _, err = run_cli(capsys, *ARGS, "--checkpoint", tmp_path / "ckpt", "--save", tmp_path / "resumed.npz")
    assert rc == 130 and not (tmp_path / "resumed.npz").exists()
    assert err.strip().splitlines()[-1].startswith("error: interrupted") and "--resume" in err
    monkeypatch.undo()
    monkeypatch.setenv("MFSCRATCH_DATA", str(tmp_path / "data"))

    rc, out, err = run_cli(
        capsys, *ARGS, "--checkpoint", tmp_path / "ckpt", "--resume", "--save", tmp_path / "resumed.npz"
    )
    assert rc == 0, err
    a, _, _ = load_model(tmp_path / "straight.npz")
    b, _, _ = load_model(tmp_path / "resumed.npz")
    assert np.array_equal(a.params, b.params)

    # Resuming with other settings is refused in one line.
    rc, _, err = run_cli(capsys, *ARGS[:-1], "4", "--checkpoint", tmp_path / "ckpt", "--resume")
    assert rc == 2
    assert_one_line_error(err, "n_epoch=3", "n_epoch=4", "drop --resume")


def test_cli_resume_without_a_checkpoint_starts_afresh(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MFSCRATCH_DATA", str(tmp_path / "data"))
    write_fake_ml100k(tmp_path / "data", n_ratings=500)
    rc, _, err = run_cli(capsys, *ARGS[:-1], "1", "--checkpoint", tmp_path / "ckpt", "--resume")
    assert rc == 0 and "no checkpoint" in err
    assert (tmp_path / "ckpt" / ck.FILE_NAME).is_file()


@pytest.mark.parametrize("name", ["exact", "per-rating"])
def test_checkpoint_and_model_written_by_version_0_1_still_load(name):
    """Files written by mfscratch 0.1 (tests/data/v0.1/make.py): its model file loads, and its
    checkpoint (``sparse`` in the settings, not the mode) resumes to the very weights 0.1 ended with."""
    from pathlib import Path

    folder = Path(__file__).parent / "data" / "v0.1"
    want, classes, _ = load_model(folder / f"{name}-model.npz")
    frame = pd.read_csv(folder / "synthetic_ratings.csv")
    kw = {"opt_func": SGD, "sparse": True} if name == "per-rating" else {}
    dls = CollabDataLoaders.from_df(frame, seed=1, bs=1 if name == "per-rating" else 16)
    learn = collab_learner(dls, n_factors=4, y_range=(0, 5.5), seed=3, log=None, **kw)
    assert learn.mode == name and list(classes["item"]) == list(dls.classes["item"])
    ck.resume(learn, folder / f"{name}-checkpoint")
    np.testing.assert_array_equal(learn.model.params, want.params)
