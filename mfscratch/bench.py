"""``mfscratch bench``: the backends side by side, and the PyTorch reference loop, on one dataset.

Every row trains the same model from the same initial weights with the same one-cycle schedule
(the seed recipe's hyper-parameters unless told otherwise) and reports:

* ``seconds_per_epoch``: the *median* training epoch (no validation): what a user lives with;
  compile time is excluded (``learn.warmup()`` runs first);
* ``best_seconds_per_epoch``: the fastest epoch (on a shared machine, the closest to the quiet cost);
* ``epochs_timed``: how many epochs the median and the best are taken over;
* ``ratings_per_second``: training ratings / ``seconds_per_epoch`` (the median);
* ``speedup_vs_torch``: the PyTorch row's seconds per epoch / this row's (``None`` without torch);
* ``valid_mse``: after the last epoch.

The modes are ``exact`` and ``sparse`` (the seed recipe's hyper-parameters) and ``per-rating``:
sparse mode with plain SGD and batches of one rating (the fused kernel), run with its own documented
setting :data:`PER_RATING_RECIPE` (the ``lr``/``wd``/``epochs`` given apply to the other modes only).
Version 0.1 called it ``sparse-sgd1``; that name is accepted, with a DeprecationWarning, for one
more release (as a ``--mode`` value and in rows read back with :func:`read_json`).

The PyTorch row runs the reference loop of ``mfscratch.torch_loop`` (exact mode only), which imports
torch only when that row runs: the library never imports it. Without torch the default run leaves the
row out and says why; ``--backend torch`` without torch is an error.
The ``cornac`` row (asked for with ``--backend cornac``, with the ``per-rating`` mode) trains
cornac's biased MF (Cython per-rating SGD) on the same training rows, for the per-rating
comparison: seconds per epoch = each of three 25-epoch fits / 25 (its setup included).
The ``libmf`` row (asked for with ``libmf=PATH``, ``--libmf PATH`` on the command line, with the
``per-rating`` mode) times LIBMF on the same training rows: ``PATH`` is a LIBMF build folder (its
``mf-train`` is run with 1 and with ``1 + E`` iterations: the difference over ``E`` is an epoch, its
reading and set-up cancel out) or an epoch-timing driver such as the one
``benchmarks/libmf_vs_mfscratch.py --build-only DIR`` builds (:func:`libmf_row` says what it runs). The
package never looks for LIBMF itself: without ``PATH`` the row is left out with one line. LIBMF's
model has no biases and no sigmoid, so its row has no valid MSE.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from . import schedule
from .backends import BACKENDS, MODES, available_backends, normalise_mode
from .errors import ConfigError
from .learner import collab_learner
from .optim import SGD, Adam

__all__ = [
    "MODES",
    "KEYS",
    "PER_RATING_RECIPE",
    "cornac_row",
    "libmf_row",
    "load_torch_loop",
    "bench_rows",
    "size_sweep",
    "format_table",
    "write_json",
    "read_json",
    "plot_sweep",
]

#: The documented per-rating SGD setting (seed split 42: valid MSE 0.813 on ML-100k).
PER_RATING_RECIPE = {"lr": 0.02, "wd": 0.08, "epochs": 12}
#: cornac's biased MF as compared in docs/speed.md (its defaults but k = 50 and 25 epochs).
CORNAC_SETTINGS = {"k": 50, "max_iter": 25, "learning_rate": 0.01, "lambda_reg": 0.02}
#: The keys of one result row, in table order.
KEYS = (
    "backend",
    "mode",
    "seconds_per_epoch",
    "best_seconds_per_epoch",
    "epochs_timed",
    "ratings_per_second",
    "speedup_vs_torch",
    "valid_mse",
)
#: The ``libmf`` row's epochs per timed sample (``1 + E`` against 1 iteration) and samples.
LIBMF_EPOCHS, LIBMF_REPEATS = 10, 3


def load_torch_loop():
    """``mfscratch.torch_loop`` as a module, or ``(None, reason)`` when torch is not installed."""
    from . import torch_loop

    why = torch_loop.available()
    return (None, why) if why else (torch_loop, "")


def _row(backend, mode, epoch_seconds, n_train, valid_mse, epochs_timed=None):
    """One result row from the timed epochs' seconds (the median and the best of them)."""
    median = float(statistics.median(epoch_seconds))
    return {
        "backend": backend,
        "mode": mode,
        "seconds_per_epoch": median,
        "best_seconds_per_epoch": float(min(epoch_seconds)),
        "epochs_timed": int(len(epoch_seconds) if epochs_timed is None else epochs_timed),
        "ratings_per_second": float(n_train / median),
        "speedup_vs_torch": None,
        "valid_mse": None if valid_mse is None else float(valid_mse),
    }


def _torch_row(torch_loop, dls, tables, y_range, epochs, lr, wd, seed, threads=1):
    total = epochs * (dls.n_train // dls.bs)
    lrs, moms = schedule.one_cycle(total, lr)
    stats, _ = torch_loop.fit_one_cycle(dls, tables, y_range, epochs, lrs, moms, wd, seed=seed, threads=threads)
    return _row("torch", "exact", [s["seconds"] for s in stats], dls.n_train, stats[-1]["valid_mse"])


def check_names(backends, modes) -> tuple[list[str], tuple[str, ...]]:
    """The backend names (``None``: the default set) and modes to run, after checking every one.

    An old mode name is accepted with a DeprecationWarning and returned under its new name. A backend
    named explicitly that cannot run here (torch or cornac not installed, cuda without a GPU, cornac
    without the ``per-rating`` mode it is compared in) is a :class:`ConfigError`; the default set
    leaves such rows out with a note instead.
    """
    peers = ("torch", "cornac", "libmf")
    names = available_backends() + list(peers) if backends is None else list(backends)
    for name in names:
        if name not in peers and name not in BACKENDS:
            raise ConfigError(f"unknown backend {name!r}: use one of {', '.join([*BACKENDS, *peers])}")
    modes = tuple(dict.fromkeys(normalise_mode(mode) for mode in modes))
    if backends is not None:
        for name in names:
            why = _cannot_run(name, modes)
            if why:
                raise ConfigError(f"--backend {name} cannot run: {why}")
    return names, modes


def _cannot_run(name: str, modes) -> str | None:
    """Why the row of backend ``name`` cannot run here, or ``None``."""
    if name == "torch":
        return load_torch_loop()[1] or None
    if name == "libmf":
        return None if "per-rating" in modes else "LIBMF's row sits next to the per-rating mode; add --mode per-rating"
    if name == "cornac":
        if "per-rating" not in modes:
            return "cornac's row sits next to the per-rating mode; add --mode per-rating"
        return None if importlib.util.find_spec("cornac") else "cornac is not installed (pip install cornac)"
    if name == "dask":
        return (
            "bench times this machine's backends; a Dask cluster trains with `mfscratch train --backend dask "
            "--scheduler ADDRESS` and is timed by the repository's benchmarks/dask_ml25m.py"
        )
    if name not in available_backends():
        return f"the {name} backend is not available on this machine (no GPU or no numba-cuda)"
    return None


def bench_rows(
    dls,
    backends=None,
    modes=MODES,
    epochs: int = 5,
    n_factors: int = 50,
    lr: float = 5e-3,
    wd: float = 0.1,
    y_range=(0.0, 5.5),
    seed: int = 42,
    torch: bool = True,
    log=print,
    torch_threads: int = 1,
    libmf=None,
    libmf_threads: int = 1,
) -> list[dict]:
    """Train once per (backend, mode) and once with PyTorch; return the rows (see the module docstring).

    ``backends`` defaults to every backend that can run here (cuda only with a GPU) plus ``'torch'``
    and ``'cornac'`` and ``'libmf'``. ``'torch'`` adds the PyTorch row, run with ``torch_threads`` threads (default
    one: with batches of 64 the loop is a chain of tiny ops, two threads gain nothing on two cores,
    and when another process holds a core each op waits for it: docs/speed.md). ``'cornac'`` adds cornac's
    row when ``per-rating`` is among the modes and cornac is installed; ``'libmf'`` LIBMF's row
    (:func:`libmf_row`, on ``libmf_threads`` threads) when ``per-rating`` is among the modes and
    ``libmf`` (a path) is given.
    """
    log = log or (lambda *a: None)
    names, modes = check_names(backends, modes)
    rows, start_tables = [], None
    for name in names:
        if name in ("torch", "cornac", "libmf"):
            continue
        for mode in modes:
            opt: type[Adam] | type[SGD] = Adam
            run: dict[str, Any] = {"lr": lr, "wd": wd, "epochs": epochs}
            run_dls = dls
            if mode == "per-rating":  # batches of one rating, plain SGD, its own recipe
                run_dls, opt, run = copy.copy(dls), SGD, PER_RATING_RECIPE
                run_dls.bs = 1
            learn = collab_learner(
                run_dls,
                n_factors=n_factors,
                y_range=y_range,
                seed=seed,
                sparse=mode != "exact",
                opt_func=opt,
                backend=name,
                log=None,
            )
            if start_tables is None:
                start_tables = {k: v.copy() for k, v in learn.model.tables().items()}
            learn.warmup()  # compile (or load from the cache) the kernels of this run, outside the timing
            learn.fit_one_cycle(run["epochs"], run["lr"], wd=run["wd"])
            rows.append(_row(name, mode, learn.recorder.train_seconds, dls.n_train, learn.recorder.values[-1][1]))
            log(f"  {name:<9}{mode:<12}{rows[-1]['seconds_per_epoch']:.4f} s/epoch")
    if "cornac" in names and "per-rating" in modes:
        if importlib.util.find_spec("cornac") is None:
            log("  skipping the cornac row: cornac is not installed (pip install cornac)")
        else:
            rows.append(cornac_row(dls, seed))
            log(f"  cornac   per-rating  {rows[-1]['seconds_per_epoch']:.4f} s/epoch")
    if "libmf" in names and "per-rating" in modes:
        if libmf is None:
            log("  skipping the libmf row: no LIBMF given (--libmf PATH: a LIBMF build or an epoch-timing driver)")
        else:
            rows.append(libmf_row(dls, libmf, n_factors, libmf_threads))
            log(f"  libmf    per-rating  {rows[-1]['seconds_per_epoch']:.4f} s/epoch")
    if "torch" in names and torch:
        torch_loop, why = load_torch_loop()
        if torch_loop is None:
            log(f"  skipping the PyTorch row: {why}")
        else:
            if start_tables is None:
                start_tables = collab_learner(
                    dls, n_factors=n_factors, y_range=y_range, seed=seed, log=None
                ).model.tables()
            rows.append(_torch_row(torch_loop, dls, start_tables, y_range, epochs, lr, wd, seed, torch_threads))
            log(f"  torch    exact       {rows[-1]['seconds_per_epoch']:.4f} s/epoch")
            base = rows[-1]["seconds_per_epoch"]
            for row in rows:
                row["speedup_vs_torch"] = base / row["seconds_per_epoch"]
    return rows


def cornac_row(dls, seed: int | None = 42, repeats: int = 3, num_threads: int = 0) -> dict:
    """cornac's biased MF (:data:`CORNAC_SETTINGS`) on ``dls``'s training rows; valid MSE on its valid rows.

    Timed as cornac is used: ``fit`` on a prepared ``cornac.data.Dataset`` (best of ``repeats``),
    divided by its epochs. Its prediction is ``global_mean + b_u + b_i + u . v`` (no sigmoid);
    users or items absent from training fall back to the means, as cornac does. With a ``seed``
    cornac trains on one thread; with ``seed=None`` on ``num_threads`` (0: every core, Hogwild).
    """
    import numpy as np
    from cornac.data import Dataset
    from cornac.models import MF

    train = list(zip(dls.train_users.tolist(), dls.train_items.tolist(), dls.train_ratings.astype(float).tolist()))
    data = Dataset.from_uir(train, seed=seed)
    fits = []
    for _ in range(repeats):
        model = MF(
            **CORNAC_SETTINGS, use_bias=True, early_stop=False, verbose=False, seed=seed, num_threads=num_threads
        )
        t0 = time.perf_counter()
        model.fit(data)
        fits.append((time.perf_counter() - t0) / CORNAC_SETTINGS["max_iter"])
    uidx = np.array([data.uid_map.get(u, -1) for u in dls.valid_users.tolist()])
    iidx = np.array([data.iid_map.get(i, -1) for i in dls.valid_items.tolist()])
    pred = np.full(len(uidx), float(model.global_mean))
    ok_u, ok_i = uidx >= 0, iidx >= 0
    pred[ok_u] += model.u_biases[uidx[ok_u]]
    pred[ok_i] += model.i_biases[iidx[ok_i]]
    both = ok_u & ok_i
    pred[both] += (model.u_factors[uidx[both]] * model.i_factors[iidx[both]]).sum(axis=1)
    mse = float(np.mean((pred - dls.valid_ratings) ** 2))
    return _row("cornac", "per-rating", fits, dls.n_train, mse, epochs_timed=repeats * CORNAC_SETTINGS["max_iter"])


def libmf_row(dls, path, n_factors: int = 50, threads: int = 1, bins: int | None = None) -> dict:
    """LIBMF's per-rating SGD on ``dls``'s training rows, timed by epoch; ``path`` as the module docstring says.

    The rows are written to a temporary file (binary ``int32 u, int32 v, float32 r`` records for a
    driver, ``u v r`` text lines for ``mf-train``). A driver is run as
    ``PATH ROWS.bin M N K THREADS BINS EPOCHS REPEATS`` and prints, per repeat, the seconds of
    ``mf_train`` with 1 and with ``1 + EPOCHS`` iterations; ``mf-train`` is run the same way, timed
    from here. Each repeat gives one epoch time, ``(t(1 + E) - t(1)) / E``; the row's median and best
    are over the :data:`LIBMF_REPEATS` repeats of :data:`LIBMF_EPOCHS` epochs. ``bins`` is LIBMF's
    ``-n`` (default ``max(20, 2 * threads + 1)``). Raises :class:`ConfigError` when ``path`` is neither.
    """
    import numpy as np

    path = Path(path)
    bins = bins or max(20, 2 * threads + 1)
    epochs, repeats = LIBMF_EPOCHS, LIBMF_REPEATS
    with tempfile.TemporaryDirectory(prefix="mfscratch_libmf_") as tmp:
        if path.is_dir():
            train = path / "mf-train"
            if not train.is_file():
                raise ConfigError(f"--libmf {path}: the folder has no mf-train; give a LIBMF build folder or a driver")
            text = Path(tmp) / "train.txt"
            np.savetxt(text, np.column_stack([dls.train_users, dls.train_items, dls.train_ratings]), fmt="%d %d %.6g")
            pairs = []
            for _ in range(repeats):
                times = []
                for iters in (1, 1 + epochs):
                    cmd = [str(train), "-k", str(n_factors), "-t", str(iters), "-s", str(threads), "-n", str(bins)]
                    t0 = time.perf_counter()
                    _run_libmf([*cmd, "--quiet", str(text), str(Path(tmp) / "model.txt")], path)
                    times.append(time.perf_counter() - t0)
                pairs.append(times)
        elif path.is_file():
            rec = np.empty(dls.n_train, dtype=[("u", "<i4"), ("v", "<i4"), ("r", "<f4")])
            rec["u"], rec["v"], rec["r"] = dls.train_users, dls.train_items, dls.train_ratings
            rows = Path(tmp) / "train.bin"
            rec.tofile(rows)
            args = (dls.n_users, dls.n_items, n_factors, threads, bins, epochs, repeats)
            out = _run_libmf([str(path), str(rows), *(str(v) for v in args)], path)
            try:
                pairs = [[float(v) for v in line.split()] for line in out.splitlines() if line.strip()]
                if len(pairs) != repeats or any(len(p) != 2 for p in pairs):
                    raise ValueError
            except ValueError:
                raise ConfigError(
                    f"--libmf {path}: expected {repeats} lines 'seconds_1 seconds_{1 + epochs}' from the driver, "
                    f"got {out[:200]!r}"
                ) from None
        else:
            raise ConfigError(f"--libmf {path}: no such file or folder; give a LIBMF build folder or a driver")
    seconds = [max(te - t1, 1e-9) / epochs for t1, te in pairs]
    return _row("libmf", "per-rating", seconds, dls.n_train, None, epochs_timed=epochs * repeats)


def _run_libmf(cmd, path) -> str:
    """Run one LIBMF command; its stdout, or a :class:`ConfigError` that quotes its error output."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise ConfigError(
            f"--libmf {path}: cannot run it ({e.strerror}); give a LIBMF build folder or a driver"
        ) from None
    if done.returncode != 0:
        raise ConfigError(f"--libmf {path}: exited with status {done.returncode}: {done.stderr.strip()[-200:]}")
    return done.stdout


def format_table(rows) -> str:
    """The rows as a fixed-width text table."""
    head = (
        f"{'backend':<10}{'mode':<13}{'median s/epoch':>15}{'best s/epoch':>13}{'epochs':>8}"
        f"{'ratings/s':>13}{'vs torch':>10}{'valid MSE':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        speed = "-" if r["speedup_vs_torch"] is None else f"{r['speedup_vs_torch']:.1f}x"
        mse = "-" if r["valid_mse"] is None else f"{r['valid_mse']:.4f}"
        lines.append(
            f"{r['backend']:<10}{r['mode']:<13}{r['seconds_per_epoch']:>15.4f}{r['best_seconds_per_epoch']:>13.4f}"
            f"{r['epochs_timed']:>8}{r['ratings_per_second']:>13,.0f}{speed:>10}{mse:>11}"
        )
    lines.append("ratings/s from the median epoch; epochs: how many epochs the median and the best are taken over")
    return "\n".join(lines)


def write_json(path, rows) -> None:
    from . import io

    io.write_json(path, [{k: r[k] for k in KEYS} for r in rows])


def read_json(path) -> list[dict]:
    """Rows written by :func:`write_json` (or ``mfscratch bench --json``), with 0.1's mode names renamed."""
    rows = json.loads(Path(path).read_text())
    return [{**row, "mode": normalise_mode(row["mode"])} for row in rows]


def size_sweep(
    sizes, n_factors: int = 50, epochs: int = 1, backends=None, modes=MODES, seed: int = 0, log=print
) -> list[dict]:
    """Seconds per epoch on synthetic data of each size (users and items in ML-25M's proportions).

    Returns the rows of :func:`bench_rows` with ``n_ratings`` added to each.
    """
    from .synthetic import ML_25M_SHAPE, synthetic_dataloaders

    n25, u25, i25 = ML_25M_SHAPE
    # The per-rating mode records one loss per rating for 12 epochs: too much at the sweep's sizes.
    modes = [m for m in check_names([], modes)[1] if m != "per-rating"]
    out = []
    for n in sizes:
        n_users, n_items = max(50, round(n * u25 / n25)), max(50, round(n * i25 / n25))
        log(f"{n:,} ratings, {n_users:,} users, {n_items:,} items")
        dls = synthetic_dataloaders(int(n), n_users, n_items, seed=seed)
        for row in bench_rows(
            dls, backends, modes, epochs, n_factors, lr=5e-3, wd=0.1, y_range=(0.5, 5.5), seed=seed, log=log
        ):
            out.append({**row, "n_ratings": int(n)})
    return out


def plot_sweep(rows, path) -> None:
    """Seconds per epoch against the number of ratings, one line per (backend, mode), log-log."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'mfscratch[plot]' (or leave out --plot)") from None
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in dict.fromkeys((r["backend"], r["mode"]) for r in rows):
        pts = sorted((r["n_ratings"], r["seconds_per_epoch"]) for r in rows if (r["backend"], r["mode"]) == key)
        ax.plot(*zip(*pts), marker="o", label=f"{key[0]} {key[1]}")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="ratings",
        ylabel="seconds per epoch",
        title="mfscratch: cost of one epoch against data size",
    )
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    from .io import atomic_write

    try:
        atomic_write(path, lambda f: fig.savefig(f, format=Path(path).suffix[1:] or "png"))
    finally:
        plt.close(fig)
