"""Annoy over the angular metric: approximate, memory-mapped, shareable between processes.

Annoy's own ``dot`` metric has a tree-building bug in its released versions that can crush recall, so
dot-product search is mapped onto ``angular`` (``twotower.index.angular``).
"""

from __future__ import annotations

import copy
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from annoy import AnnoyIndex as _Annoy

from twotower import checks
from twotower.errors import RunError
from twotower.files import atomic_path
from twotower.index.angular import angular_items, angular_queries
from twotower.index.approximate import ApproximateIndex
from twotower.index.exact import exact_top


class AnnoyIndex(ApproximateIndex):
    """Annoy over the angular metric (see the module docstring for how dot products get there).

    ``n_trees`` trades build time and size for recall; ``search_k`` (nodes inspected per query, default
    ``search_k_factor * n * n_trees`` for n results) trades query time for recall; when it reaches the
    catalogue size the search is done exactly instead (small catalogues, users with long histories,
    which need many candidates to survive the filtering of seen items). ``target_recall``: the recall@10
    the build makes sure of (``twotower.index.tuning``), raising the search budget, then the trees, or
    serving exactly (``exact``) where neither reaches it more cheaply. ``build_threads`` > 1 builds
    faster, but not reproducibly.
    """

    backend = "annoy"
    FILE = "items.ann"

    MAX_TREE_DOUBLINGS = 2  # the tuning builds at most 4x the configured trees

    def __init__(self, n_trees: int = 50, search_k: int | None = None, search_k_factor: int = 10,
                 seed: int = 0, build_threads: int = 1, target_recall: float | None = 0.95,
                 exact_when_faster: bool = True, exact: bool = False) -> None:
        # Checked before anything is built: zero trees would replace a working index by an empty one,
        # negative counts make Annoy build forever, a zero search budget returns nothing.
        self.n_trees = checks.integer("index.n_trees", n_trees, 1)
        self.search_k = checks.integer("index.search_k", search_k, 1, optional=True)
        self.search_k_factor = checks.integer("index.search_k_factor", search_k_factor, 1)
        super().__init__(seed, build_threads, target_recall, exact_when_faster, exact)
        self._configured = (n_trees, search_k, search_k_factor)  # where the tuning starts from
        self._annoy: _Annoy | None = None

    def params(self) -> dict[str, Any]:
        return {"n_trees": self.n_trees, "search_k": self.search_k, "search_k_factor": self.search_k_factor,
                **self.shared_params()}

    def describe(self) -> str:
        budget = f"search_k {self.search_k}" if self.search_k else f"search_k_factor {self.search_k_factor}"
        return "exact search" if self.exact else f"{self.n_trees} trees, {budget}"

    def widened(self) -> AnnoyIndex | None:
        """Twice the search budget over the same trees, unless ten results would then cost a visit of the
        whole catalogue."""
        wider = copy.copy(self)
        if self.search_k:
            wider.search_k = self.search_k * 2
        else:
            wider.search_k_factor = self.search_k_factor * 2
        return None if wider.searches_exactly(10) else wider

    def deepened(self) -> AnnoyIndex | None:
        """Twice the trees, searched from the configured budget upwards (a build must follow); None once that
        would pass four times the configured trees."""
        trees, search_k, search_k_factor = self._configured
        if self.n_trees * 2 > trees << self.MAX_TREE_DOUBLINGS:
            return None
        deeper = copy.copy(self)
        deeper.n_trees, deeper.search_k, deeper.search_k_factor, deeper._annoy = self.n_trees * 2, search_k, \
            search_k_factor, None
        return deeper

    def build(self, vectors: np.ndarray, score: str, folder: Path) -> dict[str, Any]:
        items, transform, max_norm = angular_items(vectors, score)
        annoy = _Annoy(items.shape[1], "angular")
        annoy.set_seed(self.seed)
        for index, vector in enumerate(items):
            annoy.add_item(index, vector)
        annoy.build(self.n_trees, n_jobs=self.build_threads)  # one thread: a seeded build is reproducible
        # Saved beside its name and renamed over it: an index that maps the file it replaces keeps its pages.
        with atomic_path(folder / self.FILE) as temporary:
            annoy.save(str(temporary), prefault=False)
        annoy.unload()
        return {"metric": "angular", "transform": transform, "index_dim": items.shape[1], "max_norm": max_norm}

    def load(self, vectors: np.ndarray, meta: dict[str, Any], folder: Path) -> None:
        self._vectors = vectors
        self._transform = meta["transform"]
        self._annoy = self._open(folder, meta["index_dim"])
        if self._annoy.get_n_items() != meta["n_items"]:
            raise RunError(f"{folder / self.FILE} holds {self._annoy.get_n_items()} items but its "
                                f"metadata says {meta['n_items']}; rebuild the index")

    def _search_k(self, n: int) -> int:
        """Nodes to inspect for ``n`` results."""
        return self.search_k or self.search_k_factor * min(n, self._annoy.get_n_items()) * self.n_trees

    def searches_exactly(self, n: int) -> bool:
        """Whether a search for ``n`` results would visit the whole catalogue, and so is done by brute force
        (faster, and exact), or the tuning chose exact search."""
        return self.exact or self._search_k(n) >= self._annoy.get_n_items()

    def search(self, queries: np.ndarray, n: int) -> np.ndarray:
        n = min(n, self._annoy.get_n_items())
        if self.searches_exactly(n):
            return exact_top(queries, self._vectors, n)[0]
        search_k = self._search_k(n)
        queries = angular_queries(queries, self._transform)
        found = np.full((len(queries), n), -1, dtype=np.int64)

        def one(row: int) -> None:
            neighbours = self._annoy.get_nns_by_vector(queries[row], n, search_k)
            found[row, :len(neighbours)] = neighbours

        if len(queries) < 64:
            for row in range(len(queries)):
                one(row)
        else:  # Annoy releases the GIL while it searches, so threads use every core
            with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
                list(pool.map(one, range(len(queries))))
        return found

    def _open(self, folder: Path, dim: int) -> _Annoy:
        path = folder / self.FILE
        if not path.exists():
            raise RunError(f"missing index file {path}; rebuild the index")
        annoy = _Annoy(dim, "angular")
        try:
            annoy.load(str(path), prefault=False)  # memory-mapped: processes share the pages
        except OSError as error:
            raise RunError(f"cannot load index file {path} ({error}); it is damaged: rebuild it") from error
        return annoy
