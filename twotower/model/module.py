"""The LightningModule: two towers, a score, a loss, and full-ranking validation metrics.

Every constructor argument is a plain value (numbers, strings, dicts) except ``optimizer`` and
``scheduler``, so
``TwoTowerModel.load_from_checkpoint(path)`` rebuilds the model without Hydra or the training data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import lightning as L
import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torchmetrics import MeanMetric

from twotower import checks
from twotower.data.batches import PairBatch, RankingBatch, SequenceBatch, UserBatch
from twotower.errors import ConfigError
from twotower.model.losses import build_loss
from twotower.model.metrics import PriorTrials, RankingMetrics, Trial
from twotower.model.optim import LazyAdam, OptimizerFactory, RowWiseAdagrad, switch_to_sparse
from twotower.model.scoring import SCORES, project, projection_scale
from twotower.model.towers import TrainingData, build_tower

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
            ``plan`` decides the batches it trains on (pairs with negatives, or users with their items).
        user_tower, item_tower: tower specs, e.g. ``{"_target_": "twotower.model.towers.IdTower"}`` (see
            ``towers.build_tower``).
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
        popularity_prior: weight of each item's log(1 + training interactions) added to its logit when ranking
            (not in training), which a bounded score or a logQ-corrected loss under-ranks by popularity; a run
            chooses it on its validation split (``twotower.training.prior``).
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
        popularity_prior: float = 0.0,
    ) -> None:
        super().__init__()
        checks.choice("model.score", score, SCORES)
        checks.number("model.temperature", temperature, above=0)
        if not (checks.is_integer(dim) and dim >= 1):
            raise ConfigError(f"model.dim must be auto or an integer >= 1, got {dim!r}")
        checks.number("model.weight_decay", weight_decay, at_least=0)
        checks.integer("model.sparse_above", sparse_above, 0, optional=True, meaning_of_null="never switch")
        checks.number("model.popularity_prior", popularity_prior, at_least=0)
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "sparse_optimizer"])
        user_tower = dict(user_tower or {"_target_": "twotower.model.towers.IdTower"})
        item_tower = dict(item_tower or {"_target_": "twotower.model.towers.IdTower"})
        if optimizer is not None and sparse_above is not None and n_users + n_items > sparse_above:
            optimizer = switch_to_sparse([user_tower, item_tower], optimizer, sparse_optimizer, weight_decay,
                                         n_users + n_items, sparse_above)
            if optimizer is sparse_optimizer:  # the checkpoint describes the towers built, which loading it
                self.hparams.update(user_tower=user_tower, item_tower=item_tower)  # (no optimizer) builds too
        self.user_tower = build_tower(user_tower, "user", n_users, dim, n_items)
        # Parts side by side in a user vector (a history tower with user ids), each met by its own item part.
        self.parts = self.user_tower.parts
        self.item_tower = build_tower(item_tower, "item", n_items, dim * self.parts, n_items)
        self.loss_fn = build_loss(dict(loss or {}))
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.epoch_loss = MeanMetric()
        self.val_metrics = RankingMetrics(n_items, ks)
        self.test_metrics = RankingMetrics(n_items, ks)
        # log(1 + each item's interactions in the splits the model trains on): what the prior weighs (``attach``)
        self.register_buffer("item_prior", torch.zeros(n_items))
        self.prior_trials: PriorTrials | None = None  # other weights the next validation pass ranks by
        self.prior_results: dict[float, Trial] = {}  # and what each scored
        self._catalogue: torch.Tensor | None = None
        self._own_data = False  # attached to one process's share of the users (see ``on_load_checkpoint``)

    def attach(self, data: TrainingData) -> None:
        """Give the towers what they read from the data the model now trains on (features, histories)."""
        self.user_tower.attach(data, "user")
        self.item_tower.attach(data, "item")
        self.item_prior.copy_(torch.from_numpy(np.log1p(data.training_item_counts())))
        self._own_data = data.sharded
        # The towers' buffers are the data they read (histories, features). Under DDP each process keeps its
        # own: a process training on its share of a prepared log holds only its users' histories, which
        # DistributedDataParallel would otherwise overwrite with process 0's.
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, list(self.data_buffers()))

    def data_buffers(self) -> dict[str, torch.Tensor]:
        """The buffers that hold data (the towers' histories and features, the items' prior), not parameters, by
        state-dict name."""
        towers = ("user_tower.", "item_tower.")
        return {name: buffer for name, buffer in self.named_buffers() if name.startswith(towers)
                or name == "item_prior"}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A process holding its share of the users keeps its own histories when a checkpoint process 0 saved is
        restored into it (the trainer's ``ckpt_path``). A checkpoint saved before the model had a prior ranks
        without one."""
        checkpoint["state_dict"].setdefault("item_prior", torch.zeros_like(self.item_prior))
        if self._own_data:
            state = checkpoint["state_dict"]
            state |= {name: buffer for name, buffer in self.data_buffers().items() if name in state}

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        return project(self.user_tower(users), self.hparams.score, self.parts)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return project(self.item_tower(items), self.hparams.score, self.parts)

    def all_user_vectors(self) -> torch.Tensor:
        """(n_users, parts * dim): vectors whose dot product with ``all_item_vectors`` ranks like the model."""
        return project(self.user_tower.all(), self.hparams.score, self.parts)

    def all_item_vectors(self) -> torch.Tensor:
        return project(self.item_tower.all(), self.hparams.score, self.parts)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores of (user, item) pairs: (batch,)."""
        return (self.user_vectors(users) * self.item_vectors(items)).sum(-1)

    def loss(self, batch: PairBatch | UserBatch | SequenceBatch) -> torch.Tensor:
        """The training loss of one batch (the whole training math, without Lightning), by its kind."""
        if isinstance(batch, (UserBatch, SequenceBatch)):
            return self._user_loss(batch)
        raw = self.user_tower.for_pairs(batch.users, batch.items)  # e.g. each pair's user without its item
        users = project(raw, self.hparams.score, self.parts) / self.hparams.temperature  # (batch, dim)
        items = self.item_vectors(batch.items)  # (batch, dim)
        negatives = self.item_vectors(batch.negatives)  # (batch, n, dim)
        return self.loss_fn(users, items, negatives, batch)

    def _user_loss(self, batch: UserBatch | SequenceBatch) -> torch.Tensor:
        """A loss over users with all their positives (a sequence's queries are users with one positive each).
        With parts side by side, each part has its own logits and softmax, and the loss is their sum; a tower
        that builds users from their positives says how much of each positive's logit comes from its own
        presence (``own_logits``, the last part's), taken off."""
        users = self.user_tower.for_users(batch)
        if batch.candidates is not None:  # one lookup for both: a sparse table then gets one gradient, not two
            n_candidates = len(batch.candidates.items)
            vectors = self.item_vectors(torch.cat([batch.candidates.items, batch.items]))
            # split, not two slices: its backward is one concatenation, where each slice's writes its
            # gradient into a zeroed copy of the whole and autograd adds the two
            catalogue, positives = vectors.split([n_candidates, len(batch.items)])
        else:  # the loss reads the positives' logits off the whole catalogue's
            catalogue, positives = self.all_item_vectors(), None
        losses = []
        parts = zip(self._parts(users.vectors), self._parts(catalogue), self._parts(positives), strict=True)
        for part, (user_part, catalogue_part, positive_part) in enumerate(parts):
            scale = projection_scale(user_part, self.hparams.score) / self.hparams.temperature  # (users, 1)
            own = None
            if users.own_logits is not None and part == self.parts - 1:  # the history part is the last
                own = users.own_logits(catalogue_part, positive_part) * scale[batch.rows, 0]
            # user_part * scale is project(user_part) / temperature: logits are dot products
            losses.append(self.loss_fn(user_part * scale, catalogue_part, batch, positives=positive_part, own=own))
        return sum(losses)

    def _parts(self, vectors: torch.Tensor | None) -> Sequence[torch.Tensor | None]:
        """The side-by-side parts of vectors (one: the vectors themselves, without a copy in backward)."""
        if vectors is None:
            return [None] * self.parts
        return [vectors] if self.parts == 1 else vectors.split(self.hparams.dim, dim=-1)

    def training_step(self, batch: PairBatch | UserBatch | SequenceBatch, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        # A self.log call costs a noticeable share of a small batch's step on a CPU: the step loss goes to the
        # progress bar every PROGRESS_EVERY steps and at each epoch's start (a superset of the steps the logger
        # writes, so its file is unchanged), the epoch mean is accumulated by a metric.
        self.epoch_loss.update(loss.detach(), weight=batch.positives)  # the positives it averages over
        step = self.global_step
        if batch_idx == 0 or step % PROGRESS_EVERY == 0 or step % self.trainer.log_every_n_steps == 0:
            self.log("train/loss_step", loss, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/loss_epoch", self.epoch_loss.compute())  # compute() averages over DDP processes
        self.epoch_loss.reset()

    @property
    def prior_weight(self) -> float:
        """The popularity prior in score units (the weight of ``item_prior`` beside a dot product of the
        exported vectors, which is the logit times the temperature)."""
        return self.hparams.popularity_prior * self.hparams.temperature

    def _rank(self, metrics: RankingMetrics, batch: RankingBatch) -> None:
        if self._catalogue is None:  # once per evaluation pass: the items do not change within it
            self._catalogue = self.all_item_vectors()
        users = project(self.user_tower.for_ranking(batch), self.hparams.score, self.parts)
        scores = users @ self._catalogue.T
        metrics.update(scores + self.prior_weight * self.item_prior if self.prior_weight else scores, batch)
        if self.prior_trials is not None:  # its weights are in logit units
            self.prior_trials.update(scores, self.hparams.temperature * self.item_prior, batch)

    def _publish(self, metrics: RankingMetrics, stage: str) -> None:
        self.log_dict({f"{stage}/{name}": value for name, value in metrics.compute().items()})
        metrics.reset()
        self._catalogue = None

    def validation_step(self, batch: RankingBatch, batch_idx: int) -> None:
        self._rank(self.val_metrics, batch)

    def on_validation_epoch_end(self) -> None:
        self._publish(self.val_metrics, "val")
        if self.prior_trials is not None:
            self.prior_results = self.prior_trials.compute()  # synchronised over processes
            self.prior_trials.reset()

    def test_step(self, batch: RankingBatch, batch_idx: int) -> None:
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
            raise ConfigError(
                f"model.optimizer cannot be built ({error}): set model.weight_decay=0 for an optimizer without "
                "weight decay, and drop what it does not take (e.g. ~model.optimizer.fused)") from error
        sparse = [name for name, module in self.named_modules() if getattr(module, "sparse", False)]
        if sparse and not isinstance(optimizer, SPARSE_OPTIMIZERS):
            raise ConfigError(
                f"sparse embeddings ({', '.join(sparse)}) need an optimizer that takes sparse gradients "
                f"({', '.join(kind.__name__ for kind in SPARSE_OPTIMIZERS)}), not {type(optimizer).__name__}; "
                "model=sparse pairs them with model.sparse_optimizer, row-wise Adagrad")
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer),
                                                         "interval": "epoch"}}
