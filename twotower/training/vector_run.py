"""A finished run directory straight from clustered vectors, without training, written with the library's own
writers: what retrieval and serving need, at any catalogue size, in seconds (tests and benchmarks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from twotower.data.splits import SPLIT_NAMES
from twotower.data.synthetic import clustered_unit_vectors
from twotower.data.vocab import Vocabulary
from twotower.files import write_parquet
from twotower.index import Backend, build_index, exact_top
from twotower.run import Manifest, RunPaths, write_vectors


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
