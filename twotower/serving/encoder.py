"""Embedding at serving time what training never saw: new users or items from their side features, through
the run's own towers, rebuilt from its checkpoint by ``twotower.model.towers.load_tower`` (never the
LightningModule, and never the training data)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from twotower.errors import RunError, TwoTowerError
from twotower.run import Run

if TYPE_CHECKING:
    from twotower.model.towers import Tower


class TowerEncoder:
    """The run's towers, loaded on first use (they need PyTorch, which retrieval by vectors does not)."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self._towers: dict[str, Tower] = {}
        self._loading = threading.Lock()

    def tower(self, side: str) -> Tower:
        """The run's ``side`` (user or item) tower."""
        with self._loading:
            if side not in self._towers:
                import torch

                from twotower.model.towers import load_tower

                checkpoint = self.run.manifest.checkpoint
                if not checkpoint:
                    raise RunError(f"{self.run.root} has no checkpoint, so it has no towers to embed with")
                saved = torch.load(self.run.root / checkpoint, map_location="cpu", weights_only=False)
                self._towers[side] = load_tower(saved, side)
            return self._towers[side]

    def features(self, side: str) -> list[str]:
        """The side features the run's ``side`` tower reads (none for a tower without features)."""
        return [spec["name"] for spec in getattr(self.tower(side), "specs", [])]

    def embed_features(self, side: str, features: pl.DataFrame) -> np.ndarray:
        """Vectors for new users or items from their side features alone (cold start), in the run's space:
        ``features`` has one row per new id and the feature columns the tower was trained with (missing values
        are allowed)."""
        import torch

        from twotower.data.features import encode_features
        from twotower.model.scoring import project

        tower = self.tower(side)
        if not hasattr(tower, "embed_features"):
            name = self.run.names.get(side, side)
            raise TwoTowerError(f"this run's {name} tower uses no features, so new {name}s cannot be embedded; "
                                "use unknown='popular'")
        with torch.no_grad():
            vectors = tower.embed_features(encode_features(features, tower.specs))
            return project(vectors, self.run.score, self.run.manifest.parts).numpy()

    def encode_sequences(self, histories: list[np.ndarray]) -> np.ndarray:
        """The user vectors of ordered histories of item rows (most recent last), read by the run's sequence
        tower: (histories, dim), in the space of the index."""
        import torch

        from twotower.data.batches import last_items
        from twotower.data.user_items import UserItems
        from twotower.model.scoring import project

        tower = self.tower("user")
        lengths = np.array([len(rows) for rows in histories], dtype=np.int64)
        sequences = UserItems(np.concatenate([[0], np.cumsum(lengths)]),
                              np.concatenate(histories).astype(np.int64) if len(histories) else np.zeros(0, np.int64))
        inputs = torch.from_numpy(last_items(sequences, np.arange(len(histories)), tower.max_length))
        with torch.no_grad():
            return project(tower.encode_last(inputs), self.run.score).numpy()
