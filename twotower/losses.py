"""Training losses over a batch of positives and their negatives.

Every loss gets the user vectors already divided by the temperature, so a dot product is a logit:
``users`` (batch, dim), ``items`` (batch, dim) for the positives, ``negatives`` (batch, n, dim) for the
sampled negatives, and the batch itself (ids, validity mask of the negatives, logQ terms).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from twotower.data.batches import Batch
from twotower.errors import TwoTowerError


def pair_logits(users: torch.Tensor, items: torch.Tensor, negatives: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of each user with its positive (batch,) and with its own negatives (batch, n)."""
    positive = (users * items).sum(-1)
    negative = torch.einsum("bd,bnd->bn", users, negatives)
    return positive, negative


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


class PointwiseLoss:
    """Each (user, item) pair is a labelled example: positives 1, negatives 0 (``bce``, binary
    cross-entropy on the logit) or positives +1, negatives -1 (``mse``, squared error on the score, as in
    the original Wikipedia book-embedding project)."""

    def __init__(self, kind: str = "bce") -> None:
        if kind not in ("bce", "mse"):
            raise TwoTowerError(f"unknown pointwise loss '{kind}'")
        self.kind = kind

    def __call__(self, users: torch.Tensor, items: torch.Tensor, negatives: torch.Tensor, batch: Batch
                 ) -> torch.Tensor:
        positive, negative = pair_logits(users, items, negatives)
        logits = torch.cat([positive.unsqueeze(1), negative], dim=1)  # (batch, 1 + n)
        labels = torch.zeros_like(logits)
        labels[:, 0] = 1.0
        mask = torch.cat([torch.ones_like(positive, dtype=torch.bool).unsqueeze(1), batch["negatives_valid"]], 1)
        if self.kind == "bce":
            per_example = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        else:
            per_example = (logits - (2 * labels - 1)) ** 2
        return masked_mean(per_example, mask.float())


class BPRLoss:
    """Bayesian personalised ranking: -log sigmoid(positive logit - negative logit), per negative."""

    def __call__(self, users: torch.Tensor, items: torch.Tensor, negatives: torch.Tensor, batch: Batch
                 ) -> torch.Tensor:
        positive, negative = pair_logits(users, items, negatives)
        return masked_mean(-F.logsigmoid(positive.unsqueeze(1) - negative), batch["negatives_valid"].float())


class SampledSoftmaxLoss:
    """Softmax over the batch's candidates: every in-batch positive plus every sampled negative, shared.

    - ``logq_correction`` subtracts from each candidate's logit the log of its expected number of
      appearances among the candidates, so popular items, which turn up as negatives more often, are not
      pushed down more than their due (Yi et al., RecSys 2019).
    - ``remove_accidental_hits`` drops a candidate that is the row's own positive item appearing again
      (another user's positive or a sampled negative), which would otherwise be trained as a negative.
    """

    def __init__(self, logq_correction: bool = True, remove_accidental_hits: bool = True) -> None:
        self.logq_correction = logq_correction
        self.remove_accidental_hits = remove_accidental_hits

    def __call__(self, users: torch.Tensor, items: torch.Tensor, negatives: torch.Tensor, batch: Batch
                 ) -> torch.Tensor:
        size = users.shape[0]
        candidates = torch.cat([items, negatives.reshape(-1, negatives.shape[-1])])  # (C, dim)
        candidate_ids = torch.cat([batch["items"], batch["negatives"].reshape(-1)])  # (C,)
        logits = users @ candidates.T  # (batch, C); column r is row r's positive
        if self.logq_correction:
            logits = logits - torch.cat([batch["items_log_q"], batch["negatives_log_q"].reshape(-1)])
        excluded = torch.zeros_like(logits, dtype=torch.bool)
        excluded[:, size:] = ~batch["negatives_valid"].reshape(1, -1)
        if self.remove_accidental_hits:
            excluded |= candidate_ids.unsqueeze(0) == batch["items"].unsqueeze(1)
        target = torch.arange(size, device=logits.device)
        excluded[target, target] = False
        logits = logits.masked_fill(excluded, float("-inf"))
        return F.cross_entropy(logits, target)


Loss = PointwiseLoss | BPRLoss | SampledSoftmaxLoss
LOSSES = (PointwiseLoss, BPRLoss, SampledSoftmaxLoss)


def build_loss(spec: dict) -> Loss:
    """A loss from its plain-value spec, as ``conf/loss/*.yaml`` writes it and the checkpoint stores it:
    ``{"_target_": "twotower.losses.SampledSoftmaxLoss", "logq_correction": True}``."""
    from hydra.utils import instantiate  # a plain function: no Hydra app is needed to load a checkpoint

    target = spec.get("_target_", "twotower.losses.SampledSoftmaxLoss")
    if target not in {f"{loss.__module__}.{loss.__name__}" for loss in LOSSES}:
        raise TwoTowerError(f"unknown loss '{target}'; choose one of {[loss.__name__ for loss in LOSSES]} "
                            "(loss=softmax, bpr, bce or mse)")
    return instantiate({**spec, "_target_": target})
