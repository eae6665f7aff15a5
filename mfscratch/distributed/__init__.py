"""Training on a Dask cluster: ratings read on the workers, distributed stratified SGD (DSGD).

Needs the optional ``dask`` and ``distributed`` packages (``pip install 'mfscratch[dask]'``);
``import mfscratch`` never imports them, and this package says so in one line when they are missing::

    from distributed import Client
    from mfscratch.distributed import read_ratings, DsgdTrainer

    client = Client("tcp://scheduler:8786")
    ratings = read_ratings(client, "ratings/part-*.csv", valid_pct=0.2, seed=42)
    trainer = DsgdTrainer(ratings, n_factors=50, y_range=(0, 5.5), bs=1, seed=42)
    trainer.fit_one_cycle(12, 0.02, wd=0.08)
    trainer.save("model.npz")

Checkpoints: ``trainer.after_epoch.append(resume.Checkpoint(DIR))`` and ``resume.restore``; the command
line: ``mfscratch train --backend dask --scheduler ADDRESS|local:N`` (``cli.py``); a learner's
per-rating SGD on a cluster: ``collab_learner(..., backend="dask")`` (``mfscratch.backends.dask``).
How it works, how to start a cluster and what it costs: ``docs/distributed.md``.
"""

from __future__ import annotations

from ..errors import ConfigError


def _require_dask() -> None:
    try:
        import dask  # noqa: F401
        import distributed  # noqa: F401
    except ImportError:
        raise ConfigError(
            "training on a Dask cluster needs dask and distributed, which are not installed: "
            "pip install 'mfscratch[dask]'"
        ) from None


_require_dask()

from .data import ClusterRatings, read_ratings  # noqa: E402
from .dsgd import DsgdTrainer  # noqa: E402

__all__ = ["ClusterRatings", "DsgdTrainer", "read_ratings"]
