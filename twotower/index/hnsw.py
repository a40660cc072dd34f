"""A graph index (HNSW, Hierarchical Navigable Small World) on Spotify's ``voyager``, Annoy's successor.

The graph links each item to its ``m`` nearest neighbours on a few layers; a search walks it greedily,
keeping the ``ef`` best candidates seen. It reaches a given recall at a higher throughput than a forest on
trained vectors, which a random-projection forest like Annoy splits poorly. Scores follow the model as in
Annoy: cosine models index their unit vectors, dot-product ones go through ``twotower.index.angular``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import voyager

from twotower import checks
from twotower.errors import RunError
from twotower.files import atomic_path
from twotower.index.angular import angular_items, angular_queries
from twotower.index.approximate import ApproximateIndex
from twotower.index.exact import exact_top


class HnswIndex(ApproximateIndex):
    """``m`` links per item and ``ef_construction`` candidates while building set the graph's quality (and
    its size and build time); ``ef`` candidates per query trades query time for recall. ``target_recall``:
    the recall@10 the build makes sure of (``twotower.index.tuning``), raising ``ef``, then ``m``, or serving
    exactly (``exact``). ``build_threads`` > 1 builds faster, but not reproducibly."""

    backend = "hnsw"
    FILE = "items.voy"
    MAX_M_DOUBLINGS = 1  # the tuning builds at most twice the configured links

    def __init__(self, m: int = 16, ef_construction: int = 200, ef: int = 32, seed: int = 0,
                 build_threads: int = 1, target_recall: float | None = 0.95, exact_when_faster: bool = True,
                 exact: bool = False) -> None:
        self.m = checks.integer("index.m", m, 2)
        self.ef_construction = checks.integer("index.ef_construction", ef_construction, 2)
        self.ef = checks.integer("index.ef", ef, 2)
        super().__init__(seed, build_threads, target_recall, exact_when_faster, exact)
        self._configured = (m, ef)  # where the tuning starts from
        self._graph: voyager.Index | None = None

    def params(self) -> dict[str, Any]:
        return {"m": self.m, "ef_construction": self.ef_construction, "ef": self.ef, **self.shared_params()}

    def describe(self) -> str:
        return "exact search" if self.exact else f"m {self.m}, ef {self.ef}"

    def widened(self) -> HnswIndex | None:
        """Twice the candidates per query, unless ten results would then cost about a visit of every item."""
        wider = copy.copy(self)
        wider.ef = self.ef * 2
        return None if wider.searches_exactly(10) else wider

    def deepened(self) -> HnswIndex | None:
        """Twice the links, searched again from the configured ``ef`` (a build must follow); None at the cap."""
        m, ef = self._configured
        if self.m * 2 > m << self.MAX_M_DOUBLINGS:
            return None
        deeper = copy.copy(self)
        deeper.m, deeper.ef, deeper._graph = self.m * 2, ef, None
        return deeper


    def build(self, vectors: np.ndarray, score: str, folder: Path) -> dict[str, Any]:
        items, transform, max_norm = angular_items(vectors, score)
        graph = voyager.Index(voyager.Space.Cosine, num_dimensions=items.shape[1], M=self.m,
                              ef_construction=self.ef_construction, random_seed=self.seed,
                              max_elements=max(len(items), 1))
        if len(items):
            graph.add_items(np.ascontiguousarray(items, dtype=np.float32), num_threads=self._threads())
        with atomic_path(folder / self.FILE) as temporary:
            graph.save(str(temporary))
        return {"metric": "cosine", "transform": transform, "index_dim": items.shape[1], "max_norm": max_norm}

    def _threads(self) -> int:
        return (os.cpu_count() or 1) if self.build_threads == -1 else self.build_threads

    def load(self, vectors: np.ndarray, meta: dict[str, Any], folder: Path) -> None:
        path = folder / self.FILE
        if not path.exists():
            raise RunError(f"missing index file {path}; rebuild the index")
        try:
            self._graph = voyager.Index.load(str(path))
        except Exception as error:  # voyager raises plain RuntimeErrors on a damaged file
            raise RunError(f"cannot load index file {path} ({error}); it is damaged: rebuild it") from error
        if self._graph.num_elements != meta["n_items"]:
            raise RunError(f"{path} holds {self._graph.num_elements} items but its metadata says "
                                f"{meta['n_items']}; rebuild the index")
        self._vectors = vectors
        self._transform = meta["transform"]

    def searches_exactly(self, n: int) -> bool:
        """Whether a search for ``n`` results would compare about as many vectors as there are items (a search
        visits some ``m`` neighbours of each of its candidates), and so is done by brute force, or the tuning
        chose exact search."""
        return self.exact or max(self.ef, n) * self.m >= self._graph.num_elements

    def search(self, queries: np.ndarray, n: int) -> np.ndarray:
        n = min(n, self._graph.num_elements)
        if self.searches_exactly(n):
            return exact_top(queries, self._vectors, n)[0]
        found, _ = self._graph.query(np.ascontiguousarray(angular_queries(queries, self._transform), np.float32),
                                     k=n, query_ef=max(self.ef, n), num_threads=-1 if len(queries) >= 64 else 1)
        return found.reshape(len(queries), n).astype(np.int64)
