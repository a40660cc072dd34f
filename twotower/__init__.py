"""Two-tower (dual-encoder) recommenders: Polars data, Lightning training, Annoy retrieval."""

from twotower.errors import TwoTowerError
from twotower.serving.retrieval import Retriever

__all__ = ["Retriever", "TwoTowerError"]
__version__ = "0.1.0"
