"""One optimiser step (reference and compiled) against torch.optim and the contract's formulas."""

import sys

import numpy as np
import pytest
import torch

from mfscratch import reference
from mfscratch.kernels import cpu
from mfscratch.kernels.records import Hyper, step_scalars


def state(seed, n=50):
    rng = np.random.default_rng(seed)
    return rng.normal(size=n), rng.normal(size=n), np.abs(rng.normal(size=n)) * 0.1, rng.normal(size=n) * 0.1


def run_torch(opt_name, p0, grads_seq, lr, mom, wd, decouple_wd, sqr_mom=0.99, eps=1e-5):
    p = torch.tensor(p0, dtype=torch.float64, requires_grad=True)
    if opt_name == "adam":
        cls = torch.optim.AdamW if decouple_wd else torch.optim.Adam
        opt = cls([p], lr=lr, betas=(mom, sqr_mom), eps=eps, weight_decay=wd)
    else:
        opt = torch.optim.SGD([p], lr=lr, momentum=mom, weight_decay=0.0 if decouple_wd else wd)
    for g in grads_seq:
        p.grad = torch.tensor(g, dtype=torch.float64)
        if opt_name == "sgd" and decouple_wd:
            with torch.no_grad():
                p.mul_(1 - lr * wd)
        opt.step()
    return p.detach().numpy()


@pytest.mark.parametrize("decouple_wd", [True, False])
def test_adam_matches_torch(decouple_wd):
    p0, _, _, _ = state(0)
    grads = [state(s)[1] for s in range(1, 4)]
    lr, mom, wd = 3e-3, 0.9, 0.1
    want = run_torch("adam", p0, grads, lr, mom, wd, decouple_wd)
    # reference
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t, g in enumerate(grads, start=1):
        reference.adam_step(p, g, m, v, t, lr, mom, 0.99, 1e-5, wd, decouple_wd)
    np.testing.assert_allclose(p, want, rtol=1e-12, atol=1e-14)
    # compiled, dense over a flat buffer
    p2, m2, v2 = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t, g in enumerate(grads, start=1):
        cpu.adam_update_dense(
            p2, g.copy(), m2, v2, step_scalars(lr, mom, t, Hyper(True, True, 0.99, 1e-5, wd, decouple_wd))
        )
    np.testing.assert_allclose(p2, want, rtol=1e-12, atol=1e-14)


def test_adam_formula_written_out():
    """The contract's formula for one step, spelled out, with a non-default momentum."""
    p0, g, v0, m0 = state(7)
    lr, mom, sqr, eps, wd, t = 1e-2, 0.85, 0.99, 1e-5, 0.05, 4
    p = p0 * (1 - lr * wd)
    m = mom * m0 + (1 - mom) * g
    v = sqr * v0 + (1 - sqr) * g * g
    want = p - lr / (1 - mom**t) * m / (np.sqrt(v / (1 - sqr**t)) + eps)
    got, mm, vv = p0.copy(), m0.copy(), v0.copy()
    cpu.adam_update_dense(got, g.copy(), mm, vv, step_scalars(lr, mom, t, Hyper(True, True, sqr, eps, wd, True)))
    np.testing.assert_allclose(got, want, rtol=1e-13)
    np.testing.assert_allclose(mm, m, rtol=1e-13)
    np.testing.assert_allclose(vv, v, rtol=1e-13)


@pytest.mark.parametrize("decouple_wd", [True, False])
@pytest.mark.parametrize("mom", [0.0, 0.9])
def test_sgd_matches_torch(mom, decouple_wd):
    p0, _, _, _ = state(1)
    grads = [state(s)[1] for s in range(2, 5)]
    lr, wd = 5e-2, 0.1
    want = run_torch("sgd", p0, grads, lr, mom, wd, decouple_wd)
    p, buf = p0.copy(), np.zeros_like(p0)
    for g in grads:
        reference.sgd_step(p, g, buf, lr, mom, wd, decouple_wd)
    np.testing.assert_allclose(p, want, rtol=1e-12, atol=1e-14)
    p2, buf2 = p0.copy(), np.zeros_like(p0)
    for g in grads:
        sc = step_scalars(lr, mom, 1, Hyper(False, mom != 0.0, 0.0, 0.0, wd, decouple_wd))
        cpu.sgd_update_dense(p2, g.copy(), buf2, sc, mom != 0.0)
    np.testing.assert_allclose(p2, want, rtol=1e-12, atol=1e-14)


def test_float32_update_matches_float64_to_rounding():
    p0, g, v0, m0 = state(9)
    ref = p0.copy()
    sc = step_scalars(5e-3, 0.9, 3, Hyper(True, True, 0.99, 1e-5, 0.1, True))
    cpu.adam_update_dense(ref, g.copy(), m0.copy(), v0.copy(), sc)
    p32 = p0.astype(np.float32)
    cpu.adam_update_dense(p32, g.astype(np.float32), m0.astype(np.float32), v0.astype(np.float32), sc)
    np.testing.assert_allclose(p32, ref, rtol=1e-5, atol=1e-6)


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_zero_moments_hold_no_memory_until_written():
    """Plain SGD never reads its moments: zeroed moment tables of 2 x 64 MB add (almost) nothing to the RSS."""
    from mfscratch.optim import OptState

    params = np.ones(16 << 20, dtype=np.float32)
    before = _rss_bytes()
    state = OptState.zeros_like(params)
    grown = _rss_bytes() - before
    assert state.exp_avg.shape == state.exp_avg_sq.shape == params.shape
    assert state.exp_avg.dtype == state.exp_avg_sq.dtype == np.float32
    assert not state.exp_avg.any() and not state.exp_avg_sq.any() and state.step == 0
    assert grown < 16 << 20, f"the zero moments made {grown / 1e6:.0f} MB resident"
