"""Numba CPU kernels: the fast twins of :mod:`mfscratch.reference`, one concern a module.

* ``core``: sigmoid, dot product, logit, error and ``dx``, forward/backward, predict, evaluate;
* ``updates``: fastai's Adam and SGD on the flat buffer or one row, and the step's scalars;
* ``dense``, ``deferred``: exact mode (every row every step; untouched rows replayed when next read);
* ``sparse``: only the batch's rows (Hogwild! on threads); ``per_rating``: per-rating SGD, fused;
* ``blocks``: per-rating SGD's groups, strata, layout, shuffles and in-place sort;
* ``exp``: the C library's ``exp`` in operations that vectorise (the validation pass's sigmoid);
* ``_llvm``, ``_compile``: the LLVM intrinsics and the compile options, out of the reader's way.

Every kernel is a pure function of arrays and records (``kernels/records.py``; no Python objects,
no schedule, no logging): the backend computes the per-step learning rates and momenta and hands
them in. The four tables live in one flat buffer ``params`` (``u_weight | i_weight | u_bias | i_bias``);
gradients and moments use the same layout. Kernels with a ``prange`` loop are compiled twice from one
body, serially and with ``parallel=True`` (the ``*_parallel`` names). The CUDA twins in
``kernels/cuda`` carry the same names and take the same records. Why the kernels look the way they
do (float32 scalars, ``error_model``, one ``reassoc`` flag, prefetching): docs/speed.md.
"""

from .blocks import (
    balanced_groups,
    block_index,
    block_layout,
    block_ordered,
    shuffle_blocks,
    shuffle_blocks_parallel,
    sort_by_block,
)
from .core import evaluate_mse, evaluate_mse_parallel, forward_backward, predict, split_flat
from .deferred import train_epoch_deferred
from .dense import train_epoch_dense, train_epoch_dense_parallel
from .per_rating import (
    train_epoch_per_rating,
    train_epoch_per_rating_dynamic,
    train_epoch_per_rating_parallel,
    train_epoch_per_rating_shuffled,
)
from .sparse import train_epoch_sparse, train_epoch_sparse_parallel
from .updates import adam_update_dense, sgd_update_dense, step_scalars

__all__ = [
    "split_flat",
    "forward_backward",
    "predict",
    "evaluate_mse",
    "evaluate_mse_parallel",
    "step_scalars",
    "adam_update_dense",
    "sgd_update_dense",
    "train_epoch_dense",
    "train_epoch_dense_parallel",
    "train_epoch_deferred",
    "train_epoch_sparse",
    "train_epoch_sparse_parallel",
    "train_epoch_per_rating",
    "train_epoch_per_rating_parallel",
    "train_epoch_per_rating_dynamic",
    "train_epoch_per_rating_shuffled",
    "balanced_groups",
    "block_index",
    "block_layout",
    "block_ordered",
    "shuffle_blocks",
    "shuffle_blocks_parallel",
    "sort_by_block",
]
