"""The hand-written backward pass against torch autograd, in float64 (to 1e-10 relative)."""

import numpy as np
import pytest
import torch

from mfscratch import EmbeddingDotBias, reference
from mfscratch.kernels import cpu
from mfscratch.kernels.records import Shape, YRange

TABLES = reference.TABLES


def random_problem(seed, n_users=7, n_items=9, k=5, batch=12, scale=0.5):
    rng = np.random.default_rng(seed)
    tables = {
        "u_weight": rng.normal(scale=scale, size=(n_users, k)),
        "i_weight": rng.normal(scale=scale, size=(n_items, k)),
        "u_bias": rng.normal(scale=scale, size=(n_users, 1)),
        "i_bias": rng.normal(scale=scale, size=(n_items, 1)),
    }
    # Few users/items and a larger batch: rows repeat inside the batch, so gradients must accumulate.
    users = rng.integers(0, n_users, batch)
    items = rng.integers(0, n_items, batch)
    users[:3] = 2
    items[1:4] = 4
    ratings = rng.uniform(0.5, 5.0, batch)
    return tables, users, items, ratings


def torch_loss_and_grads(tables, users, items, ratings, y_range):
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in tables.items()}
    u, i = torch.as_tensor(users), torch.as_tensor(items)
    x = (t["u_weight"][u] * t["i_weight"][i]).sum(1) + t["u_bias"][u, 0] + t["i_bias"][i, 0]
    pred = x if y_range is None else torch.sigmoid(x) * (y_range[1] - y_range[0]) + y_range[0]
    loss = torch.nn.functional.mse_loss(pred, torch.as_tensor(ratings, dtype=torch.float64))
    loss.backward()
    return loss.item(), {k: v.grad.numpy() for k, v in t.items()}


def assert_close_rel(a, b, rtol=1e-10):
    scale = max(np.abs(b).max(), 1e-300)
    assert np.abs(a - b).max() <= rtol * scale, (np.abs(a - b).max(), scale)


@pytest.mark.parametrize("y_range", [None, (0.0, 5.5), (1.0, 5.0)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reference_matches_autograd(seed, y_range):
    tables, users, items, ratings = random_problem(seed)
    want_loss, want = torch_loss_and_grads(tables, users, items, ratings, y_range)
    loss, grads = reference.loss_and_grads(*(tables[k] for k in TABLES), users, items, ratings, y_range)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    for name in TABLES:
        assert grads[name].shape == tables[name].shape
        assert_close_rel(grads[name], want[name])


@pytest.mark.parametrize("y_range", [None, (0.0, 5.5)])
@pytest.mark.parametrize("seed", [3, 4])
def test_model_loss_and_grads_matches_autograd(seed, y_range):
    """``model.loss_and_grads`` runs the compiled kernel: it must agree with autograd too."""
    tables, users, items, ratings = random_problem(seed)
    params = np.concatenate([tables[k].ravel() for k in TABLES])
    model = EmbeddingDotBias(5, 7, 9, y_range=y_range, params=params)
    assert model.u_weight.weight.dtype == np.float64
    want_loss, want = torch_loss_and_grads(tables, users, items, ratings, y_range)
    loss, grads = model.loss_and_grads(users, items, ratings)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    for name in TABLES:
        assert_close_rel(grads[name], want[name])


def test_kernel_forward_matches_reference():
    tables, users, items, _ = random_problem(5)
    want, _, _ = reference.forward(*(tables[k] for k in TABLES), users, items, (0.0, 5.5))
    params = np.concatenate([tables[k].ravel() for k in TABLES])
    out = np.empty(len(users))
    cpu.predict(cpu.split_flat(params, Shape(7, 9, 5)), users, items, YRange(0.0, 5.5, True), out)
    np.testing.assert_allclose(out, want, rtol=1e-13)


def test_sigmoid_is_stable_for_large_logits():
    x = np.array([-1000.0, -30.0, 0.0, 30.0, 1000.0])
    s = reference.sigmoid(x)
    assert np.all(np.isfinite(s)) and s[0] == 0.0 and s[-1] == 1.0 and s[2] == 0.5
