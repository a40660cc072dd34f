"""Items added to a loaded catalogue after training, and items taken out of it, without rebuilding the index.

The index covers the run's exported items: rows ``0 .. n-1``, as in its vocabulary. Items added later get
rows ``n, n+1, ...`` in a side buffer that is searched exactly, and their hits merge with the index's by
exact score; removed items, of either kind, are masked, so they are never returned. Scores are always exact.

A ``LiveItems`` is never changed in place: adding or removing returns a new one, which the retriever puts in
place of the old. A search takes the current one once and sees one consistent catalogue while another
thread changes it. Rows only ever get appended, so row numbers taken from an older buffer still mean the
same items in a newer one.

The buffer lives in memory with the loaded run, in that run's vector space, until ``Retriever.save_catalogue``
writes it into the run directory (``catalogue/``; ``frames`` and ``restored`` here); a run loaded again starts
with what was saved, row for row. ``twotower-index`` then builds the index over the exported items and the
saved added ones, in row order: a run loaded after that fold has its first ``indexed`` added rows in the
index, and searches only the ones added since exactly. Rows that were folded keep their vectors here too
(for similar items and allow lists), and a removed item stays masked whether the index holds it or not.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from twotower.data.ids import query_ids
from twotower.data.vocab import Vocabulary
from twotower.errors import TwoTowerError


class LiveItems:
    """The run's items plus an append-only buffer of added ones, with a mask of removed rows."""

    def __init__(self, vocab: Vocabulary, vectors: np.ndarray, ids: list[Any], titles: list[str | None],
                 rows_by_id: dict[Any, int], removed: np.ndarray, indexed: int = 0) -> None:
        self.vocab = vocab
        self.base = len(vocab)
        self.vectors = vectors  # (added, dim): the vector of row base + i
        self.ids = ids  # the id of row base + i
        self.titles = titles
        self.rows_by_id = rows_by_id  # each added id's latest row, removed or not (as base ids stay in the vocabulary)
        self.removed = removed  # sorted rows, of the run's items and of added ones
        self.indexed = indexed  # the first added rows, which a fold put in the index: not searched here again
        self._id_dtype = vocab.decode(np.zeros(1, dtype=np.int64)).dtype if len(vocab) else np.dtype(object)

    @classmethod
    def empty(cls, vocab: Vocabulary, dim: int) -> LiveItems:
        return cls(vocab, np.empty((0, dim), dtype=np.float32), [], [], {}, np.empty(0, dtype=np.int64))

    def frames(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """What ``restored`` takes back: every added row in order (its id, vector, title, and whether it was
        removed since) and the ids of the run's own items removed. Removed added rows stay, so that row
        numbers, and an index folded over them, keep their meaning."""
        rows = self.base + np.arange(len(self.ids))
        added = pl.DataFrame({
            "id": pl.Series(self.ids, dtype=self.vocab.ids.dtype),
            "vector": pl.Series(self.vectors).cast(pl.List(pl.Float32)),
            "title": pl.Series(self.titles, dtype=pl.String),
            "removed": np.isin(rows, self.removed),
        })
        removed = pl.DataFrame({"id": self.vocab.ids.gather(self.removed[self.removed < self.base])})
        return added, removed

    @classmethod
    def restored(cls, vocab: Vocabulary, dim: int, added: pl.DataFrame | None, removed: pl.DataFrame | None,
                 indexed: int = 0) -> LiveItems:
        """The buffer ``frames`` gave (either may be absent: nothing of that kind was saved), with its first
        ``indexed`` added rows in the index. Vectors are taken as saved: they were normalised when added."""
        base_removed = vocab.lookup(removed["id"].to_list()) if removed is not None else np.empty(0, np.int64)
        if added is None:
            return cls(vocab, np.empty((0, dim), dtype=np.float32), [], [], {}, np.unique(base_removed), indexed)
        ids = added["id"].to_list()  # in the vocabulary's dtype: the keys ``_keys`` gives
        rows_by_id = {key: len(vocab) + row for row, key in enumerate(ids)}  # a repeated id: its latest row
        removed_rows = len(vocab) + np.flatnonzero(added["removed"].to_numpy())
        return cls(vocab, saved_vectors(added, dim), ids, added["title"].to_list(), rows_by_id,
                   np.union1d(base_removed, removed_rows).astype(np.int64), indexed)

    @property
    def n_added(self) -> int:
        """Added items in the catalogue now (not counting those removed since)."""
        return len(self.ids) - int(np.count_nonzero(self.removed >= self.base))

    @property
    def n_removed(self) -> int:
        """The run's own items masked out."""
        return int(np.count_nonzero(self.removed < self.base))

    def _keys(self, ids: Sequence[object]) -> list[object]:
        """Ids as the buffer stores them: read by the one rule of ``twotower.data.ids`` against the run's
        vocabulary (None where a value cannot be such an id)."""
        return query_ids(ids, self.vocab.numeric).to_list()

    def rows(self, ids: Sequence[object], missing: int | None = None) -> np.ndarray:
        """Rows of ``ids`` (added ones first: a removed run item added again is the added one); unknown ids
        raise one error that names them, or map to ``missing`` if given."""
        ids = list(ids)
        if not self.rows_by_id:
            return self.vocab.lookup(ids, missing=missing)
        rows = np.array([self.rows_by_id.get(key, -1) for key in self._keys(ids)], dtype=np.int64)
        outside = np.flatnonzero(rows < 0)
        if len(outside):
            rows[outside] = self.vocab.lookup([ids[i] for i in outside], missing=missing)
        return rows

    def resolve(self, key: object) -> int:
        """The row of an item id or title that is in the catalogue now."""
        row = self.rows_by_id.get(self._keys([key])[0])
        if row is None and key in self.titles:
            row = self.base + len(self.titles) - 1 - self.titles[::-1].index(key)  # the latest with that title
        if row is None:
            row = self.vocab.resolve(key)
        if self.is_removed(row):
            raise TwoTowerError(f"{self.vocab.name} {key!r} was removed from the catalogue")
        return row

    def is_removed(self, row: int) -> bool:
        position = np.searchsorted(self.removed, row)
        return bool(position < len(self.removed) and self.removed[position] == row)

    def masked(self, exclude: np.ndarray | None) -> np.ndarray:
        """``exclude`` (rows) with every removed row added."""
        exclude = np.empty(0, dtype=np.int64) if exclude is None else exclude
        return np.union1d(exclude, self.removed) if len(self.removed) else exclude

    def added(self, ids: Sequence[object], vectors: object, titles: Sequence[str | None] | None,
              score: str) -> LiveItems:
        """A new buffer with these items added: ``vectors`` (one per id) in the run's space, normalised as the
        exported ones are (unit length for a cosine run)."""
        keys = self._new_keys(ids)
        vectors = self._checked_vectors(vectors, len(keys), score)
        titles = [None] * len(keys) if titles is None else list(titles)
        if len(titles) != len(keys):
            raise TwoTowerError(f"{len(keys)} new {self.vocab.name}s but {len(titles)} titles")
        first = self.base + len(self.ids)
        rows_by_id = {**self.rows_by_id, **{key: first + i for i, key in enumerate(keys)}}
        return LiveItems(self.vocab, np.vstack([self.vectors, vectors]), self.ids + keys, self.titles + titles,
                         rows_by_id, self.removed, self.indexed)

    def without(self, ids: Sequence[object]) -> LiveItems:
        """A new buffer with these items masked (removing one twice is harmless)."""
        rows = self.rows(ids)
        return LiveItems(self.vocab, self.vectors, self.ids, self.titles, self.rows_by_id,
                         np.union1d(self.removed, rows), self.indexed)

    def _new_keys(self, ids: Sequence[object]) -> list[object]:
        ids = list(ids)
        if not ids:
            raise TwoTowerError(f"no new {self.vocab.name}s given")
        keys = self._keys(ids)
        if None in keys:
            kind = "whole numbers" if self.vocab.numeric else "text"
            bad = [id_ for id_, key in zip(ids, keys, strict=True) if key is None]
            raise TwoTowerError(f"new {self.vocab.name} ids must be {kind}, as this run's are; got {bad[:5]}")
        repeated = [key for key, count in Counter(keys).items() if count > 1]
        if repeated:
            raise TwoTowerError(f"new {self.vocab.name} ids repeat: {repeated[:5]}")
        present = [key for key, row in zip(keys, self.rows(keys, missing=-1), strict=True)
                   if row >= 0 and not self.is_removed(row)]
        if present:
            raise TwoTowerError(f"{self.vocab.name} id(s) {present[:5]} are in the catalogue already; "
                                "remove them first to replace them")
        return keys

    def _checked_vectors(self, vectors: object, n: int, score: str) -> np.ndarray:
        dim = self.vectors.shape[1]
        try:
            vectors = np.asarray(vectors, dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise TwoTowerError(f"new {self.vocab.name} vectors must be numbers of {dim} each ({error})") from error
        if vectors.shape != (n, dim):
            raise TwoTowerError(f"expected {n} new {self.vocab.name} vector(s) of dimension {dim} (the run's), "
                                f"got an array of shape {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise TwoTowerError(f"new {self.vocab.name} vectors must be finite (no NaN or infinity)")
        if score != "cosine":
            return vectors
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if (norms == 0).any():
            raise TwoTowerError("a cosine run cannot score a zero vector: it has no direction")
        return (vectors / norms).astype(np.float32)  # the exported vectors of a cosine run are unit vectors

    def vectors_for(self, item_vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The vectors of ``rows``: the run's from ``item_vectors``, added ones from the buffer."""
        rows = np.asarray(rows, dtype=np.int64)
        ours = rows < self.base
        if ours.all():
            return item_vectors[rows]
        vectors = np.empty((len(rows), item_vectors.shape[1]), dtype=np.float32)
        vectors[ours] = item_vectors[rows[ours]]
        vectors[~ours] = self.vectors[rows[~ours] - self.base]
        return vectors

    def rank(self, item_vectors: np.ndarray, query: np.ndarray, candidates: np.ndarray, k: int
             ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best of ``candidates`` (rows) by exact score: ``(ids, scores)``."""
        scores = self.vectors_for(item_vectors, candidates) @ query
        order = np.argsort(-scores, kind="stable")[:k]
        return self.decode(candidates[order]), scores[order].astype(np.float32)

    def top(self, query: np.ndarray, rows: np.ndarray, scores: np.ndarray, k: int, exclude: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
        """The index's top ``rows`` (with exact ``scores``) merged with the exact hits for ``query`` of the rows
        added since the last fold, without ``exclude``: ``(ids, scores)``, best first."""
        if len(self.ids) == self.indexed:
            return self.decode(rows), scores
        added = self.base + np.arange(self.indexed, len(self.ids))
        keep = ~np.isin(added, exclude)
        rows = np.concatenate([rows, added[keep]])
        scores = np.concatenate([scores, (self.vectors[self.indexed:][keep] @ query).astype(np.float32)])
        order = np.argsort(-scores, kind="stable")[:k]  # the index's first on a tie
        return self.decode(rows[order]), scores[order]

    def decode(self, rows: np.ndarray) -> np.ndarray:
        """The ids of ``rows``, as ``Vocabulary.decode`` gives them."""
        rows = np.asarray(rows, dtype=np.int64)
        ours = rows < self.base
        if ours.all():
            return self.vocab.decode(rows)
        ids = np.empty(len(rows), dtype=self._id_dtype)
        ids[ours] = self.vocab.decode(rows[ours])
        ids[~ours] = [self.ids[row - self.base] for row in rows[~ours]]
        return ids

    def titles_of(self, rows: np.ndarray) -> list[str | None]:
        """Titles of ``rows`` where there are any."""
        rows = np.asarray(rows, dtype=np.int64)
        ours = self.vocab.column("title", np.minimum(rows, self.base - 1))  # added rows: replaced just below
        return [title if row < self.base else self.titles[row - self.base]
                for row, title in zip(rows.tolist(), ours, strict=True)]


def saved_vectors(added: pl.DataFrame, dim: int) -> np.ndarray:
    """The ``vector`` column of a saved ``frames()[0]`` as a (rows, dim) float32 array."""
    flat = np.array(added["vector"].explode().to_numpy(), dtype=np.float32)  # a copy: Polars' is read-only
    return flat.reshape(added.height, dim)
