"""The block layout on the cluster: balanced groups, and each user group's ratings moved to its worker.

Users and items are cut into ``g`` groups (``g`` a multiple of the ``W`` workers) by the rule of the
local parallel backend (contiguous code ranges holding about equal shares of the training ratings,
:func:`adapter.groups_from_counts`). Worker ``w`` owns user groups ``w*m .. (w+1)*m - 1``
(``m = g / W``), one contiguous stretch of user codes. Each file's rows are split by owner where
the file lies and each owner concatenates its pieces in file order, once, before the fit: the
shuffle that puts every rating next to its user rows. From then on the ratings stay put.

On its worker a user group's ratings are sorted by block, in the stratum-major positions of
``cpu.block_index``, keeping their order within each block, and the codes become local ones, so
that the kernels run on a buffer holding only the worker's user rows and the item groups it holds:
user ``u`` is row ``u - first user code``, and item ``i`` of group ``d`` is kept as ``i - first
code of d``, its row within the group (``worker.py`` adds where the group sits in a stratum).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import adapter
from .data import Partition

__all__ = ["Groups", "Piece", "OwnerData", "make_groups", "split_by_owner", "owner_data"]


@dataclass
class Groups:
    """``g`` balanced groups of user and item codes: each code's group and where each group starts."""

    n_groups: int
    user_group: np.ndarray
    item_group: np.ndarray
    user_start: np.ndarray  # g + 1 codes: group c is codes user_start[c]..user_start[c+1]-1
    item_start: np.ndarray


def _starts(group: np.ndarray, n_groups: int) -> np.ndarray:
    return np.searchsorted(group, np.arange(n_groups + 1), side="left").astype(np.int64)


def make_groups(counts: tuple, n_groups: int) -> Groups:
    """Balanced groups from the gathered training counts per user and per item code."""
    user_group = adapter.groups_from_counts(counts[0], n_groups)
    item_group = adapter.groups_from_counts(counts[1], n_groups)
    return Groups(n_groups, user_group, item_group, _starts(user_group, n_groups), _starts(item_group, n_groups))


@dataclass
class Piece:
    """The rows of one file that belong to one worker: training and validation, global codes."""

    train: tuple  # (users, items, ratings)
    valid: tuple


def split_by_owner(part: Partition, groups: Groups, n_workers: int) -> tuple:
    """One :class:`Piece` per worker: the file's rows of the users that worker owns, in file order."""
    m = groups.n_groups // n_workers
    owner = groups.user_group[part.users] // m
    pieces = []
    for w in range(n_workers):
        mine = owner == w
        rows = [np.flatnonzero(mine & ~part.valid), np.flatnonzero(mine & part.valid)]
        pieces.append(Piece(*[(part.users[r], part.items[r], part.ratings[r]) for r in rows]))
    return tuple(pieces)


@dataclass
class OwnerData:
    """A worker's ratings for the whole fit: its user groups' training rows by block, and validation rows."""

    worker: int
    n_groups: int
    m: int  # user groups (and item slots) per worker
    u_lo: int  # first user code owned
    n_users: int  # user codes owned
    item_start: np.ndarray
    users: np.ndarray  # local user rows, int32
    items: np.ndarray  # each item's row within its group, int32
    ratings: np.ndarray
    block_start: np.ndarray  # g*g + 1 positions; only this worker's blocks are not empty
    valid_users: np.ndarray  # local user rows
    valid_items: np.ndarray  # global item codes
    valid_ratings: np.ndarray

    def stratum_blocks(self, t: int) -> tuple[int, int]:
        """The positions ``first, stop`` of this worker's blocks in stratum ``t``: consecutive."""
        first = t * self.n_groups + self.worker * self.m
        return first, first + self.m

    def stratum_sizes(self) -> np.ndarray:
        """Training ratings of this worker in each stratum."""
        bounds = [self.stratum_blocks(t) for t in range(self.n_groups)]
        return np.array([self.block_start[stop] - self.block_start[first] for first, stop in bounds], dtype=np.int64)

    def slot_group(self, slot: int, t: int) -> int:
        """The item group of this worker's ``slot``-th block in stratum ``t``: ``(c + t) % g``, ``c = w*m + slot``."""
        return (self.worker * self.m + slot + t) % self.n_groups

    def group_size(self, group: int) -> int:
        return int(self.item_start[group + 1] - self.item_start[group])

    def global_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The training rows with global codes, in this worker's block order (for a reference run)."""
        users = self.users.astype(np.int64) + self.u_lo
        items = self.items.astype(np.int64)
        for t in range(self.n_groups):
            for slot in range(self.m):
                p = self.stratum_blocks(t)[0] + slot
                rows = slice(self.block_start[p], self.block_start[p + 1])
                items[rows] += self.item_start[self.slot_group(slot, t)]
        return users.astype(np.int32), items.astype(np.int32), self.ratings

    def valid_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The validation rows with global codes."""
        return (self.valid_users + self.u_lo).astype(np.int32), self.valid_items, self.valid_ratings


def owner_data(worker: int, groups: Groups, n_workers: int, *pieces: Piece) -> OwnerData:
    """Worker ``worker``'s pieces from every file, joined in file order, sorted by block, in local codes."""
    g, m = groups.n_groups, groups.n_groups // n_workers
    users, items, ratings = (np.concatenate([p.train[a] for p in pieces]) for a in range(3))
    canonical, block_start = adapter.block_layout(users, items, groups.user_group, groups.item_group, g)
    users, items, ratings = users[canonical], items[canonical], ratings[canonical]
    u_lo = int(groups.user_start[worker * m])
    n_users = int(groups.user_start[(worker + 1) * m]) - u_lo
    within = items - groups.item_start[groups.item_group[items]]
    valid_users, valid_items, valid_ratings = (np.concatenate([p.valid[a] for p in pieces]) for a in range(3))
    return OwnerData(
        worker,
        g,
        m,
        u_lo,
        n_users,
        groups.item_start,
        (users - u_lo).astype(np.int32),
        within.astype(np.int32),
        ratings,
        block_start,
        (valid_users - u_lo).astype(np.int32),
        valid_items.astype(np.int32),
        valid_ratings,
    )
