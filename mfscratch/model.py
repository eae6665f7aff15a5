"""The model: four tables in one flat buffer, fastai's init, predictions, loss and gradients, save/load.

``EmbeddingDotBias`` mirrors fastai's module of the same name: ``model.u_weight.weight`` is the
``(n_users, k)`` user table, ``model.i_bias.weight`` the ``(n_items, 1)`` item biases, and so on.
All four tables are views into one contiguous array ``model.params`` laid out as
``u_weight | i_weight | u_bias | i_bias``; optimiser state and gradients share that layout, which
turns every dense optimiser step into one loop over one array.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import reference
from .errors import ConfigError
from .kernels import cpu
from .kernels.records import Ratings, Shape, Tables, YRange, y_range_of
from .seeding import seed_or_drawn

__all__ = ["Embedding", "EmbeddingDotBias", "table_shapes", "init_params", "aligned_empty"]


class Embedding:
    """A table of vectors: ``weight`` is a NumPy array ``(num_embeddings, embedding_dim)``."""

    def __init__(self, weight: np.ndarray):
        self.weight = weight

    @property
    def num_embeddings(self) -> int:
        return self.weight.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.weight.shape[1]

    def __repr__(self) -> str:
        return f"Embedding({self.num_embeddings}, {self.embedding_dim})"


def table_shapes(n_users: int, n_items: int, n_factors: int) -> dict[str, tuple[int, int]]:
    """Shapes of the four tables, in storage order."""
    return {
        "u_weight": (n_users, n_factors),
        "i_weight": (n_items, n_factors),
        "u_bias": (n_users, 1),
        "i_bias": (n_items, 1),
    }


#: Normal draws :func:`init_params` makes at a time (8 MB of float64).
_INIT_CHUNK = 1 << 20


#: The flat buffer starts on a 64-byte boundary (a cache line): rows of 16 float32 multiples (k = 64)
#: then lie on whole cache lines, and the kernels' 16-lane loads never straddle two (NumPy's own large
#: allocations start 16 bytes past a page; aligned, ML-25M's per-rating epoch is about 6% faster).
PARAMS_ALIGN = 64


def aligned_empty(n: int, dtype=np.float32) -> np.ndarray:
    """An uninitialised 1-D array of ``n`` elements whose data starts on a :data:`PARAMS_ALIGN` boundary."""
    dtype = np.dtype(dtype)
    buf = np.empty(n * dtype.itemsize + PARAMS_ALIGN, dtype=np.uint8)
    start = -buf.ctypes.data % PARAMS_ALIGN
    return buf[start : start + n * dtype.itemsize].view(dtype)


def init_params(n_users: int, n_items: int, n_factors: int, rng: np.random.Generator, dtype=np.float32):
    """fastai's ``trunc_normal_(std=0.01)``: ``fmod(N(0, 1), 2) * 0.01``, table by table, in storage order.

    The draws are made, folded and scaled in float64 a chunk at a time and written straight into the flat
    ``dtype`` array: the same stream and the same values as drawing each table at once, without holding the
    tables in float64 (three times the parameters' bytes at float32).
    """
    n = sum(r * c for r, c in table_shapes(n_users, n_items, n_factors).values())
    params = aligned_empty(n, dtype)
    z = np.empty(min(_INIT_CHUNK, n), dtype=np.float64)
    for start in range(0, n, _INIT_CHUNK):
        draws = z[: min(_INIT_CHUNK, n - start)]
        rng.standard_normal(out=draws)
        if params.dtype in (np.float32, np.float64):
            _fold_and_scale(draws, params[start : start + len(draws)])
        else:  # float16 storage (the half-precision kernels): the same steps in NumPy
            np.fmod(draws, 2.0, out=draws)
            draws *= 0.01
            params[start : start + len(draws)] = draws
    return params


@njit(cache=True)
def _fold_and_scale(z, out):
    """``out[j] = fmod(z[j], 2) * 0.01``, rounded to ``out``'s dtype: NumPy's ``np.fmod(z, 2.0) * 0.01``
    assigned into ``out``, bit for bit, in one pass (``fmod`` is exact, and the identity below 2)."""
    for j in range(z.shape[0]):
        v = z[j]
        if not -2.0 < v < 2.0:
            v = np.fmod(v, 2.0)
        out[j] = v * 0.01


class EmbeddingDotBias:
    """``pred = lo + (hi - lo) * sigmoid(u_weight[u] . i_weight[i] + u_bias[u] + i_bias[i])``.

    Parameters follow fastai: ``EmbeddingDotBias(n_factors, n_users, n_items, y_range=None)``;
    ``seed`` fixes the initial weights, ``dtype`` is float32 for training (float64 is handy for
    checking gradients), and ``params`` adopts an existing flat buffer instead of initialising.
    """

    # The four tables, views of ``params`` bound by ``_bind_tables`` (fastai's attribute names).
    u_weight: Embedding
    i_weight: Embedding
    u_bias: Embedding
    i_bias: Embedding

    def __init__(
        self,
        n_factors: int,
        n_users: int,
        n_items: int,
        y_range=None,
        seed=None,
        dtype=np.float32,
        params: np.ndarray | None = None,
    ):
        for name, value in (("n_factors", n_factors), ("n_users", n_users), ("n_items", n_items)):
            if int(value) != value or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if y_range is not None:
            lo, hi = (float(v) for v in y_range)
            if not lo < hi:
                raise ConfigError(f"y_range must have lo < hi, got ({lo}, {hi})")
            y_range = (lo, hi)
        self.n_factors, self.n_users, self.n_items = int(n_factors), int(n_users), int(n_items)
        self.y_range = y_range
        size = self.n_params_for(self.n_users, self.n_items, self.n_factors)
        if params is None:
            params = init_params(
                self.n_users, self.n_items, self.n_factors, np.random.default_rng(seed_or_drawn(seed)), dtype
            )
        elif params.shape != (size,):
            raise ConfigError(f"params has shape {params.shape}, expected ({size},)")
        self.params = np.ascontiguousarray(params)
        self._bind_tables()

    @staticmethod
    def n_params_for(n_users: int, n_items: int, n_factors: int) -> int:
        return (n_users + n_items) * (n_factors + 1)

    def _bind_tables(self) -> None:
        offset = 0
        for name, (rows, cols) in table_shapes(self.n_users, self.n_items, self.n_factors).items():
            view = self.params[offset : offset + rows * cols].reshape(rows, cols)
            setattr(self, name, Embedding(view))
            offset += rows * cols

    # --- views for the kernels -------------------------------------------------------------
    @property
    def dtype(self):
        return self.params.dtype

    @property
    def shape(self) -> Shape:
        """The table sizes as the kernels take them (``records.Shape``)."""
        return Shape(self.n_users, self.n_items, self.n_factors)

    @property
    def y_range_record(self) -> YRange:
        """``y_range`` as the kernels take it (``records.YRange``: ``lo, hi, has_range``)."""
        return y_range_of(self.y_range)

    def kernel_tables(self, params: np.ndarray | None = None) -> Tables:
        """``Tables(u_weight, i_weight, u_bias, i_bias)`` with the biases as 1-D vectors (views, no copies)."""
        return cpu.split_flat(self.params if params is None else params, self.shape)

    def tables(self) -> dict[str, np.ndarray]:
        """The four tables by name (views into ``params``)."""
        return {name: getattr(self, name).weight for name in reference.TABLES}

    # --- maths -----------------------------------------------------------------------------
    def _batch(self, users, items, ratings=None):
        users = np.ascontiguousarray(users, dtype=np.int64)
        items = np.ascontiguousarray(items, dtype=np.int64)
        if users.shape != items.shape or users.ndim != 1:
            raise ConfigError(
                f"users and items must be 1-D arrays of the same length, got {users.shape} and {items.shape}"
            )
        for name, idx, n in (("user", users, self.n_users), ("item", items, self.n_items)):
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ConfigError(f"{name} codes must lie in [0, {n}); got values from {idx.min()} to {idx.max()}")
        if ratings is None:
            return users, items
        ratings = np.ascontiguousarray(ratings, dtype=self.dtype)
        if ratings.shape != users.shape:
            raise ConfigError(f"ratings has shape {ratings.shape}, expected {users.shape}")
        return users, items, ratings

    def forward(self, users, items) -> np.ndarray:
        """Predicted ratings for the code pairs ``(users[r], items[r])``."""
        users, items = self._batch(users, items)
        out = np.empty(users.shape[0], dtype=self.dtype)
        return cpu.predict(self.kernel_tables(), users, items, self.y_range_record, out)

    __call__ = forward

    def loss_and_grads(self, users, items, ratings):
        """Mean squared error of these rows under the current weights, and its gradient.

        Runs the hand-written backward kernel (``kernels.cpu.forward_backward``) and returns
        ``(loss, grads)`` with ``grads[name]`` shaped like table ``name``.
        """
        users, items, ratings = self._batch(users, items, ratings)
        grads = np.zeros_like(self.params)
        batch = Ratings(users, items, ratings)
        loss = cpu.forward_backward(self.kernel_tables(), batch, self.y_range_record, self.kernel_tables(grads))
        out, offset = {}, 0
        for name, (rows, cols) in table_shapes(self.n_users, self.n_items, self.n_factors).items():
            out[name] = grads[offset : offset + rows * cols].reshape(rows, cols)
            offset += rows * cols
        return float(loss), out

    def __repr__(self) -> str:
        lines = [f"  ({name}): {getattr(self, name)!r}" for name in reference.TABLES]
        return "EmbeddingDotBias(\n" + "\n".join(lines) + "\n)"
