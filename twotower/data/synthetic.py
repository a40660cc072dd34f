"""Synthetic interaction logs with a known right answer, and finished runs made of vectors, for tests and
benchmarks.

Users and items belong to ``n_clusters`` planted groups; a user picks items from their own group with
probability ``affinity`` (otherwise from anywhere), each pick weighted by a power-law item popularity. A
model that recovers the groups ranks a user's held-out items near the top; one that does not cannot.

``write_vector_run`` writes a finished run directory straight from clustered vectors, without training,
with the library's own writers: what retrieval and serving need, at any catalogue size, in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from twotower.data.splits import SPLIT_NAMES
from twotower.data.vocab import Vocabulary
from twotower.files import write_parquet
from twotower.index import Backend, build_index, exact_top
from twotower.run import Manifest, RunPaths, write_vectors


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


def write_vector_run(root: Path, index: Backend, n_users: int = 300, n_items: int = 2000, dim: int = 16,
                     seed: int = 0, item_id_offset: int = 0, titles: bool = False) -> Path:
    """A finished cosine run in ``root``: clustered unit vectors, users (``u0``, ``u1`` ...) near a cluster,
    each having seen 2-10 of their exact top-30 items (spread over the splits), item ids
    ``item_id_offset + 7 * i`` (titled ``Item <id>`` with ``titles``), and ``index`` built over the items."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(n_items // 100, 1), dim))
    items = clustered_unit_vectors(n_items, centres, 0.5, rng)
    users = clustered_unit_vectors(n_users, centres, 0.3, rng)
    paths = RunPaths(Path(root))
    user_ids = pl.Series([f"u{i}" for i in range(n_users)]).sort()  # in the order a vocabulary gives them
    item_ids = pl.Series(item_id_offset + np.arange(n_items, dtype=np.int64) * 7)
    info = pl.DataFrame({"id": item_ids, "title": [f"Item {i}" for i in item_ids]}) if titles else None
    Vocabulary.build(user_ids, "user").save(paths.vocab("users"))
    Vocabulary.build(item_ids, "item", info, "id").save(paths.vocab("items"))
    write_vectors(user_ids, users, paths.embeddings("users"))
    write_vectors(item_ids, items, paths.embeddings("items"))
    top, _ = exact_top(users, items, 30)
    seen = [rng.choice(row, size=rng.integers(2, 11), replace=False) for row in top]
    frame = pl.DataFrame({"user": np.repeat(np.arange(n_users), [len(s) for s in seen]).astype(np.int32),
                          "item": np.concatenate(seen).astype(np.int32)})
    labels = rng.integers(0, len(SPLIT_NAMES), frame.height)
    for code, name in enumerate(SPLIT_NAMES):
        write_parquet(frame.filter(pl.Series(labels == code)).sort("user", "item"), paths.split(name))
    build_index(index, items, "cosine", paths.index)
    Manifest(names={"user": "user", "item": "item"}, score="cosine", dim=dim, n_users=n_users, n_items=n_items,
             min_rating=None, checkpoint=None, trained_on=list(SPLIT_NAMES),
             fingerprints=paths.fingerprints()).write(paths)
    return paths.root
