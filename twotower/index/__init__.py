"""Nearest-neighbour indexes over item vectors whose metric follows the model's score.

Every backend answers "which items have the largest dot product with this query vector" for vectors from
``embeddings/`` (already normalised for cosine models):

- ``ExactIndex`` (``exact``): brute force, a batched matrix product. Ground truth, and right for small
  catalogues.
- ``AnnoyIndex`` (``annoy``, the default): a forest of random-projection trees; memory-mapped, so worker
  processes share its pages.
- ``HnswIndex`` (``hnsw``): a graph index; more queries per second than Annoy at the same recall on trained
  vectors, loaded into each process's memory.

Approximate backends are tuned at build to a target recall against exact search (``tuning``); an index
directory holds ``meta.json`` and the backend's files (``store``). Every backend is a ``Backend``; the
approximate ones are ``Tunable``.

The index imports only the shared helpers: it knows vectors and rows, not the data or the run directory.
"""

from twotower.index.annoy import AnnoyIndex
from twotower.index.backend import BACKENDS, Backend, Tunable, backend_from
from twotower.index.exact import ExactIndex, exact_top
from twotower.index.hnsw import HnswIndex
from twotower.index.search import rank_candidates, recall_against_exact, search_excluding
from twotower.index.store import build_for_run, build_index, load_index, read_meta, read_report
from twotower.index.tuning import Probe

__all__ = ["BACKENDS", "AnnoyIndex", "Backend", "ExactIndex", "HnswIndex", "Probe", "Tunable", "backend_from",
           "build_for_run", "build_index", "exact_top", "load_index", "rank_candidates", "read_meta", "read_report",
           "recall_against_exact", "search_excluding"]
