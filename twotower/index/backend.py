"""What every index backend is (``Backend``), what the tuning needs of an approximate one (``Tunable``), and
the backends by the name their ``meta.json`` records."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from twotower.errors import RunError
from twotower.index.annoy import AnnoyIndex
from twotower.index.exact import ExactIndex
from twotower.index.hnsw import HnswIndex


class Backend(Protocol):
    """An index over item vectors that answers "which items have the largest dot product with this query".

    Its settings are plain values (``params``, saved in ``meta.json``, and given back to the constructor);
    ``build`` writes its files into a folder and returns facts for ``meta.json``; ``load`` opens them.
    """

    backend: str  # the name meta.json records
    target_recall: float | None  # the recall@10 a build makes sure of (None: no tuning)
    exact_when_faster: bool  # serve exactly where that is faster than the setting that meets the target

    def params(self) -> dict[str, Any]: ...

    def describe(self) -> str: ...

    def build(self, vectors: np.ndarray, score: str, folder: Path) -> dict[str, Any]: ...

    def load(self, vectors: np.ndarray, meta: dict[str, Any], folder: Path) -> None: ...

    def search(self, queries: np.ndarray, n: int) -> np.ndarray:
        """Candidate item rows for each query, (queries, n), best first; -1 where fewer were found."""
        ...

    def searches_exactly(self, n: int) -> bool:
        """Whether a search for ``n`` results is answered by exact search."""
        ...


class Tunable(Backend, Protocol):
    """An approximate backend, whose tuning (``twotower.index.tuning``) steps through new settings, each a new
    backend: more search budget on the same files, then a denser structure (a new build), then exact search."""

    def widened(self) -> Tunable | None:
        """This index with twice the search budget, loaded; None where ten results would then cost about a
        visit of the whole catalogue."""
        ...

    def deepened(self) -> Tunable | None:
        """A denser structure, searched from the configured budget again (a build must follow); None past its
        limit."""
        ...

    def served_exactly(self) -> Tunable:
        """This index answering by exact search."""
        ...


BACKENDS: dict[str, type[Backend]] = {backend.backend: backend for backend in (ExactIndex, AnnoyIndex, HnswIndex)}


def backend_from(name: object, params: dict[str, Any] | None = None) -> Backend:
    """A fresh backend of kind ``name`` with ``params`` (what ``meta.json`` records)."""
    if name not in BACKENDS:
        raise RunError(f"unknown index backend {name!r}; this version has {sorted(BACKENDS)}")
    return BACKENDS[name](**(params or {}))
