"""Negative sampling: draw items a user has not interacted with, as tensor operations on whole batches.

A sampler is fitted on the training positives. ``sample`` draws ``n_negatives`` items per positive from
a uniform or popularity**alpha distribution and redraws any that are known positives of that user; the
returned mask is False only where a user has so few unseen items that redrawing kept failing, so no known
positive is ever used as a negative.
"""

from __future__ import annotations

import numpy as np
import torch

from twotower import checks

DISTRIBUTIONS = ("uniform", "popularity")


class NegativeSampler:
    def __init__(self, n_negatives: int = 2, distribution: str = "uniform", alpha: float = 0.75,
                 max_rounds: int = 20) -> None:
        self.n_negatives = checks.integer("sampler.n_negatives", n_negatives, 1)
        self.distribution = checks.choice("sampler.distribution", distribution, DISTRIBUTIONS)
        self.alpha = checks.number("sampler.alpha", alpha, at_least=0)
        self.max_rounds = checks.integer("sampler.max_rounds", max_rounds, 1)

    def fit(self, users: torch.Tensor, items: torch.Tensor, n_items: int,
            counts: np.ndarray | None = None) -> NegativeSampler:
        """Remember the known positives and the item distribution of the training data: ``counts`` of each
        item's interactions where ``items`` are a share of them (a process's, under DDP), else counted."""
        self.n_items = n_items
        keys = users.to(torch.int64, copy=True).mul_(n_items).add_(items)  # one int64 key per (user, item)
        # Deduplicated training pairs usually arrive sorted by (user, item): then they need no sort.
        self.known = keys if bool((keys[1:] > keys[:-1]).all()) else torch.unique(keys)  # sorted, unique
        counts = torch.bincount(items, minlength=n_items).double() if counts is None else torch.tensor(
            counts, dtype=torch.float64)
        self.frequency = counts / counts.sum()  # share of the training positives per item
        weights = counts.pow(self.alpha) if self.distribution == "popularity" else torch.ones(n_items).double()
        self.probs = weights / weights.sum()
        self.cdf = torch.cumsum(self.probs, 0)
        return self

    def log_prob(self, items: torch.Tensor) -> torch.Tensor:
        """Log probability that one draw returns each of ``items``."""
        return self.probs[items].log().float()

    def is_known(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        keys = users.long() * self.n_items + items.long()
        position = torch.searchsorted(self.known, keys).clamp_(max=len(self.known) - 1)
        return self.known[position] == keys

    def draw(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        if self.distribution == "uniform":
            return torch.randint(self.n_items, shape, generator=generator)
        uniform = torch.rand(shape, generator=generator, dtype=torch.float64) * self.cdf[-1]
        return torch.searchsorted(self.cdf, uniform).clamp_(max=self.n_items - 1)

    def sample(self, users: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(negatives, valid)``, both shaped (batch, n_negatives)."""
        rows = users.long().unsqueeze(1).expand(-1, self.n_negatives)
        negatives = self.draw(rows.shape, generator)
        clash = self.is_known(rows, negatives)
        for _ in range(self.max_rounds):
            if not clash.any():
                break
            where = clash.nonzero(as_tuple=True)
            redrawn = self.draw((len(where[0]),), generator)
            negatives[where] = redrawn
            clash[where] = self.is_known(rows[where], redrawn)
        return negatives, ~clash
