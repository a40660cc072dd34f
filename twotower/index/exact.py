"""Exact search: a batched matrix product, the ground truth every index is measured against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def exact_top(queries: np.ndarray, items: np.ndarray, n: int, batch_size: int | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Top ``n`` items by dot product for each query: ``(indices, scores)``, both (queries, n), best first.

    Queries go in blocks of ``batch_size`` (by default as many as keep a block's scores near 64 MiB).
    """
    n = min(n, len(items))
    batch_size = batch_size or max(1, (1 << 24) // max(len(items), 1))
    indices = np.empty((len(queries), n), dtype=np.int64)
    scores = np.empty((len(queries), n), dtype=np.float32)
    for start in range(0, len(queries), batch_size):
        block = queries[start:start + batch_size] @ items.T  # (batch, n_items)
        top = np.argpartition(-block, n - 1, axis=1)[:, :n] if n < len(items) else \
            np.broadcast_to(np.arange(len(items)), block.shape)
        top_scores = np.take_along_axis(block, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        indices[start:start + batch_size] = np.take_along_axis(top, order, axis=1)
        scores[start:start + batch_size] = np.take_along_axis(top_scores, order, axis=1)
    return indices, scores


class ExactIndex:
    """Brute-force search over the item vectors (kept in memory)."""

    backend = "exact"
    target_recall = None  # exact by construction: nothing to tune
    exact_when_faster = False

    def __init__(self, batch_size: int | None = None) -> None:
        self.batch_size = batch_size

    def params(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size}

    def describe(self) -> str:
        return "exact search"

    def build(self, vectors: np.ndarray, score: str, folder: Path) -> dict[str, Any]:
        self.vectors = vectors
        return {"metric": "dot", "transform": "none", "index_dim": vectors.shape[1]}

    def load(self, vectors: np.ndarray, meta: dict[str, Any], folder: Path) -> None:
        self.vectors = vectors

    def search(self, queries: np.ndarray, n: int) -> np.ndarray:
        """Candidate item indices for each query, (queries, n), best first."""
        return exact_top(queries, self.vectors, n, self.batch_size)[0]

    def searches_exactly(self, n: int) -> bool:
        return True
