"""Exported vectors: ``embeddings/users.parquet`` and ``embeddings/items.parquet`` of a run.

Each file has ``id`` (the original id, original dtype) and ``vector`` (list of float32), in vocabulary
index order. Ranking items by the dot product of these vectors is exactly the model's ranking.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from twotower.errors import TwoTowerError
from twotower.files import read_parquet, write_parquet


def write_vectors(ids: pl.Series, vectors: np.ndarray, path: Path) -> None:
    if len(ids) != len(vectors):
        raise ValueError(f"{len(ids)} ids but {len(vectors)} vectors")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    column = pl.Series("vector", vectors).cast(pl.List(pl.Float32))
    write_parquet(pl.DataFrame([ids.alias("id"), column]), path)


def read_vectors(path: Path) -> tuple[pl.Series, np.ndarray]:
    """``(ids, vectors)`` with vectors as a writable, C-contiguous float32 (n, dim) array."""
    frame = read_parquet(path)
    if frame.columns != ["id", "vector"]:
        raise TwoTowerError(f"{path}: expected columns ['id', 'vector'], found {frame.columns}")
    lengths = frame["vector"].list.len().unique()
    if len(lengths) != 1:
        raise TwoTowerError(f"{path}: vectors have different lengths {sorted(lengths.to_list())[:5]}")
    flat = np.array(frame["vector"].explode().to_numpy(), dtype=np.float32)  # a copy: Polars' is read-only
    return frame["id"], flat.reshape(frame.height, int(lengths[0]))
