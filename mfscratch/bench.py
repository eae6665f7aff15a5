"""``mfscratch bench``: the backends side by side, and the PyTorch reference loop, on one dataset.

Every row trains the same model from the same initial weights with the same one-cycle schedule
(the seed recipe's hyper-parameters unless told otherwise) and reports:

* ``seconds_per_epoch``: the *best* training epoch (no validation), since the machine may be
  shared; compile time is excluded (``learn.warmup()`` runs first);
* ``ratings_per_second``: training ratings / ``seconds_per_epoch``;
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
comparison: seconds per epoch = the best of three 25-epoch fits / 25 (its setup included).
"""

from __future__ import annotations

import copy
import importlib.util
import json
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
KEYS = ("backend", "mode", "seconds_per_epoch", "ratings_per_second", "speedup_vs_torch", "valid_mse")


def load_torch_loop():
    """``mfscratch.torch_loop`` as a module, or ``(None, reason)`` when torch is not installed."""
    from . import torch_loop

    why = torch_loop.available()
    return (None, why) if why else (torch_loop, "")


def _row(backend, mode, seconds, n_train, valid_mse):
    return {
        "backend": backend,
        "mode": mode,
        "seconds_per_epoch": float(seconds),
        "ratings_per_second": float(n_train / seconds),
        "speedup_vs_torch": None,
        "valid_mse": float(valid_mse),
    }


def _torch_row(torch_loop, dls, tables, y_range, epochs, lr, wd, seed, threads=1):
    total = epochs * (dls.n_train // dls.bs)
    lrs, moms = schedule.one_cycle(total, lr)
    stats, _ = torch_loop.fit_one_cycle(dls, tables, y_range, epochs, lrs, moms, wd, seed=seed, threads=threads)
    return _row("torch", "exact", min(s["seconds"] for s in stats), dls.n_train, stats[-1]["valid_mse"])


def check_names(backends, modes) -> tuple[list[str], tuple[str, ...]]:
    """The backend names (``None``: the default set) and modes to run, after checking every one.

    An old mode name is accepted with a DeprecationWarning and returned under its new name. A backend
    named explicitly that cannot run here (torch or cornac not installed, cuda without a GPU, cornac
    without the ``per-rating`` mode it is compared in) is a :class:`ConfigError`; the default set
    leaves such rows out with a note instead.
    """
    names = available_backends() + ["torch", "cornac"] if backends is None else list(backends)
    for name in names:
        if name not in ("torch", "cornac") and name not in BACKENDS:
            raise ConfigError(f"unknown backend {name!r}: use one of {', '.join([*BACKENDS, 'torch', 'cornac'])}")
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
    if name == "cornac":
        if "per-rating" not in modes:
            return "cornac's row sits next to the per-rating mode; add --mode per-rating"
        return None if importlib.util.find_spec("cornac") else "cornac is not installed (pip install cornac)"
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
) -> list[dict]:
    """Train once per (backend, mode) and once with PyTorch; return the rows (see the module docstring).

    ``backends`` defaults to every backend that can run here (cuda only with a GPU) plus ``'torch'``
    and ``'cornac'``. ``'torch'`` adds the PyTorch row, run with ``torch_threads`` threads (default
    one: with batches of 64 the loop is a chain of tiny ops, two threads gain nothing on two cores,
    and when another process holds a core each op waits for it: docs/speed.md). ``'cornac'`` adds cornac's
    row when ``per-rating`` is among the modes and cornac is installed.
    """
    log = log or (lambda *a: None)
    names, modes = check_names(backends, modes)
    rows, start_tables = [], None
    for name in names:
        if name in ("torch", "cornac"):
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
            rows.append(_row(name, mode, min(learn.recorder.train_seconds), dls.n_train, learn.recorder.values[-1][1]))
            log(f"  {name:<9}{mode:<12}{rows[-1]['seconds_per_epoch']:.4f} s/epoch")
    if "cornac" in names and "per-rating" in modes:
        if importlib.util.find_spec("cornac") is None:
            log("  skipping the cornac row: cornac is not installed (pip install cornac)")
        else:
            rows.append(cornac_row(dls, seed))
            log(f"  cornac   per-rating  {rows[-1]['seconds_per_epoch']:.4f} s/epoch")
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
    import time

    import numpy as np
    from cornac.data import Dataset
    from cornac.models import MF

    train = list(zip(dls.train_users.tolist(), dls.train_items.tolist(), dls.train_ratings.astype(float).tolist()))
    data = Dataset.from_uir(train, seed=seed)
    best = float("inf")
    for _ in range(repeats):
        model = MF(
            **CORNAC_SETTINGS, use_bias=True, early_stop=False, verbose=False, seed=seed, num_threads=num_threads
        )
        t0 = time.perf_counter()
        model.fit(data)
        best = min(best, time.perf_counter() - t0)
    uidx = np.array([data.uid_map.get(u, -1) for u in dls.valid_users.tolist()])
    iidx = np.array([data.iid_map.get(i, -1) for i in dls.valid_items.tolist()])
    pred = np.full(len(uidx), float(model.global_mean))
    ok_u, ok_i = uidx >= 0, iidx >= 0
    pred[ok_u] += model.u_biases[uidx[ok_u]]
    pred[ok_i] += model.i_biases[iidx[ok_i]]
    both = ok_u & ok_i
    pred[both] += (model.u_factors[uidx[both]] * model.i_factors[iidx[both]]).sum(axis=1)
    mse = float(np.mean((pred - dls.valid_ratings) ** 2))
    return _row("cornac", "per-rating", best / CORNAC_SETTINGS["max_iter"], dls.n_train, mse)


def format_table(rows) -> str:
    """The rows as a fixed-width text table."""
    head = f"{'backend':<10}{'mode':<13}{'s/epoch':>10}{'ratings/s':>13}{'vs torch':>10}{'valid MSE':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        speed = "-" if r["speedup_vs_torch"] is None else f"{r['speedup_vs_torch']:.1f}x"
        lines.append(
            f"{r['backend']:<10}{r['mode']:<13}{r['seconds_per_epoch']:>10.4f}"
            f"{r['ratings_per_second']:>13,.0f}{speed:>10}{r['valid_mse']:>11.4f}"
        )
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
