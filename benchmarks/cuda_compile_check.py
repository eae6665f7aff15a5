"""Compile every CUDA kernel to PTX for a Hopper GPU (sm_90) on a machine *without* a GPU.

Numba's CUDA simulator runs the kernels as Python, so it cannot catch what only the real compiler
sees (typing, unsupported constructs). This check does, with no GPU: it needs numba-cuda plus
NVVM/NVRTC from pip (``pip install "cuda-toolkit[nvrtc,nvvm,cudart,cccl]==13.*"``).
Run: ``python benchmarks/cuda_compile_check.py`` (not under the simulator). A development aid,
not a test: it patches one numba-cuda internal (the device query device functions make).
"""

from __future__ import annotations

import sys
import types

import numpy as np
from numba import typeof
from numba.cuda import dispatcher as _dispatcher

from mfscratch.kernels import cuda as ck

CC = (9, 0)
# Device functions ask the current device for its compute capability; pretend we have an sm_90.
_dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=CC)


def main() -> int:
    from numba import cuda

    f32, i32, i64 = np.float32, np.int32, np.int64
    n_users, n_items, k, bs = 5, 7, 3, 4
    params = np.zeros((n_users + n_items) * (k + 1), f32)
    u_w, i_w = np.zeros((n_users, k), f32), np.zeros((n_items, k), f32)
    u_b, i_b = np.zeros(n_users, f32), np.zeros(n_items, f32)
    idx32, idx64 = np.zeros(bs, i32), np.zeros(bs, i64)
    ratings, loss = np.zeros(bs, f32), np.zeros(1)
    tables = (u_w, i_w, u_b, i_b)
    rng = (0.0, 5.5, True)
    adam = (1e-3, 0.9, 0.99, 1e-5, 0.01, True, 3)
    epoch = (
        params,
        params,
        params,
        params,
        n_users,
        n_items,
        k,
        idx32,
        idx32,
        ratings,
        idx64,
        bs,
        np.zeros(1),
        np.zeros(1),
        0,
        True,
        True,
        0.99,
        1e-5,
        0.01,
        True,
        *rng,
        np.zeros(1),
        idx32,
        idx32,
        32,
    )
    calls = {
        "forward_backward": (*tables, idx32, idx32, ratings, *rng, *tables, loss),
        "predict": (*tables, idx32, idx32, *rng, ratings),
        "score_items": (*tables, 1, *rng, ratings),
        "evaluate_mse": (*tables, idx32, idx32, ratings, *rng, loss),
        "adam_update_dense": (params, params, params, params, *adam),
        "sgd_update_dense": (params, params, params, 1e-3, 0.9, 0.01, True, True),
        "mark_rows": (idx32, idx32, idx32, idx32),
        "adam_update_sparse": (params, params, params, params, n_users, n_items, k, idx32, idx32, idx32, idx32, *adam),
        "sgd_update_sparse": (
            params,
            params,
            params,
            n_users,
            n_items,
            k,
            idx32,
            idx32,
            idx32,
            idx32,
            1e-3,
            0.9,
            0.01,
            True,
            True,
        ),
        "gather_rows": (idx32, idx32, ratings, idx64, idx32, idx32, ratings),
        "train_epoch_dense": epoch,
        "train_epoch_sparse": epoch,
    }
    failed = 0
    for name, args in calls.items():
        sig = tuple(typeof(a) for a in args)
        try:
            ptx, _ = cuda.compile_ptx(getattr(ck, name).py_func, sig, cc=CC)
            print(f"ok    {name}: {len(ptx)} characters of PTX")
        except Exception as e:  # report every kernel, not just the first failure
            failed += 1
            print(f"FAIL  {name}: {type(e).__name__}: {str(e).strip().splitlines()[-1][:400]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
