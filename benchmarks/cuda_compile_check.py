"""Compile every CUDA kernel to PTX for a Hopper GPU (sm_90) on a machine *without* a GPU.

Numba's CUDA simulator runs the kernels as Python, so it cannot catch what only the real compiler
sees (typing, unsupported constructs). This check does, with no GPU: it needs numba-cuda plus
NVVM/NVRTC from pip (``pip install "cuda-toolkit[nvrtc,nvvm,cudart,cccl]==13.*"``).
Run: ``python benchmarks/cuda_compile_check.py`` (not under the simulator). A development aid,
not a test: it patches one numba-cuda internal (the device query device functions make).

Each PTX is also searched for functions it calls but does not define (``.extern .func``): only the
grid barrier's (``cudaCG*``, from cudadevrt) and Numba's own runtime helpers are expected; anything
else (e.g. a float16 operator from CUDA's C++ headers, which would mean half-precision arithmetic
where float64 was meant) fails the check. With ``ptxas`` on the PATH (or ``PTXAS=path``; pip's
``nvidia-cuda-nvcc`` wheel has one) each PTX is assembled for sm_90 as relocatable code and its
registers, stack and spills are printed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import types

import numpy as np
from numba import typeof
from numba.cuda import dispatcher as _dispatcher

from mfscratch.kernels import cuda as ck

CC = (9, 0)
#: Functions a kernel may call without defining them: the grid barrier (cudadevrt) and Numba's helpers.
EXPECTED_EXTERNS = re.compile(r"cudaCG\w+|numba_\w+")


def externs(ptx: str) -> list[str]:
    """Names of the functions ``ptx`` declares ``.extern`` (called, defined elsewhere)."""
    return re.findall(r"^\.extern \.func\s*(?:\([^)]*\))?\s*(\w+)", ptx, flags=re.M)


def assemble(ptxas: str, ptx: str) -> str:
    """``ptxas -arch=sm_90 -c -v`` on ``ptx`` (PTX version set to 9.0, which every CUDA 13 ptxas reads):
    its resource line, or its error."""
    ptx = re.sub(r"^\.version \d+\.\d+", ".version 9.0", ptx, flags=re.M)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        r = subprocess.run(
            [ptxas, "-arch=sm_90", "-c", "-v", src, "-o", os.path.join(tmp, "k.o")], capture_output=True, text=True
        )
    lines = (r.stdout + r.stderr).splitlines()
    if r.returncode != 0:
        return "ptxas FAILED: " + " ".join(lines)[-300:]
    return "; ".join(line.split("info    : ")[-1].strip() for line in lines if "registers" in line or "spill" in line)


# Device functions ask the current device for its compute capability; pretend we have an sm_90.
_dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=CC)


def main() -> int:
    from numba import cuda

    from mfscratch.kernels.records import (
        BlockLayout,
        EpochOut,
        Hyper,
        Moments,
        Ratings,
        Shape,
        Steps,
        Tables,
        YRange,
        split_flat,
        step_scalars,
    )

    f32, i32, i64 = np.float32, np.int32, np.int64
    shape, bs = Shape(5, 7, 3), 4
    params = np.zeros((shape.n_users + shape.n_items) * (shape.n_factors + 1), f32)
    tables: Tables = split_flat(params, shape)
    idx32 = np.zeros(bs, i32)
    batch = Ratings(idx32, idx32, np.zeros(bs, f32))
    moments = Moments(params, params)
    hyper = Hyper(True, True, 0.99, 1e-5, 0.01, True)
    sc = step_scalars(1e-3, 0.9, 3, hyper)
    y_range = YRange(0.0, 5.5, True)
    owners = ck.Owners(np.zeros(shape.n_users, i32), np.zeros(shape.n_items, i32))
    steps = Steps(np.zeros(bs, i64), bs, np.zeros(1), np.zeros(1), 0)
    epoch = (
        params,
        params,
        moments,
        shape,
        batch,
        steps,
        hyper,
        y_range,
        EpochOut(np.zeros(1), np.zeros(1, i64)),
        owners,
        32,
    )
    f16, u16, f64 = np.float16, np.uint16, np.float64
    n_params = params.shape[0]
    layout = BlockLayout(np.zeros(bs, i64), np.zeros(5, i64), 2)
    lrs, losses, stop = np.zeros(bs), np.zeros(bs), np.zeros(1, i32)
    per_rating = {}
    for suffix, dtype in (("", f32), ("", f16), ("", f64), ("_bf16", u16)):
        table = np.zeros(n_params, dtype)
        tag = suffix or f"[{np.dtype(dtype).name}]"
        stratum = (table, shape, batch, layout, 1, lrs, 0.05, y_range, losses, stop)
        hogwild = (table, shape, batch, np.zeros(bs, i64), lrs, 0.05, y_range, losses, stop, 3)
        per_rating[f"train_stratum_per_rating{tag}"] = (f"train_stratum_per_rating{suffix}", stratum)
        per_rating[f"train_epoch_per_rating_hogwild{tag}"] = (f"train_epoch_per_rating_hogwild{suffix}", hogwild)
        if dtype is not f32:
            per_rating[f"narrow_params{tag}"] = (f"narrow_params{suffix}", (params, table))
            per_rating[f"widen_params{tag}"] = (f"widen_params{suffix}", (table, params))
    calls = {
        "forward_backward": (tables, batch, y_range, tables, np.zeros(1)),
        "evaluate_mse": (tables, batch, y_range, np.zeros(1)),
        "adam_update_dense": (params, params, moments, sc, hyper),
        "sgd_update_dense": (params, params, params, sc, hyper),
        "mark_rows": (idx32, idx32, owners),
        "update_sparse": (params, params, moments, shape, idx32, idx32, owners, sc, hyper),
        "gather_rows": (batch, np.zeros(bs, i64), batch),
        "train_epoch_dense": epoch,
        "train_epoch_sparse": epoch,
    }
    jobs = {name: (name, args) for name, args in calls.items()} | per_rating
    ptxas = os.environ.get("PTXAS") or shutil.which("ptxas")
    failed = 0
    for name, (fn, args) in jobs.items():
        sig = tuple(typeof(a) for a in args)
        try:
            ptx, _ = cuda.compile_ptx(getattr(ck, fn).py_func, sig, cc=CC)
            unexpected = [e for e in externs(ptx) if not EXPECTED_EXTERNS.fullmatch(e)]
            if unexpected:
                failed += 1
                print(f"FAIL  {name}: calls undefined {', '.join(unexpected)}")
                continue
            print(f"ok    {name}: {len(ptx)} characters of PTX")
            if ptxas:
                print(f"      sm_90: {assemble(ptxas, ptx)}")
        except Exception as e:  # report every kernel, not just the first failure
            failed += 1
            print(f"FAIL  {name}: {type(e).__name__}: {str(e).strip().splitlines()[-1][:400]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
