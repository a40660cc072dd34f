"""Settings that follow the log's shape: what an option left at ``auto`` becomes, said in one log line.

The cost of an epoch is the (user, item) pairs it scores: every user against every item, or against the
``loss.max_candidates`` sampled items of a large catalogue. A log whose epoch scores at most
``SMALL_EPOCH`` pairs (a few seconds on a laptop's CPU) affords wider vectors; a larger one gets narrower
vectors, so that a log of 30,000 users and 40,000 items trains in minutes. Giving an option a value keeps it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from twotower import checks
from twotower.checks import AUTO

log = logging.getLogger("twotower")

SMALL_EPOCH = 200_000_000  # (user, item) pairs scored in one epoch
WIDE, NARROW = 96, 64  # model.dim: the width of each part of a vector


@dataclass(frozen=True)
class Sizing:
    """What ``auto`` means for a log: ``dim``, from the pairs an epoch scores."""

    scored_pairs: int
    dim: int

    @classmethod
    def of(cls, n_users: int, scored_per_user: int) -> Sizing:
        """For ``n_users`` training users (or positions of sequences), each scored against ``scored_per_user``
        items an epoch (``BatchPlan.scored_per_user``)."""
        pairs = n_users * scored_per_user
        return cls(pairs, WIDE if pairs <= SMALL_EPOCH else NARROW)

    def resolve(self, dim: object) -> object:
        """``dim`` as given (the model checks it), or this log's where it is ``auto``, said in the log."""
        if checks.auto_or("model.dim", dim, lambda option, value: checks.integer(option, value, 1)) != AUTO:
            return dim
        size = "at most" if self.scored_pairs <= SMALL_EPOCH else "more than"
        log.info("an epoch scores %s (user, item) pairs, %s %s: model.dim=%d (give a value to choose otherwise)",
                 f"{self.scored_pairs:,}", size, f"{SMALL_EPOCH:,}", self.dim)
        return self.dim


def sequence_candidates(queries: int, n_items: int, budget: int = SMALL_EPOCH, least: int = 512) -> int | None:
    """The items each position of a sequence is scored against: the whole catalogue (None) where an epoch of
    ``queries`` positions stays within ``budget`` (user, item) pairs, else a shared sample of as many as keep it
    there, and at least ``least``. A position is a training example of its own, so a sequence log scores
    (interactions x items) an epoch, where a loss over users scores (users x items)."""
    if queries * n_items <= budget:
        return None
    sample = max(least, budget // max(queries, 1))
    return sample if sample < n_items else None
