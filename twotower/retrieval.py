"""The retrieval API: load a run directory once, then ask for recommendations and similar items.

    from twotower import Retriever
    retriever = Retriever.load("outputs/my-run")
    ids, scores = retriever.recommend(196, k=10)           # one user: two arrays of length <= k
    results = retriever.recommend([196, 186], k=10)         # several: a list of (ids, scores)
    ids, scores = retriever.similar_items("Toy Story (1995)", k=5)   # ids or titles

The index proposes candidates; scores are always recomputed exactly from the exported vectors, and each
user's training items are filtered out after over-fetching, so ``k`` results come back whenever the
catalogue has ``k`` unseen items. Unknown ids raise ``TwoTowerError`` naming them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from twotower.artifacts import RunPaths, read_manifest
from twotower.data.batches import UserItems
from twotower.data.vocab import Vocabulary
from twotower.embeddings import read_vectors
from twotower.errors import TwoTowerError
from twotower.index import Backend, ExactIndex, exact_top, load_index

Result = tuple[np.ndarray, np.ndarray]


def _is_batch(query: object) -> bool:
    return isinstance(query, (list, tuple, np.ndarray, pl.Series))


class Retriever:
    """Top-k retrieval over a finished run: its vocabularies, vectors, training interactions and index."""

    def __init__(self, paths: RunPaths, manifest: dict[str, Any], index: Backend,
                 user_vocab: Vocabulary, item_vocab: Vocabulary,
                 user_vectors: np.ndarray, item_vectors: np.ndarray, seen: UserItems) -> None:
        self.paths = paths
        self.manifest = manifest
        self.names = manifest["names"]
        self.index = index
        self.user_vocab = user_vocab
        self.item_vocab = item_vocab
        self.user_vectors = user_vectors
        self.item_vectors = item_vectors
        self.seen = seen

    @classmethod
    def load(cls, run_dir: str | Path, backend: str | None = None) -> Retriever:
        """Open a run directory; ``backend="exact"`` searches by brute force instead of its Annoy index."""
        paths = RunPaths(Path(run_dir))
        manifest = read_manifest(paths)
        names = manifest["names"]
        user_vocab = Vocabulary.load(paths.vocab("users"), names["user"])
        item_vocab = Vocabulary.load(paths.vocab("items"), names["item"])
        _, user_vectors = read_vectors(paths.embeddings("users"))
        _, item_vectors = read_vectors(paths.embeddings("items"))
        if len(user_vectors) != len(user_vocab) or len(item_vectors) != len(item_vocab):
            raise TwoTowerError(f"{paths.root}: embeddings and vocabularies disagree in size; re-export the run")
        index = ExactIndex() if backend == "exact" else None
        if backend not in (None, "exact", "annoy"):
            raise TwoTowerError(f"unknown backend '{backend}'; choose annoy or exact")
        if index is None:
            index, _ = load_index(paths.index, item_vectors, manifest["score"],
                                  checkpoint=manifest.get("checkpoint_fingerprint"))
        else:
            index.load(item_vectors, {}, paths.index)
        train = pl.read_parquet(paths.split("train"))
        seen = UserItems.from_pairs(train["user"].to_numpy().astype(np.int64),
                                    train["item"].to_numpy().astype(np.int64), len(user_vocab))
        return cls(paths, manifest, index, user_vocab, item_vocab, user_vectors, item_vectors, seen)

    def recommend(self, users: object, k: int = 10, exclude_seen: bool = True) -> Result | list[Result]:
        """Top-``k`` items for a user id (or a batch of ids), without the user's training items."""
        batch = list(users) if _is_batch(users) else [users]
        rows = self.user_vocab.lookup(batch)
        exclude = [self.seen.items[self.seen.indptr[u]:self.seen.indptr[u + 1]] for u in rows] \
            if exclude_seen else [np.empty(0, dtype=np.int64)] * len(rows)
        results = self._search(self.user_vectors[rows], k, exclude)
        return results if _is_batch(users) else results[0]

    def similar_items(self, items: object, k: int = 10) -> Result | list[Result]:
        """The ``k`` items closest to an item id or title (or a batch), by the model's score; not itself."""
        batch = list(items) if _is_batch(items) else [items]
        rows = np.array([self.item_vocab.resolve(item) for item in batch], dtype=np.int64)
        results = self._search(self.item_vectors[rows], k, [np.array([row]) for row in rows])
        return results if _is_batch(items) else results[0]

    def similar_users(self, users: object, k: int = 10) -> Result | list[Result]:
        """The ``k`` users closest to a user id (or a batch), by exact search over the user vectors."""
        batch = list(users) if _is_batch(users) else [users]
        rows = np.array([self.user_vocab.resolve(user) for user in batch], dtype=np.int64)
        indices, scores = exact_top(self.user_vectors[rows], self.user_vectors, _check_k(k) + 1)
        results = []
        for row, found, found_scores in zip(rows, indices, scores, strict=True):
            keep = found != row
            results.append((self.user_vocab.decode(found[keep][:k]), found_scores[keep][:k]))
        return results if _is_batch(users) else results[0]

    def _search(self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray]) -> list[Result]:
        k = _check_k(k)
        results = []
        # Over-fetch by the number of excluded items so that k remain after filtering them out.
        for fetch in np.unique([min(k + len(e), len(self.item_vectors)) for e in exclude]):
            members = [i for i, e in enumerate(exclude) if min(k + len(e), len(self.item_vectors)) == fetch]
            candidates = self.index.search(queries[members], int(fetch))
            for member, found in zip(members, candidates, strict=True):
                found = found[found >= 0]
                found = found[~np.isin(found, exclude[member])]
                scores = self.item_vectors[found] @ queries[member]
                order = np.argsort(-scores, kind="stable")[:k]
                results.append((member, found[order], scores[order]))
        results.sort(key=lambda result: result[0])
        return [(self.item_vocab.decode(found), scores.astype(np.float32)) for _, found, scores in results]

    def describe_items(self, ids: Iterable[object]) -> list[str | None]:
        """Titles for item ids where the vocabulary has them."""
        indices = self.item_vocab.lookup(list(ids))
        return self.item_vocab.column("title", indices)


def _check_k(k: int) -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k <= 0:
        raise TwoTowerError(f"k must be a positive integer, got {k!r}")
    return int(k)
