"""Towers: modules that map ids of one side (users or items) to vectors of a shared dimension."""

from __future__ import annotations

import torch
from torch import nn


class IdTower(nn.Module):
    """One learned vector per id: an embedding table."""

    def __init__(self, n: int, dim: int, init_std: float = 0.1) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n, dim)
        nn.init.normal_(self.embedding.weight, std=init_std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids)  # (batch, dim)

    def all(self) -> torch.Tensor:
        """Vectors of every id, in index order: (n, dim)."""
        return self.embedding.weight


def build_tower(spec: dict, n: int, dim: int) -> nn.Module:
    """A tower from its plain-value spec (as stored in the checkpoint's hyperparameters)."""
    kind = spec.get("kind", "id")
    options = {key: value for key, value in spec.items() if key != "kind"}
    if kind == "id":
        return IdTower(n, dim, **options)
    raise ValueError(f"unknown tower kind '{kind}'")
