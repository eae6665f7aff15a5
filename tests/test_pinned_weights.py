"""Same seed, same weights, bit for bit: a short fit of every deterministic mode and backend, pinned by hash.

Each case trains a small synthetic problem for two epochs and compares the SHA-256 of the final flat
parameter buffer with the value recorded here. A change that moves any of these weights, even by one
float32 ulp, fails this test: refactors must keep them; a change that alters the numbers on purpose
re-pins the hash and says why in its commit message.

The hashes hold for the CPUs they were recorded on (LLVM's code for the host CPU decides the
rounding of the vectorised dot products; AMD Zen 4 and Intel Emerald Rapids, both AVX-512, give the
same bytes), so the test runs where the host CPU is one of those and the parallel cases with two
Numba threads. Hogwild (parallel sparse mode with batches > 1) is not
deterministic and is not pinned.
"""

from __future__ import annotations

import hashlib

import numba
import numpy as np
import pytest
from conftest import make_ratings
from llvmlite import binding

from mfscratch import SGD, Adam, CollabDataLoaders, collab_learner
from mfscratch.backends import CpuBackend, ParallelBackend

pytestmark = pytest.mark.filterwarnings("ignore::mfscratch.DataWarning")

#: the host CPUs (LLVM names) on which these hashes were recorded
PINNED_CPUS = ("znver4", "emeraldrapids")

#: case -> (backend, settings); sparse=True with SGD and bs 1 is per-rating SGD
CASES = {
    "cpu-exact-adam": ("cpu", {}),
    "cpu-exact-adam-dense": ("cpu", {"defer_rows": False}),
    "cpu-exact-adam-l2": ("cpu", {"opt": Adam(decouple_wd=False)}),
    "cpu-exact-sgd-mom": ("cpu", {"opt": SGD(mom=0.9)}),
    "cpu-exact-sgd-mom-fit": ("cpu", {"opt": SGD(mom=0.9), "fit": True}),
    "cpu-sparse-adam": ("cpu", {"sparse": True}),
    "cpu-sparse-sgd-mom": ("cpu", {"sparse": True, "opt": SGD(mom=0.9)}),
    "cpu-per-rating": ("cpu", {"sparse": True, "opt": SGD(), "bs": 1}),
    "parallel-exact-adam-dense": ("parallel", {"big": True}),
    "parallel-per-rating": ("parallel", {"sparse": True, "opt": SGD(), "bs": 1}),
}

#: case -> sha256 of the final params (float32 bytes)
PINNED = {
    "cpu-exact-adam": "c4971a797243598c11b0af1a858d82fe237d53c080160107dd9a5787024c7122",
    "cpu-exact-adam-dense": "8383f8162bbd4479d7f8668763b80bdb8020d9824ed9524f43ffc889c962a27b",
    "cpu-exact-adam-l2": "8af9c4d65846bee77c1cda714bf041fad54a16feea44c6cefe2efd4d8ec9d403",
    "cpu-exact-sgd-mom": "5b7325353f55bcf24026bdb985de056b56b48147adb9c1e8dc0ab8f2d0eb141c",
    "cpu-exact-sgd-mom-fit": "32d1251b1343a2c87383c0e078bf6ed2115541cf3f72363b13d985b43e3df4e4",
    "cpu-sparse-adam": "9440e933f2076d9f132d1272f219318f95b50574c9fbb5f8cc1739c0f34cdb7d",
    "cpu-sparse-sgd-mom": "7e2e812b7df5541f62234b69efa757f97a39f1f52222c900125eb7db4c7b2c97",
    "cpu-per-rating": "4bc1c9807c3060b124668d63e70b1a45e195eac3c72f4d3fc13b1fb87550a105",
    "parallel-exact-adam-dense": "3648b6c6ff99cdc6610fd899fbe0a6931dfe5b3122ad6f34dfa22f2e2d440a03",
    "parallel-per-rating": "c06e0a7064c328a894154b46137193001be4d00833a814f10449da3435d4e2eb",
}


def _fit(case: str, monkeypatch) -> np.ndarray:
    backend, settings = CASES[case]
    if settings.get("big"):
        # over 1M parameters, and the parallel backend told to split the dense update at any size
        df = make_ratings(n_users=6000, n_items=4000, n_ratings=6000, seed=3)
        monkeypatch.setattr(ParallelBackend, "min_parallel_params", 0)
        n_factors = 50
    else:
        df = make_ratings(n_users=60, n_items=80, n_ratings=3000, seed=3)
        n_factors = 12
    if "defer_rows" in settings:
        monkeypatch.setattr(CpuBackend, "defer_rows", settings["defer_rows"])
    bs = settings.get("bs", 32)
    dls = CollabDataLoaders.from_df(df, valid_pct=0.2, seed=5, bs=bs)
    learn = collab_learner(
        dls,
        n_factors=n_factors,
        y_range=(0, 5.5),
        opt_func=settings.get("opt", Adam()),
        seed=7,
        sparse=settings.get("sparse", False),
        backend=backend,
        log=None,
    )
    if settings.get("fit"):
        learn.fit(2, 1e-3, wd=0.05)
    else:
        learn.fit_one_cycle(2, 0.02 if bs == 1 else 5e-3, wd=0.05)
    return learn.model.params


@pytest.mark.parametrize("case", sorted(PINNED))
def test_pinned_weights(case, monkeypatch):
    if binding.get_host_cpu_name() not in PINNED_CPUS:
        pytest.skip(f"hashes pinned on {' and '.join(PINNED_CPUS)} CPUs; this one is {binding.get_host_cpu_name()}")
    if case.startswith("parallel"):
        if numba.config.NUMBA_NUM_THREADS < 2:
            pytest.skip("the parallel cases are pinned with two Numba threads")
        before = numba.get_num_threads()
        numba.set_num_threads(2)
        try:
            params = _fit(case, monkeypatch)
        finally:
            numba.set_num_threads(before)
    else:
        params = _fit(case, monkeypatch)
    assert params.dtype == np.float32
    assert hashlib.sha256(params.tobytes()).hexdigest() == PINNED[case]
