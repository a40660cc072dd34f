"""The item side at serving time: the run's exported items searched through its index, items added since
(searched exactly until an index rebuild folds them in), items removed (never returned), the popular-items
fallback, and one ranking by exact score, with ids and titles attached once.

Rows: the run's items are rows ``0 .. n-1``, as in its vocabulary; added items get rows ``n, n+1, ...`` in
the order they came, and keep them (a removed added row stays, masked), so row numbers taken from an older
catalogue mean the same items in a newer one, and an index folded over the added rows stays valid.

A ``Catalogue`` is never changed in place: ``with_items`` and ``without`` return a new one, which the
retriever puts in place of the old; a search takes the current one once and sees one consistent catalogue
while another thread changes it. ``frames`` and ``restored`` save and load the changes (``catalogue/`` of
the run directory, written by ``Retriever.save_catalogue``); ``twotower-index`` then builds the index over
the exported items and the saved added ones, in row order.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from twotower.data.ids import query_ids
from twotower.data.vocab import Vocabulary
from twotower.errors import DataError, UnknownIdError
from twotower.index import (
    Backend,
    ExactIndex,
    Probe,
    build_for_run,
    load_index,
    rank_candidates,
    read_meta,
    search_excluding,
)
from twotower.run import Run, with_prior
from twotower.serving.result import Result

NO_ROWS = np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class Catalogue:
    """The run's items (``vocab``, ``vectors``, searched by ``index`` over ``index_vectors``: the run's items,
    then the added rows a rebuild folded in) plus the ``added`` ones since, minus the ``removed`` rows."""

    vocab: Vocabulary
    score: str
    parts: int  # of a vector, side by side: each is a unit vector in a cosine run
    prior: float  # the popularity prior's weight, in every user query's last coordinate (0: no such coordinate)
    index: Backend
    index_vectors: np.ndarray
    popularity: np.ndarray  # interactions per run item, in the run's log
    popular_order: np.ndarray  # run items, most interactions first (ties by row)
    added_vectors: np.ndarray  # (added, dim): the vector of row n + i
    added_ids: list[Any]
    added_titles: list[str | None]
    rows_by_id: dict[Any, int]  # each added id's latest row, removed or not
    removed: np.ndarray  # sorted rows, of the run's items and of added ones
    indexed: int  # the first added rows, which a rebuild put in the index: not searched exactly again

    @classmethod
    def load(cls, run: Run, index: Backend | None = None) -> Catalogue:
        """The run's catalogue with the changes saved into it; ``index``: None for the run's own index, an
        ``ExactIndex`` to search by brute force, or a backend whose settings search the run's index of that
        kind."""
        vocab, vectors = run.item_vocab, run.item_vectors
        added, removed = run.saved_catalogue()
        n_added = 0 if added is None else added.height
        indexed = 0 if isinstance(index, ExactIndex) else _folded_rows(run, len(vocab), n_added)
        ids = [] if added is None else added["id"].to_list()  # in the vocabulary's dtype
        added_vectors = np.empty((0, vectors.shape[1]), np.float32) if added is None else _saved_vectors(added)
        index_vectors = np.concatenate([vectors, added_vectors[:indexed]]) if indexed else vectors
        if isinstance(index, ExactIndex):  # every added item is searched exactly
            searcher: Backend = ExactIndex(index.batch_size)
            searcher.load(index_vectors, {}, run.paths.index)
        else:
            searcher, _ = load_index(run.paths.index, index_vectors, run.manifest.index_score,
                                     checkpoint=run.manifest.checkpoint_fingerprint, index=index)
        removed_rows = vocab.lookup(removed["id"].to_list()) if removed is not None else NO_ROWS
        if added is not None:
            removed_rows = np.union1d(removed_rows, len(vocab) + np.flatnonzero(added["removed"].to_numpy()))
        popularity = np.bincount(run.seen.items, minlength=len(vocab))
        return cls(vocab, run.score, run.manifest.parts, run.manifest.prior, searcher, index_vectors, popularity,
                   np.argsort(-popularity, kind="stable"), added_vectors, ids,
                   [] if added is None else added["title"].to_list(),
                   {key: len(vocab) + row for row, key in enumerate(ids)},  # a repeated id: its latest row
                   np.unique(removed_rows).astype(np.int64), indexed)

    @property
    def base(self) -> int:
        return len(self.vocab)

    @property
    def vectors(self) -> np.ndarray:
        """The run's item vectors (a view)."""
        return self.index_vectors[:self.base]

    @property
    def dim(self) -> int:
        """The width of the vectors searched (with the prior's coordinate, where the run has one)."""
        return self.index_vectors.shape[1]

    @property
    def model_dim(self) -> int:
        """The width of the towers' vectors: what new items and queries are given in."""
        return self.dim - 1 if self.prior else self.dim

    def user_queries(self, vectors: np.ndarray) -> np.ndarray:
        """User vectors from the towers (new users, histories) as queries of the index: with the prior's
        weight beside them, where the run has one."""
        return with_prior(vectors, self.prior) if self.prior else np.asarray(vectors, dtype=np.float32)

    def item_queries(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of items as queries for their neighbours: an item's likeness to another is the model's
        score of the two, without the other's popularity."""
        queries = self.vectors_of(rows)
        if self.prior:
            queries[:, -1] = 0.0
        return queries

    @property
    def n_added(self) -> int:
        """Added items in the catalogue now (not counting those removed since)."""
        return len(self.added_ids) - int(np.count_nonzero(self.removed >= self.base))

    @property
    def n_removed(self) -> int:
        """The run's own items masked out."""
        return int(np.count_nonzero(self.removed < self.base))

    def counts(self) -> dict[str, int]:
        return {"added_items": self.n_added, "removed_items": self.n_removed}

    # ids, titles, rows

    def _keys(self, ids: Sequence[object]) -> list[object]:
        """Ids as the added ones are stored: read by the one rule of ``twotower.data.ids`` against the run's
        vocabulary (None where a value cannot be such an id)."""
        return query_ids(ids, self.vocab.numeric).to_list()

    def allowed(self, allow: Iterable[object] | None) -> np.ndarray | None:
        """The distinct rows of an allow list (None: no list, every item allowed)."""
        return None if allow is None else np.unique(self.rows(list(allow)))

    def denied(self, deny: Iterable[object] | None) -> np.ndarray:
        """The distinct rows of a deny list."""
        return np.unique(self.rows(deny))

    def rows(self, ids: Sequence[object] | None, missing: int | None = None) -> np.ndarray:
        """Rows of ``ids`` (added ones first: a removed run item added again is the added one); unknown ids
        raise one error that names them, or map to ``missing`` if given."""
        if ids is None:
            return NO_ROWS
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
        if row is None and key in self.added_titles:  # the latest added item with that title
            row = self.base + len(self.added_titles) - 1 - self.added_titles[::-1].index(key)
        if row is None:
            row = self.vocab.resolve(key)
        if self.is_removed(row):
            raise UnknownIdError(f"{self.vocab.name} {key!r} was removed from the catalogue")
        return row

    def is_removed(self, row: int) -> bool:
        position = np.searchsorted(self.removed, row)
        return bool(position < len(self.removed) and self.removed[position] == row)

    def masked(self, exclude: np.ndarray | None) -> np.ndarray:
        """``exclude`` (rows) with every removed row added."""
        exclude = NO_ROWS if exclude is None else exclude
        return np.union1d(exclude, self.removed) if len(self.removed) else exclude

    def decode(self, rows: np.ndarray) -> np.ndarray:
        """The ids of ``rows``, as ``Vocabulary.decode`` gives them."""
        rows = np.asarray(rows, dtype=np.int64)
        ours = rows < self.base
        if ours.all():
            return self.vocab.decode(rows)
        dtype = self.vocab.decode(np.zeros(1, dtype=np.int64)).dtype if self.base else np.dtype(object)
        ids = np.empty(len(rows), dtype=dtype)
        ids[ours] = self.vocab.decode(rows[ours])
        ids[~ours] = [self.added_ids[row - self.base] for row in rows[~ours]]
        return ids

    def titles(self, rows: np.ndarray) -> list[str | None] | None:
        """Titles of ``rows`` (None when neither the run nor the added items have any)."""
        if not self.vocab.has_titles and not any(title is not None for title in self.added_titles):
            return None
        rows = np.asarray(rows, dtype=np.int64)
        ours = self.vocab.column("title", np.minimum(rows, self.base - 1)) if self.vocab.has_titles else \
            [None] * len(rows)
        return [title if row < self.base else self.added_titles[row - self.base]
                for row, title in zip(rows.tolist(), ours, strict=True)]

    def result(self, rows: np.ndarray, scores: np.ndarray, fallback: str | None = None) -> Result:
        """``rows`` with their scores as an answer: ids and titles attached here, once."""
        return Result(self.decode(rows), np.asarray(scores, dtype=np.float32), self.titles(rows), fallback)

    def score_scale(self, query: np.ndarray) -> float:
        """What turns a dot product with ``query`` into the score an answer reports: for a cosine run, the
        cosine averaged over the parts the query has (a new user's history query has only its history part),
        so that scores stay in [-1, 1]; for a dot run, 1."""
        if self.score != "cosine" or self.parts == 1:
            return 1.0
        present = np.count_nonzero(np.linalg.norm(query[:self.model_dim].reshape(self.parts, -1), axis=1) > 0)
        return 1.0 / max(int(present), 1)

    def vectors_of(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of ``rows``: the run's, and added ones from the buffer."""
        rows = np.asarray(rows, dtype=np.int64)
        ours = rows < self.base
        if ours.all():
            return self.vectors[rows]
        vectors = np.empty((len(rows), self.dim), dtype=np.float32)
        vectors[ours] = self.vectors[rows[ours]]
        vectors[~ours] = self.added_vectors[rows[~ours] - self.base]
        return vectors

    # search

    def search(self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None,
               allow: np.ndarray | None = None) -> list[Result]:
        """The ``k`` best items by dot product with each query, leaving out ``exclude[i]`` (rows) and every
        removed item; ``allow`` (rows) restricts the answer to those, searched exactly (an index cannot filter
        by a list, and such lists are usually short)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        exclude = [self.masked(rows) for rows in (exclude or [NO_ROWS] * len(queries))]
        if allow is not None:
            return [self._rank(query, allow[~np.isin(allow, excluded)], k)
                    for query, excluded in zip(queries, exclude, strict=True)]
        found = search_excluding(self.index, self.index_vectors, queries, k, exclude)
        fresh = self.base + np.arange(self.indexed, len(self.added_ids))  # added since the index was built
        results = []
        for query, (rows, scores), excluded in zip(queries, found, exclude, strict=True):
            if len(fresh):  # merged by exact score, the index's first on a tie
                results.append(self._rank(query, np.concatenate([rows, fresh[~np.isin(fresh, excluded)]]), k))
            else:
                results.append(self.result(rows, scores * self.score_scale(query)))
        return results

    def _rank(self, query: np.ndarray, candidates: np.ndarray, k: int) -> Result:
        """The ``k`` best of ``candidates`` (rows, of any kind) by exact score."""
        rows, scores = rank_candidates(self.vectors_of(candidates), query, candidates, k)
        return self.result(rows, scores * self.score_scale(query))

    def popular(self, k: int, exclude: np.ndarray | None = None, allow: np.ndarray | None = None) -> Result:
        """The ``k`` run items with the most interactions in the run's log (ties by row), as a fallback."""
        order = self.popular_order
        if allow is not None:
            order = order[np.isin(order, allow)]
        excluded = self.masked(exclude)
        if len(excluded):
            order = order[~np.isin(order, excluded)]
        top = order[:k]
        share = self.popularity[top] / max(int(self.popularity.sum()), 1)
        return self.result(top, share, fallback="popular")

    # changes

    def with_items(self, ids: Sequence[object], vectors: object, titles: Sequence[str | None] | None = None
                   ) -> Catalogue:
        """A new catalogue with these items added: ``vectors`` (one per id) in the towers' space, normalised as
        the exported ones are (unit length for a cosine run); where the run has a popularity prior, a new item
        has none (no interactions in the run's log)."""
        keys = self._new_keys(ids)
        vectors = self._checked_vectors(vectors, len(keys))
        titles = [None] * len(keys) if titles is None else list(titles)
        if len(titles) != len(keys):
            raise DataError(f"{len(keys)} new {self.vocab.name}s but {len(titles)} titles")
        first = self.base + len(self.added_ids)
        return dataclasses.replace(
            self, added_vectors=np.vstack([self.added_vectors, vectors]), added_ids=self.added_ids + keys,
            added_titles=self.added_titles + titles,
            rows_by_id={**self.rows_by_id, **{key: first + i for i, key in enumerate(keys)}})

    def without(self, ids: Sequence[object]) -> Catalogue:
        """A new catalogue with these items masked (removing one twice is harmless)."""
        return dataclasses.replace(self, removed=np.union1d(self.removed, self.rows(ids)))

    def _new_keys(self, ids: Sequence[object]) -> list[object]:
        ids = list(ids)
        if not ids:
            raise DataError(f"no new {self.vocab.name}s given")
        keys = self._keys(ids)
        if None in keys:
            kind = "whole numbers" if self.vocab.numeric else "text"
            bad = [id_ for id_, key in zip(ids, keys, strict=True) if key is None]
            raise DataError(f"new {self.vocab.name} ids must be {kind}, as this run's are; got {bad[:5]}")
        repeated = [key for key, count in Counter(keys).items() if count > 1]
        if repeated:
            raise DataError(f"new {self.vocab.name} ids repeat: {repeated[:5]}")
        present = [key for key, row in zip(keys, self.rows(keys, missing=-1), strict=True)
                   if row >= 0 and not self.is_removed(row)]
        if present:
            raise DataError(f"{self.vocab.name} id(s) {present[:5]} are in the catalogue already; "
                                "remove them first to replace them")
        return keys

    def _checked_vectors(self, vectors: object, n: int) -> np.ndarray:
        try:
            vectors = np.asarray(vectors, dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise DataError(f"new {self.vocab.name} vectors must be numbers of {self.model_dim} each ({error})") \
                from error
        if vectors.shape != (n, self.model_dim):
            raise DataError(f"expected {n} new {self.vocab.name} vector(s) of dimension {self.model_dim} (the "
                            f"run's), got an array of shape {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise DataError(f"new {self.vocab.name} vectors must be finite (no NaN or infinity)")
        if self.score == "cosine":
            # The exported vectors of a cosine run are unit vectors, part by part (an ID and a history part).
            parts = vectors.reshape(len(vectors), self.parts, -1)
            norms = np.linalg.norm(parts, axis=2, keepdims=True)
            if (norms == 0).any():
                raise DataError("a cosine run cannot score a zero vector (or a zero part of one): it has no "
                                "direction")
            vectors = (parts / norms).reshape(vectors.shape).astype(np.float32)
        # a new item's log(1 + interactions in the run's log): 0
        return np.pad(vectors, ((0, 0), (0, 1))) if self.prior else vectors

    def frames(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """What ``load`` reads back: every added row in order (its id, vector, title, and whether it was
        removed since) and the ids of the run's own items removed."""
        rows = self.base + np.arange(len(self.added_ids))
        added = pl.DataFrame({
            "id": pl.Series(self.added_ids, dtype=self.vocab.ids.dtype),
            "vector": pl.Series(self.added_vectors).cast(pl.List(pl.Float32)),
            "title": pl.Series(self.added_titles, dtype=pl.String),
            "removed": np.isin(rows, self.removed),
        })
        removed = pl.DataFrame({"id": self.vocab.ids.gather(self.removed[self.removed < self.base])})
        return added, removed


def rebuild_index(run_dir: str | Path, index: Backend, recall_queries: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Build ``index`` over a run's exported items and the added items its catalogue saved, in row order, tuned
    to its target recall, replacing the run's index once the new one is complete: a run loaded afterwards
    finds those items in the index instead of searching them exactly. Returns the index's report
    (``index/report.json``)."""
    run = Run.open(run_dir)  # a rebuild never blesses vectors the run did not export
    added, _ = run.saved_catalogue()
    items = run.item_vectors if added is None else np.concatenate([run.item_vectors, _saved_vectors(added)])
    probe = Probe.sample(run.user_vectors, run.seen.row, recall_queries, seed)
    return build_for_run(index, items, run.manifest.index_score, run.paths.index, probe,
                         run.manifest.checkpoint_fingerprint)


def _folded_rows(run: Run, n_items: int, n_added: int) -> int:
    """How many saved added rows the run's index holds: a rebuild puts them after the run's ``n_items``. A
    count out of range is left for ``load_index`` to refuse."""
    held = read_meta(run.paths.index).get("n_items")
    return held - n_items if isinstance(held, int) and n_items <= held <= n_items + n_added else 0


def _saved_vectors(added: pl.DataFrame) -> np.ndarray:
    """The ``vector`` column of a saved ``frames()[0]`` as a (rows, dim) float32 array."""
    flat = np.array(added["vector"].explode().to_numpy(), dtype=np.float32)  # a copy: Polars' is read-only
    return flat.reshape(added.height, -1)
