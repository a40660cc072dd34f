"""Dot products as angles, so that an angular (cosine) index ranks by the model's score.

Items get one extra coordinate ``sqrt(M^2 - |x|^2)`` (M the largest item norm) and queries a 0, which makes
the angle order equal the dot-product order (Bachrach et al., 2014; ``implicit`` calls it
``augment_inner_product_matrix``). Cosine models index their unit vectors as they are.
"""

from __future__ import annotations

import numpy as np


def angular_items(vectors: np.ndarray, score: str) -> tuple[np.ndarray, str, float]:
    """``(items to index, transform, M)``: the vectors as an angular index holds them."""
    if score == "cosine":
        return vectors, "unit_vectors", 1.0
    norms = np.linalg.norm(vectors, axis=1)
    max_norm = float(norms.max()) if len(norms) else 0.0
    extra = np.sqrt(np.clip(max_norm**2 - norms**2, 0.0, None))  # clip: rounding can make it < 0
    return np.hstack([vectors, extra[:, None]]).astype(np.float32), "dot_to_angular", max_norm


def angular_queries(queries: np.ndarray, transform: str) -> np.ndarray:
    """Queries as the index compares them with its items (a 0 in the extra coordinate of dot products)."""
    if transform != "dot_to_angular":
        return queries
    return np.hstack([queries, np.zeros((len(queries), 1), dtype=queries.dtype)])
