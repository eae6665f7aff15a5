"""``numba.cuda`` twins of the CPU kernels (``kernels/cpu``): same names, same records.

* ``core``: forward/backward (one thread per rating, atomics), evaluation, the shared device maths;
* ``updates``: dense Adam/SGD (one thread per element), the lazy update and its row owners;
* ``epochs``: whole epochs as one cooperative launch, and the host loop's gather;
* ``per_rating``: per-rating SGD (cuMF_SGD's design): stratified or batch-Hogwild!, fp32/fp16/bf16 storage;
* ``_compile``: numba-cuda found or not, block size, grid sizes.

Design and status: docs/cuda.md. This package and ``kernels/cpu`` never import each other; what both
use lives in ``kernels/records.py``.
"""

from ._compile import HAS_CUDA, SIMULATOR, THREADS, blocks_for, cooperative_blocks, cuda
from .core import evaluate_mse, forward_backward
from .epochs import gather_rows, train_epoch_dense, train_epoch_sparse
from .per_rating import (
    MAX_LANES,
    STORAGES,
    bf16_bits,
    bf16_value,
    narrow_params,
    narrow_params_bf16,
    train_epoch_per_rating_hogwild,
    train_epoch_per_rating_hogwild_bf16,
    train_stratum_per_rating,
    train_stratum_per_rating_bf16,
    widen_params,
    widen_params_bf16,
)
from .updates import Owners, adam_update_dense, mark_rows, sgd_update_dense, update_sparse

__all__ = [
    "cuda",
    "HAS_CUDA",
    "SIMULATOR",
    "THREADS",
    "blocks_for",
    "cooperative_blocks",
    "forward_backward",
    "evaluate_mse",
    "Owners",
    "adam_update_dense",
    "sgd_update_dense",
    "mark_rows",
    "update_sparse",
    "gather_rows",
    "train_epoch_dense",
    "train_epoch_sparse",
    "MAX_LANES",
    "STORAGES",
    "bf16_bits",
    "bf16_value",
    "train_stratum_per_rating",
    "train_stratum_per_rating_bf16",
    "train_epoch_per_rating_hogwild",
    "train_epoch_per_rating_hogwild_bf16",
    "narrow_params",
    "narrow_params_bf16",
    "widen_params",
    "widen_params_bf16",
]
