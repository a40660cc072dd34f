"""Nearest-neighbour indexes over item vectors whose metric follows the model's score.

Both backends answer "which items have the largest dot product with this query vector" for vectors from
``embeddings/`` (already normalised for cosine models):

- ``ExactIndex``: brute force, a batched matrix product. Ground truth, and right for small catalogues.
- ``AnnoyIndex``: approximate, memory-mapped, shareable between processes. Annoy's own ``dot`` metric has
  a tree-building bug in the released 1.17.3 that can crush recall, so dot-product search is mapped onto
  the ``angular`` metric: items get one extra coordinate ``sqrt(M^2 - |x|^2)`` (M the largest item norm)
  and queries a 0, which makes the angle order equal the dot-product order (Bachrach et al., 2014).
  Cosine models index their unit vectors with ``angular`` directly.

An index directory holds ``meta.json`` (backend, metric, transform, dimensions, fingerprints of the
vectors and checkpoint it was built from) and the backend's files. ``meta.json`` is written last, so a
directory without it is an unfinished build; loading checks every recorded fact against the run.
"""

from twotower.index.annoy import AnnoyIndex
from twotower.index.exact import ExactIndex, exact_top
from twotower.index.search import index_report, rank_candidates, recall_against_exact, search_excluding
from twotower.index.store import Backend, backend_from, build_index, load_index, read_meta

__all__ = ["AnnoyIndex", "Backend", "ExactIndex", "backend_from", "build_index", "exact_top", "index_report",
           "load_index", "rank_candidates", "read_meta", "recall_against_exact", "search_excluding"]
