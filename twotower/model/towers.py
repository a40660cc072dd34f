"""Towers: modules that map ids of one side (users or items) to vectors of a shared dimension.

- ``IdTower``: one learned vector per id.
- ``FeatureTower``: an MLP over side features (categorical, multi-hot, numeric; see ``data.features``),
  plus a learned vector per id for ids seen in training. An id without training interactions, or a new
  one given only its features, is embedded from its features alone (cold start).
- ``HistoryTower`` (users only): the mean of learned vectors of the items the user interacted with,
  optionally beside a learned vector per user. A new user is embedded from a list of items, without retraining.

Towers are built from plain-value specs (``build_tower``) so checkpoints load without the data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from twotower.data.features import FeatureSpec
from twotower.errors import TwoTowerError


def in_chunks(tower: nn.Module, n: int, device: torch.device, chunk: int = 65536) -> torch.Tensor:
    """The vectors of all ``n`` ids of a tower that computes them, a chunk of ids at a time (bounded memory)."""
    return torch.cat([tower(torch.arange(start, min(start + chunk, n), device=device)) for start in range(0, n, chunk)])


class IdTower(nn.Module):
    """One learned vector per id: an embedding table.

    ``sparse=True`` makes its gradient cover only the rows a batch touched, so that with a sparse-aware
    optimizer (``twotower.model.optim.RowWiseAdagrad``; ``model=sparse``) a step costs the same however many ids
    exist.
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
        return in_chunks(self, len(self.known), self.known.device)


class HistoryTower(nn.Module):
    """A user is the mean of the vectors of the items they interacted with (their history), and, with
    ``use_id``, also a learned vector of their own.

    - With ``use_id`` the user vector is two parts side by side (``blocks = 2``): the ID vector, then the
      history mean, each of ``dim`` values; the item tower is twice as wide to match, and each part is scored
      and trained as a model of its own (``TwoTowerModel``), the score being their sum: each part keeps
      what it is good at (the ID part a user's own taste, the history part what their items share), where
      one vector of both is pulled between them.

    - The history vectors are a table of their own (``history``, one row per item), not the item tower's:
      an item's role as evidence about a user differs from its role as a candidate, and with separate
      tables the score is an asymmetric item-item model (as in FISM, or EASE's weights at low rank).
    - Each user's history is kept in buffers (``history_indptr``, ``history_items``: compressed rows, filled by
      ``load_history``) that travel with the checkpoint, so the tower embeds known users without the data.
    - Training (``leave_own_out``) drops each history item with probability ``dropout`` (a denoising
      regulariser) and reports each remaining item's share of its user's vector, so that the loss scores
      a positive with a user vector that leaves that positive out: otherwise the tower learns to copy.
    - Histories are not capped: a batch's history is its users' positives, which the loss scores anyway.
    """

    def __init__(self, n: int, dim: int, n_items: int, use_id: bool = True, dropout: float = 0.5,
                 init_std: float = 0.1) -> None:
        super().__init__()
        if not 0 <= dropout < 1:
            raise TwoTowerError(f"the history tower's dropout must be in [0, 1), got {dropout}")
        self.dropout = dropout
        self.blocks = 2 if use_id else 1
        self.history = nn.Embedding(n_items, dim)
        nn.init.normal_(self.history.weight, std=init_std)
        self.embedding = nn.Embedding(n, dim) if use_id else None
        if self.embedding is not None:
            nn.init.normal_(self.embedding.weight, std=init_std)
        self.register_buffer("history_indptr", torch.zeros(n + 1, dtype=torch.long))
        self.register_buffer("history_items", torch.zeros(0, dtype=torch.long))

    def load_history(self, indptr: torch.Tensor, items: torch.Tensor) -> None:
        """Each user's items as compressed rows: ``items[indptr[u]:indptr[u + 1]]``."""
        if len(indptr) != len(self.history_indptr):
            raise TwoTowerError(f"a history for {len(indptr) - 1} users given to a tower of "
                                f"{len(self.history_indptr) - 1}")
        # Copies: loading a checkpoint writes into these buffers, which must not alias the caller's arrays.
        self.history_indptr = indptr.to(self.history_indptr, copy=True)
        self.history_items = items.to(self.history_items, copy=True)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        # The histories' length is the data's, not a hyperparameter: take the checkpoint's (where it has them; a
        # warm start loads parameters alone and keeps the histories it was built with).
        if prefix + "history_items" in state_dict:
            self.history_items = torch.empty_like(state_dict[prefix + "history_items"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        """Vectors of known users from their whole stored histories (an empty one counts as zero): (users, dim)."""
        items, offsets, _ = self._histories(users)
        return self._beside_id(users, F.embedding_bag(items, self.history.weight, offsets, mode="mean"))

    def _histories(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``users``' stored histories as one bag each: (their items, each bag's offset, each bag's length)."""
        starts, ends = self.history_indptr[users], self.history_indptr[users + 1]
        lengths = ends - starts
        offsets = torch.cumsum(lengths, 0) - lengths
        positions = torch.arange(int(lengths.sum()), device=users.device) - torch.repeat_interleave(offsets - starts,
                                                                                                   lengths)
        return self.history_items[positions], offsets, lengths

    def leave_item_out(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The user vectors of (user, item) training pairs (losses over pairs), each user's history part the
        mean of its history without that pair's item, so that no positive is predicted from itself:
        (pairs, blocks * dim). (``dropout`` is for losses over users, ``leave_own_out``.)"""
        bags, offsets, lengths = self._histories(users)
        sums = F.embedding_bag(bags, self.history.weight, offsets, mode="sum")  # (pairs, dim)
        without = (sums - self.history(items)) / (lengths - 1).clamp(min=1).unsqueeze(-1).to(sums.dtype)
        return self._beside_id(users, without)

    def all(self) -> torch.Tensor:
        return in_chunks(self, len(self.history_indptr) - 1, self.history_indptr.device)

    def leave_own_out(self, users: torch.Tensor, rows: torch.Tensor, items: torch.Tensor,
                      draws: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A training batch's user vectors from their positives (``rows``: position in ``users``, ascending as
        ``UserItems.gather`` makes them; ``items``), each kept with probability 1 - dropout:
        ``(vectors (users, blocks * dim), kept (P,) bool, weights (P,))``. A user's history part (the last
        ``dim`` values) is the sum of ``weights[p] * history[items[p]]`` over their positives (``weights[p]``:
        one over the user's kept count, zero if dropped): taking positive ``p``'s term off that part before
        scoring ``p`` leaves ``p`` out of its own history. ``draws`` (P,): uniform numbers that decide which
        items are dropped (the batch's own, so that training is a function of the batches; fresh ones if None)."""
        draws = torch.rand(len(items), device=items.device) if draws is None else draws
        kept = draws >= self.dropout
        kept_counts = torch.bincount(rows[kept], minlength=len(users)).clamp(min=1)
        weights = (kept / kept_counts[rows]).to(self.history.weight.dtype)
        counts = torch.bincount(rows, minlength=len(users))
        # gathered, weighted and summed per user in one pass, never as a (positives, dim) tensor: a batch of
        # dense histories (ml-1m: about 110 items per user) has over a hundred times more positives than users
        vectors = F.embedding_bag(items, self.history.weight, torch.cumsum(counts, 0) - counts, mode="sum",
                                  per_sample_weights=weights)
        return self._beside_id(users, vectors), kept, weights

    def _beside_id(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return history if self.embedding is None else torch.cat([self.embedding(users), history], dim=-1)


def build_tower(spec: dict, n: int, dim: int, n_items: int | None = None) -> nn.Module:
    """A tower from its plain-value spec (as stored in the checkpoint's hyperparameters); ``n_items`` sizes
    a user history tower's table of item vectors."""
    kind = spec.get("kind", "id")
    options = {key: value for key, value in spec.items() if key != "kind"}
    if kind == "id":
        return IdTower(n, dim, **options)
    if kind == "features":
        return FeatureTower(n, dim, **options)
    if kind == "history":
        if n_items is None:
            raise TwoTowerError("a history tower embeds users from their items; use it as model.user_tower")
        return HistoryTower(n, dim, n_items, **options)
    raise TwoTowerError(f"unknown tower kind '{kind}'; choose id, features or history")
