"""The PyTorch reference loop: the same model and recipe written with ``torch.nn.Embedding``, autograd and
``torch.optim``, which mfscratch is checked against (trajectory tests) and timed against (``mfscratch bench``).

torch is imported inside the functions, never when this module or ``mfscratch`` is imported: it is
an optional dependency (``pip install 'mfscratch[test]'`` or ``pip install torch``), and the
library never needs it. :func:`available` says whether it can run here.

The loop: ``torch.nn.Embedding`` tables (dense gradients, so every row is updated every step),
the dot-bias forward, ``MSELoss``, and ``torch.optim.AdamW`` (decoupled decay), ``Adam`` (L2) or
``SGD`` (decoupled decay applied by hand, as fastai does), with the per-step learning rate and
momentum written into the parameter group before each step.
"""

from __future__ import annotations

import functools
import importlib.util
import time

import numpy as np

__all__ = ["available", "DotBias", "make_optimizer", "train_steps", "evaluate", "fit_one_cycle", "TABLES"]

TABLES = ("u_weight", "i_weight", "u_bias", "i_bias")


def available() -> str | None:
    """``None`` when the loop can run here, else why not (one line, with the fix)."""
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (pip install torch, or pip install 'mfscratch[test]')"
    return None


@functools.cache
def _dot_bias_class():
    import torch

    class DotBias(torch.nn.Module):
        """The biased dot-product model in PyTorch, from the given starting tables."""

        def __init__(self, tables: dict, y_range=None, dtype=torch.float32):
            super().__init__()
            for name in TABLES:
                w = torch.tensor(np.asarray(tables[name]), dtype=dtype)
                setattr(self, name, torch.nn.Embedding(w.shape[0], w.shape[1], _weight=w.clone()))
            self.y_range = y_range

        def forward(self, users, items):
            x = (
                (self.u_weight(users) * self.i_weight(items)).sum(1)
                + self.u_bias(users)[:, 0]
                + self.i_bias(items)[:, 0]
            )
            if self.y_range is None:
                return x
            lo, hi = self.y_range
            return torch.sigmoid(x) * (hi - lo) + lo

        def tables(self) -> dict:
            return {name: getattr(self, name).weight.detach().numpy().copy() for name in TABLES}

    return DotBias


def DotBias(tables: dict, y_range=None, **kwargs):
    """A ``DotBias`` module (a ``torch.nn.Module`` subclass, made when first asked for) from ``tables``."""
    return _dot_bias_class()(tables, y_range, **kwargs)


def make_optimizer(model, opt="adam", wd=0.0, decouple_wd=True, mom=0.9, sqr_mom=0.99, eps=1e-5):
    import torch

    params = list(model.parameters())
    if opt == "adam":
        cls = torch.optim.AdamW if decouple_wd else torch.optim.Adam
        return cls(params, lr=1e-3, betas=(mom, sqr_mom), eps=eps, weight_decay=wd)
    # fastai's SGD: momentum buffer without dampening; decoupled decay is applied by hand in train_steps.
    return torch.optim.SGD(params, lr=1e-3, momentum=mom, weight_decay=0.0 if decouple_wd else wd)


def train_steps(
    model, optimizer, users, items, ratings, order, bs, lrs, moms, opt="adam", wd=0.0, decouple_wd=True, use_mom=True
):
    """Run ``len(lrs)`` steps on the batches ``order[s*bs:(s+1)*bs]`` and return the batch losses."""
    import torch

    users_t = torch.as_tensor(np.asarray(users, dtype=np.int64))
    items_t = torch.as_tensor(np.asarray(items, dtype=np.int64))
    dtype = next(model.parameters()).dtype
    ratings_t = torch.as_tensor(np.asarray(ratings)).to(dtype)
    order_t = torch.as_tensor(np.asarray(order, dtype=np.int64))
    loss_fn = torch.nn.MSELoss()
    losses = np.empty(len(lrs))
    group = optimizer.param_groups[0]
    for s in range(len(lrs)):
        idx = order_t[s * bs : (s + 1) * bs]
        group["lr"] = float(lrs[s])
        if opt == "adam":
            group["betas"] = (float(moms[s]), group["betas"][1])
        elif use_mom:
            group["momentum"] = float(moms[s])
        else:
            group["momentum"] = 0.0
        optimizer.zero_grad(set_to_none=False)
        loss = loss_fn(model(users_t[idx], items_t[idx]), ratings_t[idx])
        loss.backward()
        if opt != "adam" and decouple_wd and wd:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1.0 - float(lrs[s]) * wd)
        optimizer.step()
        losses[s] = loss.item()
    return losses


def evaluate(model, users, items, ratings) -> float:
    import torch

    with torch.no_grad():
        pred = model(
            torch.as_tensor(np.asarray(users, dtype=np.int64)), torch.as_tensor(np.asarray(items, dtype=np.int64))
        )
        return float(((pred.double() - torch.as_tensor(np.asarray(ratings, dtype=np.float64))) ** 2).mean())


def fit_one_cycle(dls, tables: dict, y_range, epochs, lrs, moms, wd, seed=0, threads=None):
    """The seed recipe in PyTorch on ``dls``'s split, from ``tables``; returns per-epoch stats.

    ``lrs``/``moms`` are the per-step schedule (``mfscratch.schedule.one_cycle``); each epoch draws a
    fresh permutation from ``np.random.default_rng(seed)``.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    model = DotBias(tables, y_range)
    optimizer = make_optimizer(model, "adam", wd=wd)
    rng = np.random.default_rng(seed)
    steps = dls.n_train // dls.bs
    out = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        order = rng.permutation(dls.n_train)
        sl = slice(epoch * steps, (epoch + 1) * steps)
        losses = train_steps(
            model,
            optimizer,
            dls.train_users,
            dls.train_items,
            dls.train_ratings,
            order,
            dls.bs,
            lrs[sl],
            moms[sl],
            "adam",
            wd,
        )
        seconds = time.perf_counter() - t0
        out.append(
            {
                "seconds": seconds,
                "last_loss": float(losses[-1]),
                "valid_mse": evaluate(model, dls.valid_users, dls.valid_items, dls.valid_ratings),
            }
        )
    return out, model
