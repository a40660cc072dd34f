"""Each user's items as compressed sparse rows: what to exclude from a ranking, or what to find in it."""

from __future__ import annotations

import numpy as np
import polars as pl


class UserItems:
    """Each user's items in compressed sparse rows: ``items[indptr[u]:indptr[u + 1]]``."""

    def __init__(self, indptr: np.ndarray, items: np.ndarray) -> None:
        self.indptr = indptr
        self.items = items

    @classmethod
    def from_pairs(cls, users: np.ndarray, items: np.ndarray, n_users: int) -> UserItems:
        """From parallel arrays of user and item indices; items are stored as int32 (half the memory)."""
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
        items = np.asarray(items, dtype=np.int32)
        if np.all(users[1:] >= users[:-1]):  # already grouped by user, as the splits are: no reordering
            return cls(indptr, items)
        return cls(indptr, items[np.argsort(users, kind="stable")])

    @classmethod
    def from_frame(cls, frame: pl.DataFrame, n_users: int) -> UserItems:
        """From a frame of ``user`` and ``item`` indices (a split)."""
        return cls.from_pairs(frame["user"].to_numpy(), frame["item"].to_numpy(), n_users)

    def users(self) -> np.ndarray:
        """The users with at least one item, ascending."""
        return np.flatnonzero(np.diff(self.indptr) > 0)

    def row(self, user: int) -> np.ndarray:
        """The items of one user (a view)."""
        return self.items[self.indptr[user]:self.indptr[user + 1]]

    def gather(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, items)``: every item of ``users[r]`` paired with its position ``r`` in ``users``."""
        starts = self.indptr[users]
        lengths = self.indptr[users + 1] - starts
        rows = np.repeat(np.arange(len(users)), lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return rows, self.items[np.repeat(starts, lengths) + offsets].astype(np.int64)
