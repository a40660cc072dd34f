"""Search with exclusions on top of any backend, with exact scores, and its recall against exact search."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from twotower.index.backend import Backend
from twotower.index.exact import ExactIndex


def rank_candidates(candidate_vectors: np.ndarray, query: np.ndarray, candidates: np.ndarray, k: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of ``candidates`` (item rows, ``candidate_vectors`` theirs) by exact dot product with
    ``query``: (rows, scores), best first, the earlier candidate first on a tie."""
    scores = candidate_vectors @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return candidates[order], scores[order].astype(np.float32)


def search_excluding(index: Backend, vectors: np.ndarray, queries: np.ndarray, k: int,
                     exclude: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Top-``k`` items for each query, leaving out ``exclude[i]`` (item indices): (indices, scores) each.

    The index proposes candidates and the scores are recomputed exactly from ``vectors``. It is asked for
    ``k`` plus the number of excluded items, so that ``k`` remain after filtering whenever the catalogue
    has them; queries that need the same number of candidates go to the index together.
    """
    fetch = np.minimum(k + np.array([len(e) for e in exclude], dtype=np.int64), len(vectors))
    results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(queries)
    for size in np.unique(fetch):
        members = np.flatnonzero(fetch == size)
        for member, found in zip(members, index.search(queries[members], int(size)), strict=True):
            found = found[found >= 0]
            found = found[~np.isin(found, exclude[member])]
            results[member] = rank_candidates(vectors[found], queries[member], found, k)
    return results


def recall(found: Sequence[np.ndarray], truth: Sequence[np.ndarray]) -> float:
    """Mean share of each query's true rows that were found (1 where there are no queries)."""
    hits = [len(np.intersect1d(a, b)) / max(len(b), 1) for a, b in zip(found, truth, strict=True)]
    return float(np.mean(hits)) if hits else 1.0


def top_rows(index: Backend, vectors: np.ndarray, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray]
             ) -> list[np.ndarray]:
    """Each query's top-``k`` rows by ``index``, without ``exclude[i]``."""
    return [rows for rows, _ in search_excluding(index, vectors, queries, k, exclude)]


def recall_against_exact(index: Backend, queries: np.ndarray, vectors: np.ndarray, k: int = 10,
                         exclude: Sequence[np.ndarray] | None = None) -> float:
    """Mean share of the exact top-k that the index returns in its top-k, both without ``exclude[i]``."""
    exclude = exclude if exclude is not None else [np.empty(0, dtype=np.int64)] * len(queries)
    exact = ExactIndex()
    exact.load(vectors, {}, Path())
    return recall(top_rows(index, vectors, queries, k, exclude), top_rows(exact, vectors, queries, k, exclude))
