"""Training losses, behind two protocols by what one training example is (``plan`` says which batches a loss
trains on, and the model calls it by the type of those batches):

- ``PairLoss``: a (user, positive item) pair with sampled negatives (``PairBatch``). The loss gets
  ``users`` (batch, dim), ``items`` (batch, dim) for the positives, ``negatives`` (batch, n, dim) and the
  batch itself (ids, validity mask of the negatives, logQ terms).
- ``UserLoss``: a user with all of their positives (``UserBatch``). The loss gets ``users`` (batch, dim),
  ``catalogue`` (C, dim), the vectors of every item or of the batch's sampled candidates, the batch
  (``rows``/``items`` of the positives), ``positives`` (P, dim) when the catalogue is sampled, and ``own``
  (P,) when the user vectors are built from the positives themselves (a history tower): the part of each
  positive's logit that comes from that positive being in its user's history, which the loss takes off that
  item's logit for that user so that no positive is predicted from itself.

Every loss gets the user vectors already divided by the temperature, so a dot product is a logit.
"""

from __future__ import annotations

import warnings
from typing import Protocol

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as distributed
import torch.nn.functional as F

from twotower import checks
from twotower.data.batches import BatchPlan, PairBatch, SequenceBatch, UserBatch
from twotower.errors import ConfigError


class PairLoss(Protocol):
    """A loss over (user, positive, sampled negatives) pairs."""

    def plan(self, n_items: int) -> BatchPlan:
        return BatchPlan(PairBatch)

    def __call__(self, users: torch.Tensor, items: torch.Tensor, negatives: torch.Tensor, batch: PairBatch
                 ) -> torch.Tensor: ...


class UserLoss(Protocol):
    """A loss over users with all of their positives, against the catalogue or a sample standing for it."""

    def plan(self, n_items: int) -> BatchPlan: ...

    def __call__(self, users: torch.Tensor, catalogue: torch.Tensor, batch: UserBatch | SequenceBatch,
                 positives: torch.Tensor | None = None, own: torch.Tensor | None = None) -> torch.Tensor: ...


class RowLogSumExp(torch.autograd.Function):
    """``torch.logsumexp(logits, dim=1)`` for finite logits, built on torch's fused ``log_softmax``.

    ``torch.logsumexp`` and its backward are separate passes (max, subtract, exp, sum; subtract, exp,
    multiply) over the whole (users x items) matrix; ``log_softmax`` is one row-wise pass that keeps each row
    in cache, and its output gives both the value (any logit minus its log-probability) and the gradient
    (the softmax), in about half the time.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor) -> torch.Tensor:
        # At least float32, as torch.logsumexp's sums under mixed precision: bf16 log-probabilities of
        # thousands of items would lose the value's precision.
        dtype = torch.promote_types(logits.dtype, torch.float32)
        log_probs = torch.log_softmax(logits, dim=1, dtype=dtype)
        ctx.save_for_backward(log_probs)
        ctx.logits_dtype = logits.dtype
        return logits[:, 0].to(dtype) - log_probs[:, 0]

    @staticmethod
    @torch.autograd.function.once_differentiable  # its saved log-probabilities are detached
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (log_probs,) = ctx.saved_tensors
        return log_probs.exp().mul_(grad.unsqueeze(1)).to(ctx.logits_dtype)


def pair_logits(users: torch.Tensor, items: torch.Tensor, negatives: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of each user with its positive (batch,) and with its own negatives (batch, n)."""
    positive = (users * items).sum(-1)
    negative = torch.einsum("bd,bnd->bn", users, negatives)
    return positive, negative


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


class PointwiseLoss(PairLoss):
    """Each (user, item) pair is a labelled example: positives 1, negatives 0 (``bce``, binary
    cross-entropy on the logit) or positives +1, negatives -1 (``mse``, squared error on the score, as in
    the original Wikipedia book-embedding project)."""

    def __init__(self, kind: str = "bce") -> None:
        self.kind = checks.choice("loss.kind", kind, ("bce", "mse"))

    def __call__(self, users: torch.Tensor, items: torch.Tensor, negatives: torch.Tensor, batch: PairBatch
                 ) -> torch.Tensor:
        positive, negative = pair_logits(users, items, negatives)
        logits = torch.cat([positive.unsqueeze(1), negative], dim=1)  # (batch, 1 + n)
        labels = torch.zeros_like(logits)
        labels[:, 0] = 1.0
        mask = torch.cat([torch.ones_like(positive, dtype=torch.bool).unsqueeze(1), batch.negatives_valid], 1)
        if self.kind == "bce":
            per_example = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        else:
            per_example = (logits - (2 * labels - 1)) ** 2
        return masked_mean(per_example, mask.float())


class BPRLoss(PairLoss):
    """Bayesian personalised ranking: -log sigmoid(positive logit - negative logit), per negative."""

    def __call__(self, users: torch.Tensor, items: torch.Tensor, negatives: torch.Tensor, batch: PairBatch
                 ) -> torch.Tensor:
        positive, negative = pair_logits(users, items, negatives)
        return masked_mean(-F.logsigmoid(positive.unsqueeze(1) - negative), batch.negatives_valid.float())


class SampledSoftmaxLoss(PairLoss):
    """Softmax over the batch's candidates: every in-batch positive plus every sampled negative, shared.

    - ``logq_correction`` subtracts from each candidate's logit the log of its expected number of
      appearances among the candidates, so popular items, which turn up as negatives more often, are not
      pushed down more than their due (Yi et al., RecSys 2019).
    - ``remove_accidental_hits`` drops a candidate that is the row's own positive item appearing again
      (another user's positive or a sampled negative), which would otherwise be trained as a negative.
    """

    def __init__(self, logq_correction: bool = True, remove_accidental_hits: bool = True) -> None:
        self.logq_correction = checks.flag("loss.logq_correction", logq_correction)
        self.remove_accidental_hits = checks.flag("loss.remove_accidental_hits", remove_accidental_hits)

    def __call__(self, users: torch.Tensor, items: torch.Tensor, negatives: torch.Tensor, batch: PairBatch
                 ) -> torch.Tensor:
        size = users.shape[0]
        # Under DDP the candidates are every process's (``gathered``): N processes at batch B train like
        # one at N x B. Each logQ term counts its own process's batch and sampler: where the processes' batches
        # are the same size and their samplers alike (the whole log in each), that is the same shift for every
        # logit, which the softmax ignores; a prepared log's shares have samplers fitted on each share.
        candidates, start = gathered(torch.cat([items, negatives.reshape(-1, negatives.shape[-1])]))
        candidate_ids, _ = gathered(torch.cat([batch.items, batch.negatives.reshape(-1)]))
        valid, _ = gathered(torch.cat([torch.ones_like(batch.items, dtype=torch.bool),
                                               batch.negatives_valid.reshape(-1)]))
        logits = users @ candidates.T  # (batch, C); column start + r is row r's positive
        if self.logq_correction:
            log_q, _ = gathered(torch.cat([batch.items_log_q, batch.negatives_log_q.reshape(-1)]))
            logits = logits - log_q
        excluded = ~valid.unsqueeze(0).expand_as(logits)
        if self.remove_accidental_hits:
            excluded = excluded | (candidate_ids.unsqueeze(0) == batch.items.unsqueeze(1))
        rows = torch.arange(size, device=logits.device)
        target = rows + start
        excluded[rows, target] = False
        logits = logits.masked_fill(excluded, float("-inf"))
        return F.cross_entropy(logits, target)


def gathered(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``tensor`` of every process in rank order, concatenated along its first dimension, with the gradient
    flowing back to each process's own part; and where this process's part starts. Outside DDP, ``tensor``
    and 0. Processes' lengths may differ (an epoch's last batch): each is padded to the longest for the
    exchange, and the padding is cut off."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    lengths = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(world)]
    dist.all_gather(lengths, torch.tensor([len(tensor)], device=tensor.device))
    lengths = [int(length) for length in lengths]
    padded = torch.cat([tensor, tensor.new_zeros((max(lengths) - len(tensor), *tensor.shape[1:]))])
    if tensor.requires_grad:
        with warnings.catch_warnings():  # its successor is private API still; this one works, gradient and all
            warnings.filterwarnings("ignore", "torch.distributed.nn.functional.all_gather", FutureWarning)
            parts = distributed.all_gather(padded)
    else:
        parts = plain_all_gather(padded)
    return torch.cat([part[:length] for part, length in zip(parts, lengths, strict=True)]), sum(lengths[:rank])


def plain_all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every process's ``tensor`` (no gradient: ids, masks; booleans travel as bytes, which every backend has)."""
    sent = tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor
    parts = [torch.empty_like(sent) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, sent)
    return [part.to(tensor.dtype) for part in parts]


class CatalogueSoftmaxLoss(UserLoss):
    """Softmax over the whole catalogue, one user at a time: each of a user's positives against every item
    (-log softmax of its logit), averaged over the batch's positives.

    Scoring a batch of users against every item costs (users x items) once, where a loss over pairs pays for
    its negatives once per interaction: for logs with many interactions per user this is both the exact
    objective that sampled softmax approximates and far less work per epoch. Beyond ``sample_above`` items
    (or ``max_candidates``, if larger) each batch scores a shared uniform sample of ``max_candidates`` items
    instead (the batches draw them, ``BatchPlan.users``): each positive's own term plus the sum of the other
    sampled items' exponentiated logits, scaled up by the sample's share of the catalogue (logQ), stands for
    the whole catalogue's; null scores the whole catalogue at any size. With a sampled catalogue, ``own`` is
    taken off the positives' logits only: a sampled candidate that is another of the user's positives keeps
    its share (a small bias, on few items).
    """

    def __init__(self, max_candidates: int | None = 8192, sample_above: int = 32768) -> None:
        self.max_candidates = checks.integer("loss.max_candidates", max_candidates, 1, optional=True,
                                             meaning_of_null="always the whole catalogue")
        self.sample_above = checks.integer("loss.sample_above", sample_above, 1)

    def plan(self, n_items: int) -> BatchPlan:
        return BatchPlan.users(n_items, self.max_candidates, self.sample_above)

    def __call__(self, users: torch.Tensor, catalogue: torch.Tensor, batch: UserBatch | SequenceBatch,
                 positives: torch.Tensor | None = None, own: torch.Tensor | None = None) -> torch.Tensor:
        rows = batch.rows
        # One positive per user (a sequence's positions are users of one positive each): rows is the identity,
        # and the gathers below are left out.
        one_each = len(rows) == len(users)
        logits = users @ catalogue.T  # (users, C)
        if positives is None:  # the whole catalogue: a positive's logit is one of its entries
            if own is not None:  # each of a user's positives, as a candidate, without its own share
                logits = logits.index_put((rows, batch.items), -own.to(logits.dtype), accumulate=True)
            positive = logits[rows, batch.items]
            normaliser = RowLogSumExp.apply(logits)
            return ((normaliser if one_each else normaliser[rows]) - positive).mean()
        # the positive's logit, as a candidate would have it; index_select, as its backward (an index_add)
        # is much cheaper than indexing's (an accumulating index_put)
        scored = ((users if one_each else users.index_select(0, rows)) * positives).sum(-1)
        positive = scored if own is None else scored - own
        # Every candidate has the same log q (the draws are uniform), so it comes off the logsumexp rather
        # than off each of the (users x candidates) logits.
        log_q = batch.candidates.log_q
        normaliser = RowLogSumExp.apply(logits)
        sampled = (normaliser if one_each else normaliser[rows]) - log_q
        # The positive's own term is added exactly (logaddexp below): where it was also drawn as a candidate,
        # its weighted term comes out of the sample's sum, so it is not counted twice.
        drawn = batch.candidates.has_positive * torch.exp(scored - log_q - sampled)
        sampled = sampled + torch.log1p(-drawn.clamp(max=1 - 1e-6))
        return (torch.logaddexp(positive, sampled) - positive).mean()


Loss = PairLoss | UserLoss
LOSSES = (PointwiseLoss, BPRLoss, SampledSoftmaxLoss, CatalogueSoftmaxLoss)


def build_loss(spec: dict) -> Loss:
    """A loss from its plain-value spec, as ``conf/loss/*.yaml`` writes it and the checkpoint stores it:
    ``{"_target_": "twotower.model.losses.SampledSoftmaxLoss", "logq_correction": True}``."""
    target = spec.get("_target_", "twotower.model.losses.CatalogueSoftmaxLoss")
    if target not in {f"{loss.__module__}.{loss.__name__}" for loss in LOSSES}:
        raise ConfigError(f"unknown loss '{target}'; choose one of {[loss.__name__ for loss in LOSSES]} "
                            "(loss=catalogue, softmax, bpr, bce or mse)")
    return checks.instantiate("loss", {**spec, "_target_": target})
