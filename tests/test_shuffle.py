"""kernels.shuffle: NumPy's Generator.shuffle, compiled with prefetched swaps: the same order, the same state."""

from __future__ import annotations

import numpy as np
import pytest

from mfscratch.kernels.shuffle import AHEAD, shuffle


@pytest.mark.parametrize("n", [0, 1, 2, 3, AHEAD - 1, AHEAD, AHEAD + 1, 1000, 65_537, 300_001])
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32])
@pytest.mark.parametrize("seed", [0, 42])
def test_shuffle_equals_numpy_and_leaves_the_same_state(n, dtype, seed):
    want, got = np.arange(n, dtype=dtype), np.arange(n, dtype=dtype)
    rng_want, rng_got = np.random.default_rng(seed), np.random.default_rng(seed)
    rng_want.random(3)  # a generator part-way through its stream, a buffered 32-bit half included
    rng_want.integers(0, 10, dtype=np.int32)
    rng_got.random(3)
    rng_got.integers(0, 10, dtype=np.int32)
    rng_want.shuffle(want)
    shuffle(rng_got, got)
    assert want.tobytes() == got.tobytes()
    assert rng_want.bit_generator.state == rng_got.bit_generator.state


def test_shuffle_falls_back_to_numpy_for_other_arrays():
    want = np.arange(40, dtype=np.int64).reshape(20, 2)
    got = want.copy()
    np.random.default_rng(3).shuffle(want)
    shuffle(np.random.default_rng(3), got)  # 2-D: rows shuffled, as NumPy does
    assert np.array_equal(want, got)
    strided_want = np.arange(40)[::2].copy()
    base = np.arange(40)
    np.random.default_rng(4).shuffle(strided_want)
    shuffle(np.random.default_rng(4), base[::2])  # a strided view
    assert np.array_equal(strided_want, base[::2])
