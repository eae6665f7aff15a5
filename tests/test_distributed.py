"""Training on a Dask cluster (``mfscratch.distributed``): a 2-worker LocalCluster on loopback.

The cluster is started once for the module (worker processes, one thread each, no dashboard) and
torn down at its end; every wait on it is bounded (the trainer's epoch timeout). Ratings are written
as several files into a temporary folder and read by the workers. The reference for "the same
numbers" is a local run through today's kernels: the learner on the parallel backend, given the
cluster's training rows (in its block order), its validation rows, its initial weights and as many
groups as the cluster's layout.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from conftest import make_ratings

from mfscratch import SGD, Adam, CollabDataLoaders, ConfigError, DataError, collab_learner, load_model
from mfscratch.distributed import adapter
from mfscratch.kernels import cpu
from mfscratch.model import init_params
from mfscratch.readers import read_ratings as read_local
from mfscratch.synthetic import synthetic_ratings

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.filterwarnings("ignore::mfscratch.DataWarning")

K = 8
Y_RANGE = (0.0, 5.5)


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},  # its HTTP port: loopback, free
        silence_logs=logging.CRITICAL,
    )
    c = Client(cluster, timeout=60)
    try:
        yield c
    finally:
        c.close(timeout=30)
        cluster.close(timeout=30)


def write_parts(folder, n=6000, n_files=3, seed=0):
    """Synthetic ratings as ``n_files`` CSV files (integer ids, offset so codes differ from ids)."""
    users, items, ratings = synthetic_ratings(n, 200, 150, seed=seed)
    for f, rows in enumerate(np.array_split(np.arange(n), n_files)):
        df = pd.DataFrame({"user": users[rows] + 1000, "item": items[rows] * 7, "rating": ratings[rows]})
        df.to_csv(folder / f"part-{f}.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return write_parts(tmp_path_factory.mktemp("parts"))


@pytest.fixture(scope="module")
def cluster_ratings(client, parts):
    from mfscratch.distributed import read_ratings

    return read_ratings(client, parts, seed=42)


def trainer(ratings, **kwargs):
    from mfscratch.distributed import DsgdTrainer

    settings = dict(n_factors=K, y_range=Y_RANGE, bs=1, seed=42, log=None, timeout=120)
    settings.update(kwargs)
    return DsgdTrainer(ratings, **settings)


# --- without a cluster ----------------------------------------------------------------------------
def test_import_mfscratch_never_imports_dask():
    code = "import sys, mfscratch; print('dask' in sys.modules or 'distributed' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


def test_without_dask_one_clear_error():
    code = (
        "import sys; sys.modules['dask'] = None; sys.modules['distributed'] = None\n"
        "from mfscratch import ConfigError\n"
        "try:\n    import mfscratch.distributed\nexcept ConfigError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "pip install 'mfscratch[dask]'" in out.stdout and len(out.stdout.strip().splitlines()) == 1


@pytest.mark.parametrize("seed", range(5))
def test_groups_from_counts_equal_balanced_groups(seed):
    rng = np.random.default_rng(seed)
    n_codes = int(rng.integers(2, 300))
    codes = (rng.pareto(1.0, int(rng.integers(1, 5000))) * 10).astype(np.int32) % n_codes
    for g in (1, 2, 3, 8, 14):
        expected = cpu.balanced_groups(codes, n_codes, g)
        got = adapter.groups_from_counts(np.bincount(codes, minlength=n_codes), g)
        np.testing.assert_array_equal(got, expected)


def test_stratum_order_shuffles_blocks_as_the_whole_layout_does():
    rng = np.random.default_rng(0)
    sizes = rng.integers(0, 50, 16)
    block_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    whole = np.arange(block_start[-1], dtype=np.int64)
    cpu.shuffle_blocks(whole, block_start, 12345)
    for first, stop in ((0, 4), (4, 8), (5, 7), (12, 16)):
        got = adapter.stratum_order(block_start, first, stop, 12345)
        np.testing.assert_array_equal(got, whole[block_start[first] : block_start[stop]] - block_start[first])


def test_init_rows_do_not_depend_on_where_a_worker_starts():
    seeds = np.random.SeedSequence(7)
    n = 3 * adapter.INIT_CHUNK_ROWS // 2
    whole = adapter.init_rows(seeds, 1, 0, n, 3)
    a, b = 1000, adapter.INIT_CHUNK_ROWS + 17
    np.testing.assert_array_equal(adapter.init_rows(seeds, 1, a, b, 3), whole[a:b])
    reference = init_params(n, 1, 3, np.random.default_rng(0))[: n * 3]  # the local learner's u_weight
    assert np.abs(whole).max() <= 0.02 and abs(whole.std() - reference.std()) < 2e-4


# --- reading on the cluster -------------------------------------------------------------------------
def test_vocabularies_are_those_of_a_local_run_on_the_concatenated_files(client, tmp_path):
    from mfscratch.distributed import read_ratings

    df = make_ratings(n_ratings=900)  # integer users, text items
    for f, rows in enumerate(np.array_split(np.arange(len(df)), 4)):  # three TSV files and a Parquet file
        part = df.iloc[rows].reset_index(drop=True)
        if f == 3:
            part.to_parquet(tmp_path / "r3.parquet")
        else:
            part.to_csv(tmp_path / f"r{f}.tsv", sep="\t", index=False)
    files = [*sorted(tmp_path.glob("r*.tsv")), tmp_path / "r3.parquet"]
    cluster = read_ratings(client, [str(f) for f in files], valid_pct=0.25, seed=3)
    local = pd.concat([read_local(p).df for p in files], ignore_index=True)
    dls = CollabDataLoaders.from_df(local, valid_pct=0.25, seed=3)
    assert cluster.classes() == dls.classes
    assert (cluster.n_users, cluster.n_items) == (dls.n_users, dls.n_items)
    assert cluster.n_train + cluster.n_valid == len(df)
    assert cluster.n_valid == sum(int(0.25 * len(rows)) for rows in np.array_split(np.arange(len(df)), 4))
    tr = trainer(cluster, n_factors=2)
    classes = cluster.classes()
    got = pd.DataFrame(
        {
            name: [classes[col][c] for c in np.concatenate([a, b])] if col != "rating" else np.concatenate([a, b])
            for name, col, a, b in zip(
                ("user", "item", "rating"), ("user", "item", "rating"), tr.training_rows(), tr.valid_rows()
            )
        }
    )
    key = ["user", "item", "rating"]
    pd.testing.assert_frame_equal(
        got.sort_values(key).reset_index(drop=True),
        df.astype({"rating": np.float32}).sort_values(key).reset_index(drop=True),
    )


def test_the_split_follows_the_seed(client, parts, cluster_ratings):
    from mfscratch.distributed import read_ratings

    again = trainer(read_ratings(client, parts, seed=42)).valid_rows()
    np.testing.assert_array_equal(again[2], trainer(cluster_ratings).valid_rows()[2])
    other = trainer(read_ratings(client, parts, seed=43)).valid_rows()
    assert not np.array_equal(other[0], again[0])


def test_a_bad_file_is_one_error_naming_it(client, tmp_path):
    from mfscratch.distributed import read_ratings

    (tmp_path / "a.csv").write_text("user,item,rating\n1,2,3\n2,3,4\n")
    (tmp_path / "b.csv").write_text("user,item,rating\n1,2,3\n2,3,lots\n")
    with pytest.raises(DataError, match=r"b\.csv: rating column 'rating' has 1 value"):
        read_ratings(client, tmp_path)
    (tmp_path / "b.csv").write_text("user,item,rating\nann,2,3\nbob,3,4\n")
    with pytest.raises(DataError, match="ids of .*a.csv are integers but those of .*b.csv are texts"):
        read_ratings(client, tmp_path)
    with pytest.raises(DataError, match="no file matches"):
        read_ratings(client, str(tmp_path / "nothing-*.csv"))


def test_exact_mode_and_bad_groups_are_refused(cluster_ratings):
    with pytest.raises(ConfigError, match="exact mode updates every row"):
        trainer(cluster_ratings, sparse=False)
    with pytest.raises(ConfigError, match="multiple of the 2 workers"):
        trainer(cluster_ratings, n_groups=3)


# --- the same numbers -----------------------------------------------------------------------------
@pytest.mark.parametrize("n_groups", [2, 4])
def test_per_rating_weights_equal_the_parallel_backend_bit_for_bit(cluster_ratings, n_groups):
    tr = trainer(cluster_ratings, n_groups=n_groups)
    learn = tr.reference_learner()  # the cluster's split, layout, weights and seeds on the parallel backend
    assert learn.backend.per_rating_n_groups == n_groups and learn.dls.n_train == cluster_ratings.n_train
    tr.fit_one_cycle(3, 0.02, wd=0.08)
    learn.fit_one_cycle(3, 0.02, wd=0.08)
    np.testing.assert_array_equal(tr.model().params, learn.model.params)
    np.testing.assert_allclose(tr.values[-1][1], learn.recorder.values[-1][1], rtol=1e-5)
    assert tr.bytes_sent[-1] > 0


def test_lazy_adam_and_sgd_train_as_the_local_sparse_mode(cluster_ratings):
    for opt, lr in ((Adam, 5e-3), (SGD(mom=0.9), 0.05)):
        tr = trainer(cluster_ratings, opt_func=opt, bs=32)
        learn = tr.reference_learner(backend="cpu")
        tr.fit_one_cycle(4, lr, wd=0.1)
        learn.fit_one_cycle(4, lr, wd=0.1)
        assert abs(tr.values[-1][1] - learn.recorder.values[-1][1]) < 0.02
        assert tr.values[-1][1] < tr.values[0][1]


def test_save_writes_a_model_with_its_vocabularies(cluster_ratings, tmp_path):
    tr = trainer(cluster_ratings)
    tr.fit(1, 0.01)
    model, classes, _ = load_model(tr.save(tmp_path / "m.npz"))
    np.testing.assert_array_equal(model.params, tr.model().params)
    assert classes == cluster_ratings.classes()


# --- the dask backend of collab_learner -------------------------------------------------------------
def test_the_dask_backend_trains_a_learner_as_the_parallel_backend(client):
    """The learner's own initial weights and seeds; its weights equal the parallel backend's over the
    same groups, bit for bit; exact and lazy modes are refused with the reason."""
    df = make_ratings(n_users=60, n_items=40, n_ratings=3000, seed=5)
    fits = []
    for backend in ("dask", "parallel"):
        dls = CollabDataLoaders.from_df(df, valid_pct=0.2, seed=0, bs=1)
        learn = collab_learner(
            dls, n_factors=K, y_range=Y_RANGE, opt_func=SGD, sparse=True, seed=3, backend=backend, log=None
        )
        if backend == "dask":
            learn.backend.client = client
            start = learn.model.params.copy()
        else:
            np.testing.assert_array_equal(learn.model.params, start)  # collab_learner's weights for the seed
            learn.backend.per_rating_n_groups = 2  # the layout of the 2 workers
        learn.fit_one_cycle(2, 0.02, wd=0.08)
        fits.append(learn)
    np.testing.assert_array_equal(fits[0].model.params, fits[1].model.params)
    assert fits[0].recorder.values == fits[1].recorder.values
    dls = CollabDataLoaders.from_df(df, valid_pct=0.2, seed=0, bs=8)
    for sparse, opt, why in ((False, Adam, "does not train exact mode"), (True, Adam, "per-rating SGD only")):
        learn = collab_learner(dls, n_factors=K, opt_func=opt, sparse=sparse, backend="dask", log=None)
        learn.backend.client = client
        with pytest.raises(ConfigError, match=why):
            learn.fit(1, 1e-3)


# --- checkpoints ----------------------------------------------------------------------------------
class _Stop(Exception):
    """Stands in for a killed client, raised after the first epoch's checkpoint."""


def _stop_after_first(tr, epoch):
    if epoch == 0:
        raise _Stop


@pytest.mark.parametrize("opt, bs, lr", [(SGD, 1, 0.02), (Adam, 32, 5e-3)])
def test_a_fit_resumed_from_its_checkpoint_equals_the_uninterrupted_one(cluster_ratings, tmp_path, opt, bs, lr):
    from mfscratch.distributed import resume

    straight = trainer(cluster_ratings, opt_func=opt, bs=bs, n_groups=4)
    straight.fit_one_cycle(3, lr, wd=0.08)
    stopped = trainer(cluster_ratings, opt_func=opt, bs=bs, n_groups=4)
    stopped.after_epoch += [resume.Checkpoint(tmp_path), _stop_after_first]
    with pytest.raises(_Stop):
        stopped.fit_one_cycle(3, lr, wd=0.08)
    resumed = trainer(cluster_ratings, opt_func=opt, bs=bs, n_groups=4)
    with pytest.raises(ConfigError, match="n_epoch=3, this run asks for n_epoch=4"):
        resume.restore(resumed, tmp_path, {"n_epoch": 4})
    assert resume.restore(resumed, tmp_path, {"n_epoch": 3, "lr_max": lr}) == 1
    resumed.fit_one_cycle(3, lr, wd=0.08, start_epoch=1)
    for got, want in zip(resumed.weights(), straight.weights()):
        np.testing.assert_array_equal(got, want)
    assert resumed.values == straight.values
    other = trainer(cluster_ratings, opt_func=opt, bs=bs, n_groups=2)
    with pytest.raises(ConfigError, match="n_groups=4, this run differs"):
        resume.restore(other, tmp_path)


# --- the command line ------------------------------------------------------------------------------
def test_cli_resumes_on_a_local_cluster_as_the_api_trains(client, parts, tmp_path):
    """An API fit stopped after its first epoch; ``mfscratch train --backend dask --scheduler local:2
    --resume`` (its own cluster, torn down at the end) finishes it with the uninterrupted fit's weights."""
    from mfscratch.cli import main
    from mfscratch.distributed import read_ratings, resume

    ratings = read_ratings(client, str(parts / "part-*.csv"), seed=42)
    settings = dict(n_factors=K, y_range=Y_RANGE, opt_func="sgd", bs=1, seed=42, log=None, timeout=120)
    from mfscratch.distributed import DsgdTrainer

    straight = DsgdTrainer(ratings, **settings)
    straight.fit_one_cycle(2, 0.02, wd=0.08)
    stopped = DsgdTrainer(ratings, **settings)
    stopped.after_epoch += [resume.Checkpoint(tmp_path / "ck"), _stop_after_first]
    with pytest.raises(_Stop):
        stopped.fit_one_cycle(2, 0.02, wd=0.08)
    args = ["train", "--backend", "dask", "--scheduler", "local:2", "--ratings", str(parts / "part-*.csv")]
    args += ["--mode", "per-rating", "--epochs", "2", "--factors", str(K), "--y-range", "0", "5.5", "--quiet"]
    args += ["--checkpoint", str(tmp_path / "ck"), "--resume", "--save", str(tmp_path / "m.npz")]
    args += ["--json", str(tmp_path / "r.json")]
    assert main(args) == 0
    model, classes, _ = load_model(tmp_path / "m.npz")
    np.testing.assert_array_equal(model.params, straight.model().params)
    assert classes == ratings.classes()
    report = json.loads((tmp_path / "r.json").read_text())
    assert [e["epoch"] for e in report["epochs"]] == [1] and report["settings"]["workers"] == 2
    assert report["epochs"][0]["valid_loss"] == straight.values[1][1]


def test_cli_local_cluster_is_torn_down_after_a_bad_file(tmp_path, capsys):
    import psutil

    from mfscratch.cli import main

    (tmp_path / "a.csv").write_text("user,item,rating\n1,2,3\n2,3,4\n3,1,5\n")
    (tmp_path / "b.csv").write_text("user,item,rating\n1,2,3\n2,3,lots\n")

    def workers():  # child processes but multiprocessing's resource tracker, which lives as long as this one
        return {
            p.pid for p in psutil.Process().children(recursive=True) if "resource_tracker" not in " ".join(p.cmdline())
        }

    before = workers()
    args = ["train", "--backend", "dask", "--scheduler", "local:2", "--ratings", str(tmp_path), "--mode", "per-rating"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "b.csv: rating column 'rating'" in err[0], err
    deadline = time.monotonic() + 30
    while workers() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not workers() - before


def test_cli_refusals_are_one_error_line(parts):
    base = [sys.executable, "-m", "mfscratch", "train", "--ratings", str(parts), "--epochs", "1"]
    hide = "import sys, runpy; sys.modules['dask'] = None; sys.modules['distributed'] = None; "
    hide += "sys.argv = ['mfscratch'] + sys.argv[1:]; runpy.run_module('mfscratch', run_name='__main__')"
    cases = [
        (base + ["--backend", "dask", "--mode", "per-rating"], "needs --scheduler"),
        (base + ["--backend", "dask", "--scheduler", "local:2"], "does not train exact mode"),
        (base + ["--backend", "dask", "--scheduler", "local:2", "--mode", "per-rating", "--threads", "2"], "threads"),
        (base + ["--scheduler", "local:2"], "--scheduler applies to --backend dask"),
        (
            base
            + [
                "--backend",
                "dask",
                "--scheduler",
                "local:2",
                "--mode",
                "per-rating",
                "--save",
                str(parts / "part-1.csv"),
            ],
            "would overwrite --ratings",
        ),
        ([sys.executable, "-c", hide, *base[3:], "--backend", "dask", "--scheduler", "local:2"], "pip install"),
    ]
    for argv, message in cases:
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()}
        )
        assert out.returncode == 2, (argv, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], (argv, out.stderr)


# --- faults -------------------------------------------------------------------------------------------
def test_a_worker_killed_during_the_second_epoch_changes_nothing(client, cluster_ratings):
    undisturbed = trainer(cluster_ratings, n_groups=4)
    undisturbed.fit_one_cycle(3, 0.02, wd=0.08)
    pids = client.run(os.getpid)
    killed = []

    def kill_in_second_epoch(tr, epoch):
        if epoch != 1:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the epoch's first stratum is done somewhere
            held = {key for keys in client.has_what().values() for key in keys}
            if any(key.startswith("mf-train-0-1-") for key in held):
                break
            time.sleep(0.005)
        victim = tr.workers[1]
        os.kill(pids[victim], signal.SIGKILL)
        killed.append(victim)

    disturbed = trainer(cluster_ratings, n_groups=4)
    disturbed.epoch_started.append(kill_in_second_epoch)
    disturbed.fit_one_cycle(3, 0.02, wd=0.08)
    assert killed
    np.testing.assert_array_equal(disturbed.model().params, undisturbed.model().params)
    assert disturbed.values == undisturbed.values
    client.wait_for_workers(2, timeout=60)  # the nanny restarts it: the next tests get two workers again


# --- the real ML-100k --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ml100k_parts(tmp_path_factory):
    from conftest import ml100k_dir

    path = ml100k_dir()
    if path is None:
        pytest.skip("real ML-100k not found: set MFSCRATCH_DATA to a folder holding ml-100k/")
    folder = tmp_path_factory.mktemp("ml100k")
    lines = (path / "u.data").read_text().splitlines(keepends=True)
    for f in range(4):  # four files of a quarter each, outside the repository
        (folder / f"u.part{f}.data").write_text("".join(lines[f::4]))
    return folder


@pytest.mark.realdata
def test_ml100k_per_rating_recipe_and_lazy_modes(client, ml100k_parts):
    from mfscratch.distributed import read_ratings

    ratings = read_ratings(client, ml100k_parts, seed=42)
    assert (ratings.n_users, ratings.n_items, ratings.n_train + ratings.n_valid) == (944, 1683, 100_000)
    tr = trainer(ratings, n_factors=50)
    tr.fit_one_cycle(12, 0.02, wd=0.08)
    assert tr.values[-1][1] <= 0.83
    for opt, lr, wd in ((Adam, 5e-3, 0.1), (SGD(mom=0.9), 0.1, 0.1)):
        lazy = trainer(ratings, n_factors=50, opt_func=opt, bs=64)
        learn = lazy.reference_learner(backend="cpu")
        lazy.fit_one_cycle(5, lr, wd=wd)
        learn.fit_one_cycle(5, lr, wd=wd)
        assert abs(lazy.values[-1][1] - learn.recorder.values[-1][1]) <= 0.005, (
            opt,
            lazy.values,
            learn.recorder.values,
        )
