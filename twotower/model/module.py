"""The LightningModule: two towers, a score, a loss, and full-ranking validation metrics.

Every constructor argument is a plain value (numbers, strings, dicts) except ``optimizer`` and
``scheduler``, so
``TwoTowerModel.load_from_checkpoint(path)`` rebuilds the model without Hydra or the training data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import lightning as L
import torch
from torchmetrics import MeanMetric

from twotower.data.batches import Batch
from twotower.errors import TwoTowerError
from twotower.model.losses import build_loss
from twotower.model.metrics import RankingMetrics
from twotower.model.optim import LazyAdam, OptimizerFactory, RowWiseAdagrad, switch_to_sparse
from twotower.model.scoring import SCORES, project, projection_scale
from twotower.model.towers import HistoryTower, build_tower

log = logging.getLogger(__name__)

# Optimizers that accept sparse gradients (all but SparseAdam take dense ones as well).
SPARSE_OPTIMIZERS = (LazyAdam, RowWiseAdagrad, torch.optim.SparseAdam, torch.optim.Adagrad, torch.optim.SGD)

# Steps between updates of the loss on the progress bar.
PROGRESS_EVERY = 10

SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


class TwoTowerModel(L.LightningModule):
    """Scores a (user, item) pair by the dot product of their tower outputs.

    Args:
        n_users, n_items: vocabulary sizes.
        dim: vector dimension shared by both towers (of each part, where a user tower puts parts side by side).
        score: ``dot`` or ``cosine`` (L2-normalised vectors).
        temperature: logits are scores divided by this; small values sharpen a cosine softmax.
        loss: loss spec, e.g. ``{"_target_": "twotower.model.losses.BPRLoss"}`` (see ``losses.build_loss``); its
            ``examples`` decide the batches it trains on (pairs with negatives, or users with their items).
        user_tower, item_tower: tower specs, e.g. ``{"kind": "id"}`` (see ``towers.build_tower``).
        optimizer: a factory taking the parameters (Hydra passes a ``_partial_`` optimizer); Adam if None.
        scheduler: a factory taking the optimizer (a ``_partial_`` LR scheduler, stepped once per epoch);
            a constant learning rate if None.
        weight_decay: L2 penalty, given to the optimizer as its ``weight_decay`` (0: none).
        sparse_above: beyond this many users + items, plain ID towers trained with Adam take sparse gradients
            and ``sparse_optimizer`` instead, so that a step updates only the rows its batch touched (dense
            Adam's update of every row on every step would dominate an epoch); None never switches, 0 always
            does. Decided when an optimizer is given (training), not when a checkpoint is loaded.
        sparse_optimizer: the factory that trains sparse towers (a ``_partial_`` optimizer).
        ks: cut-offs of the validation/test ranking metrics (the word ``twotower-eval`` uses too).
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int = 64,
        score: str = "cosine",
        temperature: float = 0.15,
        loss: dict | None = None,
        user_tower: dict | None = None,
        item_tower: dict | None = None,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        weight_decay: float = 0.0,
        sparse_above: int | None = 250_000,
        sparse_optimizer: OptimizerFactory | None = None,
        ks: Sequence[int] = (10, 20),
    ) -> None:
        super().__init__()
        if score not in SCORES:
            raise TwoTowerError(f"unknown score '{score}'; choose one of {SCORES}")
        if temperature <= 0:
            raise TwoTowerError(f"model.temperature must be > 0, got {temperature}")
        if dim < 1:
            raise TwoTowerError(f"model.dim must be >= 1, got {dim}")
        if weight_decay < 0:
            raise TwoTowerError(f"model.weight_decay must be >= 0, got {weight_decay}")
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "sparse_optimizer"])
        user_tower, item_tower = dict(user_tower or {}), dict(item_tower or {})
        if optimizer is not None and sparse_above is not None and n_users + n_items > sparse_above:
            optimizer = switch_to_sparse([user_tower, item_tower], optimizer, sparse_optimizer, weight_decay,
                                         n_users + n_items, sparse_above)
        self.user_tower = build_tower(user_tower, n_users, dim, n_items=n_items)
        # Parts side by side in a user vector (a history tower with user ids), each met by its own item part.
        self.blocks: int = getattr(self.user_tower, "blocks", 1)
        self.item_tower = build_tower(item_tower, n_items, dim * self.blocks)
        self.loss_fn = build_loss(dict(loss or {}))
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.epoch_loss = MeanMetric()
        self.val_metrics = RankingMetrics(n_items, ks)
        self.test_metrics = RankingMetrics(n_items, ks)
        self._catalogue: torch.Tensor | None = None

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        return project(self.user_tower(users), self.hparams.score, self.blocks)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return project(self.item_tower(items), self.hparams.score, self.blocks)

    def all_user_vectors(self) -> torch.Tensor:
        """(n_users, blocks * dim): vectors whose dot product with ``all_item_vectors`` ranks like the model."""
        return project(self.user_tower.all(), self.hparams.score, self.blocks)

    def all_item_vectors(self) -> torch.Tensor:
        return project(self.item_tower.all(), self.hparams.score, self.blocks)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of (user, item) pairs: (batch,)."""
        return (self.user_vectors(users) * self.item_vectors(items)).sum(-1)

    def loss(self, batch: Batch) -> torch.Tensor:
        """The training loss of one batch (the whole training math, without Lightning)."""
        if self.loss_fn.examples == "users":
            return self._user_loss(batch)
        if isinstance(self.user_tower, HistoryTower):  # each pair's user without that pair's item
            raw = self.user_tower.leave_item_out(batch["users"], batch["items"])
        else:
            raw = self.user_tower(batch["users"])
        users = project(raw, self.hparams.score, self.blocks) / self.hparams.temperature  # (batch, dim)
        items = self.item_vectors(batch["items"])  # (batch, dim)
        negatives = self.item_vectors(batch["negatives"])  # (batch, n, dim)
        return self.loss_fn(users, items, negatives, batch)

    def _user_loss(self, batch: Batch) -> torch.Tensor:
        """A loss over users with all their positives; a history tower's user leaves out, for each positive,
        that positive's own share of the user's history part (its ``own`` logit, taken off that logit). With
        parts side by side, each part has its own logits and softmax, and the loss is their sum."""
        rows, items = batch["rows"], batch["items"]
        if isinstance(self.user_tower, HistoryTower):
            raw, _, weights = self.user_tower.leave_own_out(batch["users"], rows, items, batch.get("draws"))
        else:
            raw, weights = self.user_tower(batch["users"]), None
        sampled = "candidates" in batch
        if sampled:  # one lookup for both: a sparse table then gets one gradient, not two to add up
            n_candidates = len(batch["candidates"])
            vectors = self.item_vectors(torch.cat([batch["candidates"], items]))
            # split, not two slices: its backward is one concatenation, where each slice's writes its
            # gradient into a zeroed copy of the whole and autograd adds the two
            catalogue, positives = vectors.split([n_candidates, len(items)])
        else:  # the loss reads the positives' logits off the whole catalogue's
            catalogue, positives = self.all_item_vectors(), None
        losses = []
        parts = zip(self._parts(raw), self._parts(catalogue), self._parts(positives), strict=True)
        for block, (user_part, catalogue_part, positive_part) in enumerate(parts):
            scale = projection_scale(user_part, self.hparams.score) / self.hparams.temperature  # (users, 1)
            own = None
            if weights is not None and block == self.blocks - 1:  # the history part is the last
                own = self._own_logits(items, weights, catalogue_part, positive_part) * scale[rows, 0]
            # user_part * scale is project(user_part) / temperature: logits are dot products
            losses.append(self.loss_fn(user_part * scale, catalogue_part, batch,
                                       positives=positive_part if sampled else None, own=own))
        return sum(losses)

    def _own_logits(self, items: torch.Tensor, weights: torch.Tensor, catalogue: torch.Tensor,
                    positives: torch.Tensor | None) -> torch.Tensor:
        """(P,): what each positive's own history vector adds to its logit, ``weights[p] * h_i . v_i`` (before
        the user's norm and the temperature). With the whole catalogue, ``h_i . v_i`` is taken once per item
        and gathered, rather than gathering (positives, dim) vectors; a sampled catalogue has the positives'."""
        history = self.user_tower.history
        if positives is None:
            return torch.linalg.vecdot(history.weight, catalogue).index_select(0, items) * weights
        return torch.linalg.vecdot(history(items), positives) * weights

    def _parts(self, vectors: torch.Tensor | None) -> Sequence[torch.Tensor | None]:
        """The side-by-side parts of vectors (one: the vectors themselves, without a copy in backward)."""
        if vectors is None:
            return [None] * self.blocks
        return [vectors] if self.blocks == 1 else vectors.split(self.hparams.dim, dim=-1)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        # A self.log call costs a noticeable share of a small batch's step on a CPU: the step loss goes to the
        # progress bar every PROGRESS_EVERY steps and at each epoch's start (a superset of the steps the logger
        # writes, so its file is unchanged), the epoch mean is accumulated by a metric.
        self.epoch_loss.update(loss.detach(), weight=len(batch["items"]))  # the positives it averages over
        step = self.global_step
        if batch_idx == 0 or step % PROGRESS_EVERY == 0 or step % self.trainer.log_every_n_steps == 0:
            self.log("train/loss_step", loss, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/loss_epoch", self.epoch_loss.compute())  # compute() averages over DDP processes
        self.epoch_loss.reset()

    def _rank(self, metrics: RankingMetrics, batch: Batch) -> None:
        if self._catalogue is None:  # once per evaluation pass: the items do not change within it
            self._catalogue = self.all_item_vectors()
        metrics.update(self.user_vectors(batch["users"]) @ self._catalogue.T, batch)

    def _publish(self, metrics: RankingMetrics, stage: str) -> None:
        self.log_dict({f"{stage}/{name}": value for name, value in metrics.compute().items()})
        metrics.reset()
        self._catalogue = None

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._rank(self.val_metrics, batch)

    def on_validation_epoch_end(self) -> None:
        self._publish(self.val_metrics, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._rank(self.test_metrics, batch)

    def on_test_epoch_end(self) -> None:
        self._publish(self.test_metrics, "test")

    def _clips_under_mixed_precision(self) -> bool:
        trainer = self._trainer
        return trainer is not None and bool(trainer.gradient_clip_val) and "mixed" in str(trainer.precision)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict:
        factory = self.optimizer_factory or torch.optim.Adam
        options = {"weight_decay": self.hparams.weight_decay} if self.hparams.weight_decay else {}
        if getattr(factory, "keywords", {}).get("fused") and self._clips_under_mixed_precision():
            # Lightning's mixed precision refuses to clip a fused optimizer's gradients (it unscales them itself)
            log.info("gradient clipping under mixed precision: model.optimizer without fused")
            options["fused"] = None
        try:
            optimizer = factory(self.parameters(), **options)
        except TypeError as error:  # an argument the optimizer lacks: SparseAdam has no weight decay, RMSprop no fused
            raise TwoTowerError(
                f"model.optimizer cannot be built ({error}): set model.weight_decay=0 for an optimizer without "
                "weight decay, and drop what it does not take (e.g. ~model.optimizer.fused)") from error
        sparse = [name for name, module in self.named_modules() if getattr(module, "sparse", False)]
        if sparse and not isinstance(optimizer, SPARSE_OPTIMIZERS):
            raise TwoTowerError(
                f"sparse embeddings ({', '.join(sparse)}) need an optimizer that takes sparse gradients "
                f"({', '.join(kind.__name__ for kind in SPARSE_OPTIMIZERS)}), not {type(optimizer).__name__}; "
                "model=sparse pairs them with model.sparse_optimizer, row-wise Adagrad")
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer),
                                                         "interval": "epoch"}}
