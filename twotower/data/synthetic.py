"""Synthetic interaction logs with a known right answer, and clustered vectors, for tests and benchmarks.

Users and items belong to ``n_clusters`` planted groups; a user picks items from their own group with
probability ``affinity`` (otherwise from anywhere), each pick weighted by a power-law item popularity. A
model that recovers the groups ranks a user's held-out items near the top; one that does not cannot.

``clustered_unit_vectors`` makes vectors of the same kind: ``twotower.training.vector_run`` writes a
finished run of them.
"""

from __future__ import annotations

import numpy as np
import polars as pl


def planted_interactions(
    n_users: int = 1000,
    n_items: int = 500,
    n_clusters: int = 20,
    interactions_per_user: int = 20,
    affinity: float = 0.9,
    popularity_exponent: float = 1.0,
    seed: int = 0,
    with_timestamps: bool = True,
) -> pl.DataFrame:
    """A log with ``user_id``, ``item_id`` (and ``timestamp``): ``interactions_per_user`` distinct items per
    user where the catalogue allows. Item popularity follows a Zipf law with ``popularity_exponent``."""
    rng = np.random.default_rng(seed)
    user_cluster = rng.integers(n_clusters, size=n_users)
    item_cluster = rng.permutation(np.arange(n_items) % n_clusters)
    popularity = 1.0 / np.arange(1, n_items + 1) ** popularity_exponent
    popularity = popularity[rng.permutation(n_items)]  # popular items spread over every cluster

    # Per-cluster cumulative popularity, so each pick is one binary search (no per-row Python).
    order = np.argsort(item_cluster, kind="stable")
    cluster_start = np.searchsorted(item_cluster[order], np.arange(n_clusters + 1))
    weights = popularity[order]
    cumulative = np.concatenate([[0.0], np.cumsum(weights)])

    draws_per_user = 2 * interactions_per_user  # repeats are dropped below, so draw more than needed
    total = n_users * draws_per_user
    users = np.repeat(np.arange(n_users), draws_per_user)
    in_cluster = rng.random(total) < affinity
    clusters = user_cluster[users]
    low = np.where(in_cluster, cumulative[cluster_start[clusters]], 0.0)
    high = np.where(in_cluster, cumulative[cluster_start[clusters + 1]], cumulative[-1])
    draws = low + rng.random(total) * (high - low)
    positions = np.clip(np.searchsorted(cumulative, draws, side="right") - 1, 0, n_items - 1)
    items = order[positions]

    frame = pl.DataFrame({"user_id": users.astype(np.int64), "item_id": items.astype(np.int64)})
    if with_timestamps:
        frame = frame.with_columns(timestamp=pl.Series(rng.integers(0, 10**9, size=total)))
    frame = frame.unique(["user_id", "item_id"], keep="first", maintain_order=True)
    return frame.filter(pl.int_range(pl.len()).over("user_id") < interactions_per_user)


def clustered_unit_vectors(n: int, centres: np.ndarray, spread: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` unit vectors, each a random centre plus Gaussian noise of ``spread``."""
    vectors = centres[rng.integers(0, len(centres), n)] + spread * rng.normal(size=(n, centres.shape[1]))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
