"""fastai's one-cycle values at the first, middle and last step, against the contract's formula."""

import math

import numpy as np
import pytest

from mfscratch import schedule


def cos(start, end, pos):
    return start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2


def contract(b, total, lr_max, div=25.0, div_final=1e5, pct=0.25, moms=(0.95, 0.85, 0.95)):
    pos = b / total
    if pos < pct:
        return cos(lr_max / div, lr_max, pos / pct), cos(moms[0], moms[1], pos / pct)
    p = (pos - pct) / (1 - pct)
    return cos(lr_max, lr_max / div_final, p), cos(moms[1], moms[2], p)


@pytest.mark.parametrize("total", [6250, 17])
def test_one_cycle_matches_contract(total):
    lrs, moms = schedule.one_cycle(total, 5e-3)
    for b in (0, total // 4, total // 2, total - 1):
        want_lr, want_mom = contract(b, total, 5e-3)
        assert lrs[b] == pytest.approx(want_lr, rel=1e-12)
        assert moms[b] == pytest.approx(want_mom, rel=1e-12)


def test_first_step_is_lr_max_over_div_and_mom_095():
    lrs, moms = schedule.one_cycle(6250, 5e-3)
    assert lrs[0] == pytest.approx(5e-3 / 25) and moms[0] == pytest.approx(0.95)
    peak = math.ceil(0.25 * 6250)  # the first step at pos >= pct_start
    assert lrs[peak] == pytest.approx(5e-3, rel=1e-6) and moms[peak] == pytest.approx(0.85, rel=1e-6)
    assert np.argmax(lrs) == peak and lrs[-1] < 5e-3 / 1e4


def test_constant():
    lrs, moms = schedule.constant(10, 1e-2, 0.9)
    assert np.all(lrs == 1e-2) and np.all(moms == 0.9)


@pytest.mark.parametrize(
    "fn",
    [
        lambda n, a=0, b=None: schedule.one_cycle(n, 5e-3, start=a, stop=b),
        lambda n, a=0, b=None: schedule.constant(n, 1e-2, 0.9, a, b),
    ],
)
def test_a_slice_of_the_schedule_is_the_same_steps_of_the_whole(fn):
    """The learner asks for one epoch's steps at a time: the same bits as slicing the whole schedule."""
    total = 1250 * 5 + 3
    whole = fn(total)
    for a, b in [(0, 1250), (1250, 2500), (3, 4), (4999, total), (17, 1289)]:
        part = fn(total, a, b)
        for got, want in zip(part, whole):
            np.testing.assert_array_equal(got, want[a:b])
