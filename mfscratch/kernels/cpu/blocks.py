"""Per-rating SGD's blocks: user and item groups, strata, the block layout, shuffles and the in-place sort.

Users and items are split into ``g`` groups (:func:`balanced_groups`); block ``(c, d)`` holds the
ratings of user group ``c`` and item group ``d``, and stratum ``t`` is the blocks ``(c, (c + t) % g)``
for every ``c``: they share no user and no item, so threads can train them at once (the stratified
SGD of DSGD and LIBMF). Blocks are laid out stratum by stratum: block ``(c, (c + t) % g)`` is the
``t * g + c``-th. Groups, blocks and strata are described with the records ``Groups`` and ``BlockLayout``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..pairs import chunk_places, chunk_range
from ._compile import twin

__all__ = [
    "balanced_groups",
    "block_index",
    "block_layout",
    "block_ordered",
    "shuffle_block",
    "shuffle_blocks",
    "shuffle_blocks_parallel",
    "sort_by_block",
]


@njit(cache=True)
def balanced_groups(codes, n_codes, n_groups):
    """``group[code]`` for ``n_groups`` contiguous code ranges holding about equal numbers of ``codes``.

    Contiguous, so that a group's rows are one stretch of the table (cache- and TLB-friendly); cut at
    equal shares of the ratings, not of the codes, because in real data the codes follow the popularity
    (equal code ranges leave one thread most of the ratings: docs/speed.md).
    """
    counts = np.zeros(n_codes, dtype=np.int64)
    for s in range(codes.shape[0]):
        counts[codes[s]] += 1
    group = np.empty(n_codes, dtype=np.int32)
    total, seen = codes.shape[0], 0
    for code in range(n_codes):
        # the group of the code's middle rating, so that a code heavier than a share is not split off late
        group[code] = min(n_groups - 1, (seen + counts[code] // 2) * n_groups // max(total, 1))
        seen += counts[code]
    return group


@njit(cache=True)
def _stratum_positions(g):
    """``position[c * g + d]``: where block ``(c, d)`` sits stratum-major: ``t * g + c`` for ``d = (c + t) % g``."""
    position = np.empty(g * g, dtype=np.int64)
    for t in range(g):
        for c in range(g):
            position[c * g + (c + t) % g] = t * g + c
    return position


@njit(cache=True)
def _block_counts(data, groups, position):
    """``block_start`` (``g * g + 1`` entries) of the ratings of ``data`` laid out by block."""
    g = groups.n_groups
    block_start = np.zeros(g * g + 1, dtype=np.int64)
    for r in range(data.users.shape[0]):
        block_start[position[groups.user_group[data.users[r]] * g + groups.item_group[data.items[r]]] + 1] += 1
    for p in range(g * g):
        block_start[p + 1] += block_start[p]
    return block_start


@njit(cache=True)
def block_index(data, groups, block):
    """Each rating's place in the block layout into ``block``; returns the full layout's ``block_start``.

    ``block[r]`` is the stratum-major position of rating ``r``'s block; ``block_start[p]`` is where the
    ``p``-th block starts when all the ratings are laid out (:func:`block_layout`), the last entry the
    number of ratings. Made once a fit: the training set does not change between epochs. ``block`` may
    be any integer dtype holding ``n_groups**2`` (uint16 at 25M ratings: 50 MB).
    """
    g = groups.n_groups
    position = _stratum_positions(g)
    for r in range(data.users.shape[0]):
        block[r] = position[groups.user_group[data.users[r]] * g + groups.item_group[data.items[r]]]
    return _block_counts(data, groups, position)


@njit(cache=True, parallel=True)
def block_ordered(data, groups, out, n_chunks=1):
    """The ratings of ``data`` stored block by block into ``out`` (a ``Ratings`` of arrays as long);
    returns the layout's ``block_start``.

    ``out``'s ``p``-th block, ``block_start[p]..block_start[p + 1] - 1``, holds the ratings of the
    ``p``-th block (stratum-major) in their order in ``data``: ``out[s] = data[canonical[s]]`` for the
    ``canonical`` that :func:`block_index` and :func:`block_layout` make, without making it (a counting
    sort whose blocks come from the groups' tables as it goes: no array of a block or a row per rating).
    The ratings go in ``n_chunks`` equal chunks of rows, one a thread: each counts its blocks, then
    writes its ratings after those of the chunks before it, so each block keeps the rows' order.
    """
    g = groups.n_groups
    position = _stratum_positions(g)
    users, items, ratings = data
    out_users, out_items, out_ratings = out
    user_group, item_group = groups.user_group, groups.item_group
    n = users.shape[0]
    fill = np.zeros((n_chunks, g * g), dtype=np.int64)
    for c in prange(n_chunks):
        first, last = chunk_range(c, n_chunks, n)
        for r in range(first, last):
            fill[c, position[user_group[users[r]] * g + item_group[items[r]]]] += 1
    block_start = np.empty(g * g + 1, dtype=np.int64)
    chunk_places(fill, block_start)  # chunk c's first rating of block p: the blocks before, then the chunks before
    for c in prange(n_chunks):
        first, last = chunk_range(c, n_chunks, n)
        for r in range(first, last):
            p = position[user_group[users[r]] * g + item_group[items[r]]]
            at = fill[c, p]
            out_users[at] = users[r]
            out_items[at] = items[r]
            out_ratings[at] = ratings[r]
            fill[c, p] = at + 1
    return block_start


@njit(cache=True)
def block_layout(order, block, n_blocks, blocked):
    """``order`` sorted by block (``block[order[s]]``), stably, into ``blocked``; returns ``block_start``.

    Each block keeps ``order``'s order (a counting sort); the ``p``-th block is
    ``blocked[block_start[p]:block_start[p + 1]]``; ``blocked`` must not overlap ``order``. An empty
    ``order`` stands for all the ratings, ``0..n-1`` (no permutation array needed at 25M ratings).
    """
    n = block.shape[0] if order.shape[0] == 0 else order.shape[0]
    block_start = np.zeros(n_blocks + 1, dtype=np.int64)
    for s in range(n):
        block_start[block[s if order.shape[0] == 0 else order[s]] + 1] += 1
    for p in range(n_blocks):
        block_start[p + 1] += block_start[p]
    fill = block_start[:-1].copy()
    for s in range(n):
        row = s if order.shape[0] == 0 else order[s]
        p = block[row]
        blocked[fill[p]] = row
        fill[p] += 1
    return block_start


_GOLDEN_GAMMA = 0x9E3779B97F4A7C15  # splitmix64's step


@njit(cache=True, inline="always")
def _mix64(z):
    """splitmix64's output function: 64 random bits from the state ``z``."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, inline="always")
def _splitmix64(state):
    """One step of splitmix64 (Steele, Lea, Flood 2014): ``(new_state, 64 random bits)``."""
    state = state + np.uint64(_GOLDEN_GAMMA)
    return state, _mix64(state)


#: Draws :func:`shuffle_block` makes at a time before their swaps (a vectorised loop; 512 bytes).
SHUFFLE_DRAWS = 64


@njit(cache=True, inline="always")
def shuffle_block(blocked, first, last, p, seed):
    """Shuffle ``blocked[first:last]`` in place (Fisher-Yates) as block ``p`` of :func:`shuffle_blocks`.

    Block ``p`` draws from its own splitmix64 stream, started from ``seed`` and ``p``, so the result
    depends on ``seed`` and ``p`` only. Each draw is a 53-bit uniform scaled to the range (a bias
    below 2^-30 at 80k ratings a block, and no division).

    The ``n``-th draw of a splitmix64 stream is a function of ``state + n gamma`` alone, so the draws are
    made :data:`SHUFFLE_DRAWS` at a time in a loop that LLVM vectorises, and the swaps then take them in
    turn: the same draws, the same swaps, as one draw a swap.
    """
    state, _ = _splitmix64(np.uint64(seed) ^ (np.uint64(p) * np.uint64(0xD1B54A32D192ED03)))
    draws = np.empty(SHUFFLE_DRAWS, dtype=np.int64)
    n_swaps = last - 1 - first  # positions last-1 down to first+1
    for c in range(0, n_swaps, SHUFFLE_DRAWS):
        m = min(SHUFFLE_DRAWS, n_swaps - c)
        for t in range(m):
            bits = _mix64(state + np.uint64(c + t + 1) * np.uint64(_GOLDEN_GAMMA))
            size = last - c - t - first  # s - first + 1 for s = last - 1 - (c + t)
            draws[t] = first + np.int64((bits >> np.uint64(11)) * (1.0 / 9007199254740992.0) * size)
        for t in range(m):
            s = last - 1 - (c + t)
            j = draws[t]
            blocked[s], blocked[j] = blocked[j], blocked[s]


def _shuffle_blocks_body(blocked, block_start, seed):
    """Shuffle each block of ``blocked`` in place (:func:`shuffle_block`), the blocks on the Numba threads.

    The result depends on ``seed`` only, not on the thread count or timing.
    """
    for p in prange(block_start.shape[0] - 1):
        shuffle_block(blocked, block_start[p], block_start[p + 1], p, seed)


shuffle_blocks = njit(cache=True)(_shuffle_blocks_body)
shuffle_blocks_parallel = njit(parallel=True, cache=True)(twin(_shuffle_blocks_body))


@njit(cache=True)
def sort_by_block(data, groups):
    """Reorder the ``Ratings`` record ``data`` **in place** into the block layout; returns ``block_start``.

    The same blocks, in the same stratum-major layout, as :func:`block_index` (whose ``block_start``
    this equals), but the ratings themselves move, so that an epoch reads them in sequence (an empty
    ``order``) and no index array is needed: at 25M ratings this saves the 100 MB layout and a random
    read per rating. An in-place counting sort (American flag sort): each rating is swapped straight
    into the next free slot of its block. Within a block the ratings end up in an order fixed by the
    data, as LIBMF trains after its one shuffle.
    """
    users, items, ratings = data
    user_group, item_group, g = groups
    position = _stratum_positions(g)
    block_start = _block_counts(data, groups, position)
    fill = block_start[:-1].copy()
    for p in range(g * g):
        while fill[p] < block_start[p + 1]:
            r = fill[p]
            q = position[user_group[users[r]] * g + item_group[items[r]]]
            while q != p:  # rating r belongs to block q: swap it into q's next free slot
                dest = fill[q]
                fill[q] += 1
                users[r], users[dest] = users[dest], users[r]
                items[r], items[dest] = items[dest], items[r]
                ratings[r], ratings[dest] = ratings[dest], ratings[r]
                q = position[user_group[users[r]] * g + item_group[items[r]]]
            fill[p] += 1
    return block_start
