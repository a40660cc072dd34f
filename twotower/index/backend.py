"""The index backends, by the name their ``meta.json`` records."""

from __future__ import annotations

from typing import Any

from twotower.errors import TwoTowerError
from twotower.index.annoy import AnnoyIndex
from twotower.index.exact import ExactIndex
from twotower.index.hnsw import HnswIndex

Backend = ExactIndex | AnnoyIndex | HnswIndex
BACKENDS: dict[str, type[Backend]] = {backend.backend: backend for backend in (ExactIndex, AnnoyIndex, HnswIndex)}


def backend_from(name: object, params: dict[str, Any] | None = None) -> Backend:
    """A fresh backend of kind ``name`` with ``params`` (what ``meta.json`` records)."""
    if name not in BACKENDS:
        raise TwoTowerError(f"unknown index backend {name!r}; this version has {sorted(BACKENDS)}")
    return BACKENDS[name](**(params or {}))
