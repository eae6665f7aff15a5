"""Using a trained model: the biggest learned biases and the nearest items by cosine similarity."""
from __future__ import annotations

import numpy as np

from .errors import ConfigError
from .model import EmbeddingDotBias

__all__ = ["top_biases", "cosine_neighbours"]


def top_biases(model: EmbeddingDotBias, vocab, n: int = 5, lowest: bool = False) -> list:
    """The ``n`` items with the highest (or lowest) learned bias, as ``(name, bias)`` pairs.

    Code 0 (``#na#``) is never listed.
    """
    bias = model.i_bias.weight[:, 0].astype(np.float64)
    codes = np.argsort(bias if lowest else -bias, kind="stable")
    codes = codes[codes != 0] if len(vocab) and vocab[0] == "#na#" else codes
    return [(vocab[c], float(bias[c])) for c in codes[:n]]


def cosine_neighbours(model: EmbeddingDotBias, vocab, name, n: int = 1) -> list:
    """The ``n`` items whose embeddings are closest to ``name``'s by cosine similarity (itself excluded)."""
    code = vocab.o2i.get(name) if hasattr(vocab.o2i, "get") else None
    if code is None or code == 0:
        raise ConfigError(f"item {name!r} is not in the vocabulary; check the spelling (titles include the year)")
    q = model.i_weight.weight.astype(np.float64)
    norms = np.linalg.norm(q, axis=1)
    sims = q @ q[code] / np.maximum(norms * norms[code], 1e-12)
    sims[code] = -np.inf
    if len(vocab) and vocab[0] == "#na#":
        sims[0] = -np.inf
    best = np.argsort(-sims, kind="stable")[:n]
    return [(vocab[c], float(sims[c])) for c in best]
