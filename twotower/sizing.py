"""Settings that follow the log's shape: what an option left at ``auto`` becomes, said in one log line.

The cost of an epoch is the (user, item) pairs it scores: every user against every item, or against the
``loss.max_candidates`` sampled items of a large catalogue. A log whose epoch scores at most
``SMALL_EPOCH`` pairs (a few seconds on a laptop's CPU) affords wider vectors and a final fit as long as
selection; a larger one gets narrower vectors and a final fit half as long, so that a log of 30,000 users
and 40,000 items trains in minutes. Giving an option a value keeps it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from twotower.errors import TwoTowerError

log = logging.getLogger("twotower")

AUTO = "auto"
SMALL_EPOCH = 200_000_000  # (user, item) pairs scored in one epoch
WIDE, NARROW = 96, 64  # model.dim: the width of each part of a vector
LONG, SHORT = 1.0, 0.5  # final_fit_share: the final fit's epochs as a share of the selected epochs


@dataclass(frozen=True)
class Sizing:
    """What ``auto`` means for a log: ``dim`` and ``final_fit_share``, from the pairs an epoch scores."""

    scored_pairs: int
    dim: int
    final_fit_share: float

    @classmethod
    def of(cls, n_users: int, n_items: int, max_candidates: int | None, sample_above: int) -> Sizing:
        sampled = max_candidates is not None and n_items > max(max_candidates, sample_above)
        pairs = n_users * (max_candidates if sampled else n_items)
        small = pairs <= SMALL_EPOCH
        return cls(pairs, WIDE if small else NARROW, LONG if small else SHORT)

    def resolve(self, dim: object, final_fit_share: object) -> tuple[int, float]:
        """``dim`` and ``final_fit_share`` as given, or this log's where they are ``auto``, said in the log."""
        if final_fit_share != AUTO and (isinstance(final_fit_share, bool) or
                                        not isinstance(final_fit_share, (int, float)) or final_fit_share <= 0):
            raise TwoTowerError(f"final_fit_share must be auto or a number > 0, got {final_fit_share!r}")
        if dim != AUTO and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise TwoTowerError(f"model.dim must be auto or an integer >= 1, got {dim!r}")
        chosen = {"model.dim": self.dim if dim == AUTO else dim,
                  "final_fit_share": self.final_fit_share if final_fit_share == AUTO else final_fit_share}
        automatic = [name for name, given in (("model.dim", dim), ("final_fit_share", final_fit_share))
                     if given == AUTO]
        if automatic:
            size = "at most" if self.scored_pairs <= SMALL_EPOCH else "more than"
            log.info("an epoch scores %s (user, item) pairs, %s %s: %s (give a value to choose otherwise)",
                     f"{self.scored_pairs:,}", size, f"{SMALL_EPOCH:,}",
                     ", ".join(f"{name}={chosen[name]}" for name in automatic))
        return chosen["model.dim"], chosen["final_fit_share"]
