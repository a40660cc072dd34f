"""Two-tower (dual-encoder) recommenders: Polars data, Lightning training, Annoy retrieval."""

from twotower.errors import TwoTowerError

__all__ = ["TwoTowerError"]
__version__ = "0.1.0"
