"""mfscratch: fastai's biased dot-product collaborative filtering, from scratch in NumPy and Numba.

The seed notebook runs with NumPy arrays where fastai has tensors::

    from mfscratch import untar_data, URLs, CollabDataLoaders, collab_learner
    path = untar_data(URLs.ML_100k)
    ...
    learn = collab_learner(dls, n_factors=50, y_range=(0, 5.5))
    learn.fit_one_cycle(5, 5e-3, wd=0.1)

For programs: ``mfscratch.fit(df, user=..., item=..., rating=...)`` returns a trained learner,
``CollabRegressor`` is the scikit-learn-style estimator, ``learn.export(path)`` and
``load_learner(path)`` save and load.

Where things live: ``reference.py`` (the maths in NumPy), ``kernels/`` (the compiled twins),
``model.py``, ``optim.py``, ``schedule.py``, ``data.py``, ``learner.py`` (training) and
``learner_api.py`` (predicting, inspecting, saving), ``cli/`` (the command).
"""

from .api import fit
from .callbacks import CancelFitException, EarlyStoppingCallback, SaveModelCallback
from .data import CollabDataLoaders, URLs, Vocab, data_dir, untar_data
from .errors import ConfigError, DataError, DivergenceError, MfscratchError, ModelFileError
from .estimator import CollabRegressor
from .export import load_learner
from .io import load_model, save_model
from .learner import Learner, collab_learner
from .model import Embedding, EmbeddingDotBias
from .optim import SGD, Adam
from .readers import read_movielens, read_ratings
from .seeding import set_seed
from .validate import DataWarning

__version__ = "0.1.0"

__all__ = [
    "URLs",
    "untar_data",
    "data_dir",
    "CollabDataLoaders",
    "Vocab",
    "collab_learner",
    "Learner",
    "EmbeddingDotBias",
    "Embedding",
    "Adam",
    "SGD",
    "read_ratings",
    "read_movielens",
    "fit",
    "CollabRegressor",
    "load_learner",
    "EarlyStoppingCallback",
    "SaveModelCallback",
    "CancelFitException",
    "save_model",
    "load_model",
    "set_seed",
    "MfscratchError",
    "DataError",
    "ConfigError",
    "ModelFileError",
    "DivergenceError",
    "DataWarning",
]
