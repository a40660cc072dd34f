"""Towers: modules that map ids of one side (users or items) to vectors of a shared dimension.

- ``IdTower``: one learned vector per id.
- ``FeatureTower``: an MLP over side features (categorical, multi-hot, numeric; see ``data.features``),
  plus a learned vector per id for ids seen in training. An id without training interactions, or a new
  one given only its features, is embedded from its features alone (cold start).

Towers are built from plain-value specs (``build_tower``) so checkpoints load without the data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from twotower.data.features import FeatureSpec
from twotower.errors import TwoTowerError


class IdTower(nn.Module):
    """One learned vector per id: an embedding table.

    ``sparse=True`` makes its gradient cover only the rows a batch touched, so that with a sparse-aware
    optimizer (``torch.optim.SparseAdam``; ``model=sparse``) a step costs the same however many ids exist.
    With dense gradients, Adam updates every row on every step: fine for tens of thousands of ids, the
    bottleneck for millions.
    """

    def __init__(self, n: int, dim: int, init_std: float = 0.1, sparse: bool = False) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n, dim, sparse=sparse)
        nn.init.normal_(self.embedding.weight, std=init_std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids)  # (batch, dim)

    def all(self) -> torch.Tensor:
        """Vectors of every id, in index order: (n, dim). A sparse table is looked up row by row, so that a
        loss over the whole catalogue still gives it the sparse gradient its optimizer takes."""
        if self.embedding.sparse:
            return self.embedding(torch.arange(self.embedding.num_embeddings, device=self.embedding.weight.device))
        return self.embedding.weight


class FeatureTower(nn.Module):
    """MLP(side features) + id vector; ids without training interactions use the features only.

    Feature tables live in buffers (``feature_<name>``: one row per id) so they travel with the
    checkpoint; ``load_features`` fills them after construction.
    """

    def __init__(self, n: int, dim: int, features: Sequence[FeatureSpec], use_id: bool = True,
                 hidden: Sequence[int] = (128,), feature_dim: int = 16, init_std: float = 0.1) -> None:
        super().__init__()
        if not features:
            raise TwoTowerError("a feature tower needs at least one feature (model.*_tower.features=[...])")
        self.specs = [dict(spec) for spec in features]
        self.tables = nn.ModuleDict()
        width = 0
        for spec in self.specs:
            name = spec["name"]
            if spec["kind"] == "numeric":
                self.register_buffer(f"feature_{name}", torch.zeros(n))
                width += 1
                continue
            size = len(spec["categories"]) + 1  # the last row stands for unknown / missing values
            if spec["kind"] == "categorical":
                self.tables[name] = nn.Embedding(size, feature_dim, padding_idx=size - 1)
                self.register_buffer(f"feature_{name}", torch.full((n,), size - 1, dtype=torch.long))
            else:
                self.tables[name] = nn.EmbeddingBag(size, feature_dim, mode="mean", padding_idx=size - 1)
                self.register_buffer(f"feature_{name}", torch.full((n, spec["width"]), size - 1, dtype=torch.long))
            width += feature_dim
        layers: list[nn.Module] = []
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, dim))
        self.mlp = nn.Sequential(*layers)
        self.embedding = nn.Embedding(n, dim) if use_id else None
        if self.embedding is not None:
            nn.init.normal_(self.embedding.weight, std=init_std)
        self.register_buffer("known", torch.ones(n, dtype=torch.bool))

    def load_features(self, tensors: dict[str, torch.Tensor], known: torch.Tensor | None = None) -> None:
        """Fill the feature tables (from ``data.features.encode_features``) and the ids seen in training."""
        for spec in self.specs:
            getattr(self, f"feature_{spec['name']}").copy_(tensors[spec["name"]])
        if known is not None:
            self.known.copy_(known)

    def embed_features(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Vectors from features alone: (rows, dim)."""
        parts = []
        for spec in self.specs:
            values = tensors[spec["name"]]
            numeric = spec["kind"] == "numeric"
            parts.append(values.float().unsqueeze(-1) if numeric else self.tables[spec["name"]](values))
        return self.mlp(torch.cat(parts, dim=-1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)  # negatives come as (batch, n); an EmbeddingBag takes one row per id
        features = {spec["name"]: getattr(self, f"feature_{spec['name']}")[flat] for spec in self.specs}
        vectors = self.embed_features(features)
        if self.embedding is not None:
            vectors = vectors + self.embedding(flat) * self.known[flat].unsqueeze(-1)
        return vectors.reshape(*ids.shape, -1)  # (*ids.shape, dim)

    def all(self) -> torch.Tensor:
        n = len(self.known)
        return torch.cat([self(torch.arange(start, min(start + 65536, n), device=self.known.device))
                          for start in range(0, n, 65536)])


def build_tower(spec: dict, n: int, dim: int) -> nn.Module:
    """A tower from its plain-value spec (as stored in the checkpoint's hyperparameters)."""
    kind = spec.get("kind", "id")
    options = {key: value for key, value in spec.items() if key != "kind"}
    if kind == "id":
        return IdTower(n, dim, **options)
    if kind == "features":
        return FeatureTower(n, dim, **options)
    raise TwoTowerError(f"unknown tower kind '{kind}'; choose id or features")
