"""The settings every approximate backend shares, checked in one place: how it builds (``seed``,
``build_threads``) and what its tuning promises (``target_recall``, ``exact_when_faster``, ``exact``)."""

from __future__ import annotations

import copy
from typing import Any, TypeVar

from twotower import checks

T = TypeVar("T", bound="ApproximateIndex")


class ApproximateIndex:
    def __init__(self, seed: int = 0, build_threads: int = 1, target_recall: float | None = 0.95,
                 exact_when_faster: bool = True, exact: bool = False) -> None:
        self.seed = checks.integer("index.seed", seed)
        self.build_threads = checks.integer("index.build_threads", build_threads, 1, also=(-1, "every core"))
        self.target_recall = checks.number("index.target_recall", target_recall, above=0, at_most=1, optional=True,
                                           meaning_of_null="no tuning")
        self.exact_when_faster = checks.flag("index.exact_when_faster", exact_when_faster)
        self.exact = checks.flag("index.exact", exact)

    def shared_params(self) -> dict[str, Any]:
        return {"seed": self.seed, "build_threads": self.build_threads, "target_recall": self.target_recall,
                "exact_when_faster": self.exact_when_faster, "exact": self.exact}

    def served_exactly(self: T) -> T:
        """This index answering by exact search."""
        exact = copy.copy(self)
        exact.exact = True
        return exact
