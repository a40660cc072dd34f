"""One answer of retrieval: items with their scores, titles, and whether a fallback gave them."""

from __future__ import annotations

from typing import Any

import numpy as np


class Result(tuple):
    """One answer, best first: the pair ``(ids, scores)`` (it unpacks as one), with the items' ``titles``
    (None where the run has none) and ``fallback``: None for the model's ranking, ``"popular"`` where the
    most popular items stand in for it (an unknown user, an empty history), their scores then the share of
    the run's interactions each item has."""

    titles: list[str | None] | None
    fallback: str | None

    def __new__(cls, ids: np.ndarray, scores: np.ndarray, titles: list[str | None] | None = None,
                fallback: str | None = None) -> Result:
        result = super().__new__(cls, (ids, scores))
        result.titles = titles
        result.fallback = fallback
        return result

    @property
    def ids(self) -> np.ndarray:
        return self[0]

    @property
    def scores(self) -> np.ndarray:
        return self[1]

    def records(self) -> list[dict[str, Any]]:
        """One dict per item, as the command line and the HTTP service give them: ``id``, ``score`` and,
        where there are, ``title`` and ``fallback``."""
        titles = self.titles or [None] * len(self.ids)
        rows = []
        for id_, score, title in zip(self.ids.tolist(), self.scores.tolist(), titles, strict=True):
            row = {"id": id_, "score": round(float(score), 6)}
            if title is not None:
                row["title"] = title
            if self.fallback is not None:
                row["fallback"] = self.fallback
            rows.append(row)
        return rows
