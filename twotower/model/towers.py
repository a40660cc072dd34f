"""Towers: modules that map ids of one side (users or items) to vectors of a shared dimension.

- ``IdTower``: one learned vector per id.
- ``FeatureTower``: an MLP over side features (categorical, multi-hot, numeric; see ``data.features``),
  plus a learned vector per id for ids seen in training. An id without training interactions, or a new
  one given only its features, is embedded from its features alone (cold start).
- ``HistoryTower`` (users only): the mean of learned vectors of the items the user interacted with,
  optionally beside a learned vector per user. A new user is embedded from a list of items, without retraining.
- ``SequenceTower`` (users only): causal self-attention over the user's last items in order (SASRec); a new
  user is embedded from an ordered list of items, most recent last.

Every tower is a ``Tower``: besides its vectors it says how it makes the user vectors of a training batch
(``for_pairs``, ``for_users``: a history tower leaves each positive out of its own user's vector), what it
reads from the training data (``attach``) and what it exports beside the vectors (``exports``), so that the
model and training never ask which tower they hold. Towers are built from plain-value ``_target_`` specs
(``build_tower``) so checkpoints load without the data, and ``load_tower`` rebuilds one tower of a
checkpoint alone (serving embeds new users and items with it, without the LightningModule).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from twotower import checks
from twotower.data.batches import RankingBatch, SequenceBatch, UserBatch, last_items
from twotower.data.features import FeatureSpec
from twotower.data.user_items import UserItems
from twotower.errors import ConfigError


class TrainingData(Protocol):
    """What a tower may read from the data it trains on (``InteractionDataModule`` is one). ``sharded``: the data
    holds one process's share of the users (a prepared log), whose histories are this process's own."""

    sharded: bool

    def side_features(self, side: str, specs: list[FeatureSpec]) -> tuple[dict[str, torch.Tensor], torch.Tensor]: ...

    def training_user_items(self) -> UserItems: ...

    def training_item_counts(self) -> np.ndarray: ...


@dataclass(frozen=True)
class TrainingUsers:
    """The user vectors of a batch of users, as a loss over users trains them.

    ``own_logits``, for a tower that builds users from their positives: given the last part's vectors of the
    items scored (the catalogue, or the batch's sample of it) and of the positives (None when the whole
    catalogue is scored), what each positive's own presence in its user's history adds to its logit (P,),
    before the user's norm and the temperature: the loss takes it off, so that no positive predicts itself.
    """

    vectors: torch.Tensor  # (users, parts * dim)
    own_logits: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None


class Tower(nn.Module):
    """What every tower is: vectors of ids (``forward``, ``all``), ``parts`` side by side in each vector, and
    the hooks through which training uses it without knowing its kind."""

    parts = 1  # parts side by side in each vector, each scored and normalised on its own
    embeds_users_from_items = False  # a user tower only, built with the catalogue's size (n_items)
    reads_order = False  # trains on each user's items in order (SequenceBatch), which the data must keep
    # An evaluation encodes each user from the items it counts as seen, not from what the tower was given at
    # training: a model exported without a final fit then encodes every interaction given, as its test pass did.
    encodes_what_was_seen = False

    def all(self) -> torch.Tensor:
        """Vectors of every id, in index order: (n, parts * dim)."""
        raise NotImplementedError

    def for_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The user vectors of (user, positive item) training pairs: (pairs, parts * dim)."""
        return self(users)

    def for_users(self, batch: UserBatch) -> TrainingUsers:
        """The user vectors of a batch of users with all their positives."""
        return TrainingUsers(self(batch.users))

    def for_ranking(self, batch: RankingBatch) -> torch.Tensor:
        """The vectors of the users an evaluation ranks (the seen items of ``batch`` are what each has)."""
        return self(batch.users)

    def attach(self, data: TrainingData, side: str) -> None:
        """Read what the tower needs from the data it now trains on (``side``: user or item)."""

    def exports(self) -> dict[str, torch.Tensor]:
        """Tables written beside the exported vectors, by name (``embeddings/NAME.parquet``, one row per item)."""
        return {}


def in_chunks(tower: nn.Module, n: int, device: torch.device, chunk: int = 65536) -> torch.Tensor:
    """The vectors of all ``n`` ids of a tower that computes them, a chunk of ids at a time (bounded memory)."""
    return torch.cat([tower(torch.arange(start, min(start + chunk, n), device=device)) for start in range(0, n, chunk)])


class IdTower(Tower):
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


class FeatureTower(Tower):
    """MLP(side features) + id vector; ids without training interactions use the features only.

    Feature tables live in buffers (``feature_<name>``: one row per id) so they travel with the
    checkpoint; ``load_features`` fills them after construction.
    """

    def __init__(self, n: int, dim: int, features: Sequence[FeatureSpec], use_id: bool = True,
                 hidden: Sequence[int] = (128,), feature_dim: int = 16, init_std: float = 0.1) -> None:
        super().__init__()
        if not features:
            raise ConfigError("a feature tower needs at least one feature (model.user_tower.features=[...] or "
                              "model.item_tower.features=[...])")
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

    def attach(self, data: TrainingData, side: str) -> None:
        self.load_features(*data.side_features(side, self.specs))

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


class HistoryTower(Tower):
    """A user is the mean of the vectors of the items they interacted with (their history), and, with
    ``use_id``, also a learned vector of their own.

    - With ``use_id`` the user vector is two parts side by side (``parts = 2``): the ID vector, then the
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

    embeds_users_from_items = True

    def __init__(self, n: int, dim: int, n_items: int, use_id: bool = True, dropout: float = 0.5,
                 init_std: float = 0.1) -> None:
        super().__init__()
        self.dropout = checks.number("model.user_tower.dropout", dropout, at_least=0, below=1)
        self.parts = 2 if checks.flag("model.user_tower.use_id", use_id) else 1
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
            raise ValueError(f"a history for {len(indptr) - 1} users given to a tower of "
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

    def attach(self, data: TrainingData, side: str) -> None:
        history = data.training_user_items()
        self.load_history(torch.from_numpy(history.indptr), torch.from_numpy(history.items))

    def exports(self) -> dict[str, torch.Tensor]:
        return {"history": self.history.weight}  # what embeds a new user at retrieval

    def for_pairs(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.leave_item_out(users, items)

    def for_users(self, batch: UserBatch) -> TrainingUsers:
        vectors, _, weights = self.leave_own_out(batch.users, batch.rows, batch.items, batch.draws)
        return TrainingUsers(vectors, lambda catalogue, positives: self.own_logits(batch.items, weights, catalogue,
                                                                                     positives))

    def own_logits(self, items: torch.Tensor, weights: torch.Tensor, catalogue: torch.Tensor,
                   positives: torch.Tensor | None) -> torch.Tensor:
        """(P,): what each positive's own history vector adds to its logit, ``weights[p] * h_i . v_i`` (before
        the user's norm and the temperature). With the whole catalogue, ``h_i . v_i`` is taken once per item
        and gathered, rather than gathering (positives, dim) vectors; a sampled catalogue has the positives'."""
        if positives is None:
            return torch.linalg.vecdot(self.history.weight, catalogue).index_select(0, items) * weights
        return torch.linalg.vecdot(self.history(items), positives) * weights

    def leave_item_out(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The user vectors of (user, item) training pairs (losses over pairs), each user's history part the
        mean of its history without that pair's item, so that no positive is predicted from itself:
        (pairs, parts * dim). (``dropout`` is for losses over users, ``leave_own_out``.)"""
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
        ``(vectors (users, parts * dim), kept (P,) bool, weights (P,))``. A user's history part (the last
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
        # dense histories has many times more positives than users
        vectors = F.embedding_bag(items, self.history.weight, torch.cumsum(counts, 0) - counts, mode="sum",
                                  per_sample_weights=weights)
        return self._beside_id(users, vectors), kept, weights

    def _beside_id(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return history if self.embedding is None else torch.cat([self.embedding(users), history], dim=-1)


class SequenceTower(Tower):
    """A user is the order of what they did: causal self-attention over their last ``max_length`` items, with
    learned positions (SASRec, Kang and McAuley 2018), the state at the last item their vector.

    - Training (``SequenceBatch``) reads every position: the state after each item predicts the next one, and
      no state sees a later item (the attention is causal, and the start of a short sequence is padding that
      no real position attends to).
    - The input vectors are a table of the tower's own (as the history tower's), one row per item and one for
      padding; the items the user vectors meet are the item tower's, so the index and ``similar_items`` are
      those of any run.
    - Each user's items, in order, are kept in buffers that travel with the checkpoint (``attach``): a known
      user's vector is the encoding of their sequence; a new user's, that of an ordered list of items
      (``encode``), which serving calls through ``load_tower``.
    - An evaluation encodes each user's seen items in order (train for validation, train + valid for test),
      so that the test item is predicted from everything before it.
    """

    embeds_users_from_items = True
    reads_order = True
    encodes_what_was_seen = True

    def __init__(self, n: int, dim: int, n_items: int, max_length: int = 50, blocks: int = 2, heads: int = 2,
                 dropout: float = 0.2, init_std: float = 0.02) -> None:
        super().__init__()
        self.max_length = checks.integer("model.user_tower.max_length", max_length, 1)
        checks.integer("model.user_tower.blocks", blocks, 1)
        checks.integer("model.user_tower.heads", heads, 1)
        if dim % heads:
            raise ConfigError(f"model.dim ({dim}) must be a multiple of model.user_tower.heads ({heads})")
        checks.number("model.user_tower.dropout", dropout, at_least=0, below=1)
        self.n_items = n_items
        self.heads = heads
        self.items = nn.Embedding(n_items + 1, dim, padding_idx=n_items)  # the last row: no item (padding)
        self.positions = nn.Embedding(self.max_length, dim)
        for table in (self.items, self.positions):
            nn.init.normal_(table.weight, std=init_std)
        with torch.no_grad():
            self.items.weight[n_items].zero_()
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=dim, dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.input_dropout = nn.Dropout(dropout)
        self.register_buffer("sequence_indptr", torch.zeros(n + 1, dtype=torch.long))
        self.register_buffer("sequence_items", torch.zeros(0, dtype=torch.long))

    def attach(self, data: TrainingData, side: str) -> None:
        sequences = data.training_user_items()  # each user's items in order: the data keeps it for this tower
        self.sequence_indptr = torch.tensor(sequences.indptr, dtype=torch.long, device=self.sequence_indptr.device)
        self.sequence_items = torch.tensor(sequences.items, dtype=torch.long, device=self.sequence_items.device)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        # The sequences' length is the data's, not a hyperparameter: take the checkpoint's.
        if prefix + "sequence_items" in state_dict:
            self.sequence_items = torch.empty_like(state_dict[prefix + "sequence_items"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """(users, L, dim): the state after each position of ``inputs`` (users, L), item rows right-aligned
        with ``-1`` before a sequence's first item, each state seeing that position and the ones before it."""
        length = inputs.shape[1]
        if length > self.max_length:
            inputs, length = inputs[:, -self.max_length:], self.max_length
        pad = inputs < 0
        x = self.items(inputs.masked_fill(pad, self.n_items)) * self.items.embedding_dim ** 0.5
        x = x + self.positions(torch.arange(self.max_length - length, self.max_length, device=inputs.device))
        x = self.input_dropout(x.masked_fill(pad.unsqueeze(-1), 0.0))
        # Position t attends to s <= t that holds an item; a padding position to itself alone (never read).
        later = torch.ones(length, length, dtype=torch.bool, device=inputs.device).triu(1)
        blocked = later | pad.unsqueeze(1)
        blocked = blocked & ~torch.eye(length, dtype=torch.bool, device=inputs.device)
        mask = torch.zeros(blocked.shape, dtype=x.dtype, device=x.device).masked_fill(blocked, float("-inf"))
        mask = mask.repeat_interleave(self.heads, dim=0)  # (users * heads, L, L)
        return self.norm(self.encoder(x, mask=mask))

    def encode_last(self, inputs: torch.Tensor) -> torch.Tensor:
        """(users, dim): the state after each sequence's last item."""
        return self.encode(inputs)[:, -1]

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        """Vectors of known users from their stored sequences: (users, dim)."""
        sequences = UserItems(self.sequence_indptr.cpu().numpy(), self.sequence_items.cpu().numpy())
        inputs = last_items(sequences, users.cpu().numpy(), self.max_length)
        return self.encode_last(torch.from_numpy(inputs).to(users.device))

    def all(self) -> torch.Tensor:
        return in_chunks(self, len(self.sequence_indptr) - 1, self.sequence_indptr.device, chunk=4096)

    def for_users(self, batch: SequenceBatch) -> TrainingUsers:
        states = self.encode(batch.inputs)  # (users, L, dim)
        return TrainingUsers(states[batch.query_rows, batch.query_positions])  # (queries, dim)

    def for_ranking(self, batch: RankingBatch) -> torch.Tensor:
        seen = UserItems.from_pairs(batch.seen_rows.cpu().numpy(), batch.seen_items.cpu().numpy(), len(batch.users))
        inputs = last_items(seen, np.arange(len(batch.users)), self.max_length)
        return self.encode_last(torch.from_numpy(inputs).to(batch.users.device))


def build_tower(spec: dict[str, Any], side: str, n: int, dim: int, n_items: int) -> Tower:
    """The ``side`` (user or item) tower from its plain-value spec, as ``conf/model/*_tower/*.yaml`` write it and
    the checkpoint stores it: ``{"_target_": "twotower.model.towers.HistoryTower", "use_id": True}``; ``n`` ids
    of ``dim`` per part, ``n_items`` for a tower that embeds users from their items."""
    from hydra.utils import get_class  # a plain function: no Hydra app is needed to load a checkpoint

    target = spec.get("_target_")
    try:
        kind = get_class(target) if isinstance(target, str) else None
    except Exception:  # Hydra's import error, whatever its type: said as an unknown tower below
        kind = None
    if kind is None or not issubclass(kind, Tower):
        raise ConfigError(f"unknown tower {target!r}; choose one of {sorted(TOWERS)} "
                          "(model/user_tower=NAME, model/item_tower=NAME)")
    if kind.embeds_users_from_items and side != "user":
        raise ConfigError(f"a {kind.__name__} embeds users from their items; use it as model/user_tower")
    options = {key: value for key, value in spec.items() if key != "_target_"}
    checks.arguments(f"model.{side}_tower", kind, options)
    return kind(n, dim, n_items=n_items, **options) if kind.embeds_users_from_items else kind(n, dim, **options)


def load_tower(checkpoint: dict[str, Any], side: str) -> Tower:
    """One tower of a saved model (``side``: user or item), rebuilt from the checkpoint's hyperparameters and
    weights alone, in evaluation mode: what serving embeds with, without the LightningModule."""
    hparams = checkpoint["hyper_parameters"]
    user = build_tower(hparams["user_tower"], "user", hparams["n_users"], hparams["dim"], hparams["n_items"])
    tower = user if side == "user" else build_tower(hparams["item_tower"], "item", hparams["n_items"],
                                                    hparams["dim"] * user.parts, hparams["n_items"])
    prefix = f"{side}_tower."
    state = {name[len(prefix):]: value for name, value in checkpoint["state_dict"].items() if name.startswith(prefix)}
    tower.load_state_dict(state)
    return tower.eval()


TOWERS = {"id": IdTower, "features": FeatureTower, "history": HistoryTower, "sequence": SequenceTower}
