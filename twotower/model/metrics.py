"""Full-ranking evaluation: Recall, NDCG, HitRate and MRR at k, and catalogue coverage.

Each user's candidates are the whole catalogue minus the items the user already has (in training, or
training + validation for the test split). Metrics are computed per user and summed, so the result is the
same for any chunk size (unlike averaging per-batch means), and chunks keep memory at (chunk x items).

- Recall@k: hits in the top k / number of the user's held-out items;
- NDCG@k: DCG of the top k / DCG of an ideal ranking of min(#held-out, k) hits;
- HitRate@k: 1 if any held-out item is in the top k;
- MRR@k: 1 / rank of the first hit in the top k (0 if none);
- coverage@k: share of the catalogue that appears in at least one user's top k.
All are averaged over users with at least one held-out item.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchmetrics import Metric

from twotower.data.batches import RankingBatch
from twotower.errors import TwoTowerError

METRICS = ("recall", "ndcg", "hitrate", "mrr")


def cut_offs(ks: Sequence[object], n_items: int) -> list[int]:
    """The ranking cut-offs to report: positive integers, each capped at the catalogue's size."""
    valid = isinstance(ks, Sequence) and not isinstance(ks, (str, bytes)) and len(ks) > 0 and all(
        isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks)
    if not valid:
        raise TwoTowerError(f"ranking cut-offs must be a non-empty list of integers >= 1, got {ks!r}")
    return sorted({min(k, n_items) for k in ks})


def per_user_names(ks: Sequence[int]) -> list[str]:
    """The per-user metrics at each cut-off, in the order the metrics keep their sums: ``recall@10``, ..."""
    return [f"{metric}@{k}" for k in ks for metric in METRICS]


def metric_names(ks: Sequence[object], n_items: int) -> list[str]:
    """Every metric a ranking evaluation reports, e.g. ``ndcg@20`` and ``coverage@20``."""
    ks = cut_offs(ks, n_items)
    return per_user_names(ks) + [f"coverage@{k}" for k in ks]


def ranking_metrics(hits: torch.Tensor, n_targets: torch.Tensor, ks: Sequence[int]) -> dict[str, torch.Tensor]:
    """Per-user metrics from ``hits`` (users, k_max) — whether the item at each rank is held out."""
    hits = hits.float()
    ranks = torch.arange(hits.shape[1], device=hits.device)
    discounts = 1.0 / torch.log2(ranks.float() + 2.0)  # rank 0 -> 1, rank 1 -> 1/log2(3) ...
    first_hit = torch.where(hits.any(1), hits.argmax(1), hits.shape[1])
    results = {}
    for k in ks:
        top = hits[:, :k]
        found = top.sum(1)
        ideal = torch.cumsum(discounts[:k], 0)[(n_targets.clamp(max=k) - 1).long()]
        results[f"recall@{k}"] = found / n_targets
        results[f"ndcg@{k}"] = (top * discounts[:k]).sum(1) / ideal
        results[f"hitrate@{k}"] = (found > 0).float()
        results[f"mrr@{k}"] = torch.where(first_hit < k, 1.0 / (first_hit.float() + 1.0), torch.zeros_like(found))
    return results


def exclude_and_rank(scores: torch.Tensor, batch: RankingBatch, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k items per user after removing seen items, and whether each is a held-out target.

    ``scores`` is (users, items); returns ``(top_items, hits)``, both (users, k).
    """
    scores = scores.index_put((batch.seen_rows, batch.seen_items),
                              torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device))
    top_items = torch.topk(scores, k, dim=1).indices
    targets = torch.zeros_like(scores, dtype=torch.bool)
    targets[batch.target_rows, batch.target_items] = True
    return top_items, targets.gather(1, top_items)


class RankingMetrics(Metric):
    """Accumulates per-user metric sums over chunks; sums synchronise across processes under DDP."""

    full_state_update = False

    def __init__(self, n_items: int, ks: Sequence[int] = (10, 20)) -> None:
        super().__init__()
        self.ks = cut_offs(ks, n_items)
        self.names = per_user_names(self.ks)
        self.add_state("sums", torch.zeros(len(self.names), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("users", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("recommended", torch.zeros((len(self.ks), n_items), dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, batch: RankingBatch, items: torch.Tensor | None = None) -> None:
        """Add a chunk: ``scores`` (users, columns) and ``batch``'s items are columns; ``items`` names the item
        each column stands for, where the columns are a part of the catalogue (None: column i is item i)."""
        tally(scores, batch, self.ks, self.names, self.sums, self.recommended, items)
        self.users += scores.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        return averages(self.sums, self.users, self.names, self.ks, self.recommended)


def tally(scores: torch.Tensor, batch: RankingBatch, ks: list[int], names: list[str], sums: torch.Tensor,
          recommended: torch.Tensor, items: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Rank a chunk, add its per-user metrics to ``sums`` (one per name) and its top k to ``recommended`` (one
    row per k); returns the per-user metrics."""
    top_items, hits = exclude_and_rank(scores, batch, ks[-1])
    if items is not None:
        top_items = items[top_items]
    n_targets = torch.bincount(batch.target_rows, minlength=scores.shape[0])
    per_user = ranking_metrics(hits, n_targets, ks)
    sums += torch.stack([per_user[name].double().sum() for name in names])
    for row, k in enumerate(ks):
        recommended[row].index_fill_(0, top_items[:, :k].reshape(-1), 1)
    return per_user


def averages(sums: torch.Tensor, users: torch.Tensor, names: list[str], ks: list[int],
             recommended: torch.Tensor) -> dict[str, torch.Tensor]:
    users = users.clamp(min=1)
    results = {name: (total / users).float() for name, total in zip(names, sums, strict=True)}
    for row, k in enumerate(ks):
        results[f"coverage@{k}"] = (recommended[row] > 0).float().mean()
    return results


@dataclass  # not frozen: torchmetrics rebuilds what ``compute`` returns field by field
class Trial:
    """One weight's ranking under ``PriorTrials``: its metrics, and its mean per-user gain over the first weight in
    the chosen metric with the standard error of that mean."""

    metrics: dict[str, float]
    gain: float
    gain_se: float

    @property
    def evidence(self) -> float:
        """The gain in standard errors (infinite for a gain with no spread; 0 for none)."""
        if self.gain_se:
            return self.gain / self.gain_se
        return math.inf if self.gain > 0 else 0.0


class PriorTrials(Metric):
    """The ranking metrics under several weights of a per-item prior added to the same scores, and the paired
    evidence that each weight beats the first: the mean per-user gain in one metric and its standard error.

    Each user is ranked under every weight, so a weight's gain is measured on the same users as the baseline's,
    and its spread is that of the per-user differences, not of two independent means. Sums (and sums of
    squared differences) synchronise across processes under DDP.
    """

    full_state_update = False

    def __init__(self, n_items: int, ks: Sequence[int], weights: Sequence[float], metric: str) -> None:
        super().__init__()
        self.ks = cut_offs(ks, n_items)
        self.names = per_user_names(self.ks)
        self.weights = tuple(weights)
        self.metric = metric
        self.column = self.names.index(metric)  # the training refuses other monitors (``prior.check_monitor``)
        trials = len(self.weights)
        self.add_state("sums", torch.zeros((trials, len(self.names)), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("squares", torch.zeros(trials, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("users", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("recommended", torch.zeros((trials, len(self.ks), n_items), dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, prior: torch.Tensor, batch: RankingBatch) -> None:
        """Add a chunk: ``scores`` (users, items) and ``prior`` (items), ranked as ``scores + weight * prior``."""
        baseline = None
        for trial, weight in enumerate(self.weights):
            per_user = tally(scores + weight * prior if weight else scores, batch, self.ks, self.names,
                             self.sums[trial], self.recommended[trial])[self.metric].double()
            baseline = per_user if baseline is None else baseline
            self.squares[trial] += (per_user - baseline).square().sum()
        self.users += scores.shape[0]

    def compute(self) -> dict[float, Trial]:
        """Each weight's metrics and its paired gain over the first weight in the metric."""
        users = int(self.users)
        results = {}
        for trial, weight in enumerate(self.weights):
            values = averages(self.sums[trial], self.users, self.names, self.ks, self.recommended[trial])
            gain = float(self.sums[trial, self.column] - self.sums[0, self.column]) / max(users, 1)
            variance = (float(self.squares[trial]) / max(users, 1) - gain**2) * users / max(users - 1, 1)
            results[weight] = Trial({name: float(value) for name, value in values.items()}, gain,
                                    math.sqrt(max(variance, 0.0) / max(users, 1)))
        return results
