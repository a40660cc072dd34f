"""Recall as a promise: a built index measures the recall@10 it gives against exact search on the task
retrieval serves (a seeded sample of users, each user's seen items left out), and raises its search budget,
then the density of its structure, until it reaches its ``target_recall``; where it cannot before a search
would cost about as much as exact search, or where exact search answers more queries per second than the
setting that meets it (``exact_when_faster``; false keeps every build a function of the budgets alone), it
serves exactly. Each step is a new setting (``Tunable``); the one chosen is saved with the index (its
``params``), so ``Retriever``, the command line and the service search with it, and ``index/report.json``
and one log line say what was measured and chosen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twotower.index.backend import Backend, Tunable
from twotower.index.exact import ExactIndex
from twotower.index.search import recall, search_excluding, top_rows

K = 10


@dataclass(frozen=True)
class Probe:
    """The queries an index is measured on, and what each leaves out (the user's seen items)."""

    queries: np.ndarray
    exclude: list[np.ndarray]

    @classmethod
    def sample(cls, users: np.ndarray, seen: Callable[[int], np.ndarray], n: int, seed: int = 0) -> Probe:
        """A seeded sample of ``n`` of the ``users``' vectors, each with what ``seen(row)`` says it has."""
        return cls.of(users, cls.draw(len(users), n, seed), seen)

    @staticmethod
    def draw(n_users: int, n: int, seed: int = 0) -> np.ndarray:
        """The rows a seeded probe of ``n`` of ``n_users`` users asks for (``sample``'s)."""
        return np.random.default_rng(seed).choice(n_users, size=min(n, n_users), replace=False)

    @classmethod
    def of(cls, users: np.ndarray, rows: np.ndarray, seen: Callable[[int], np.ndarray]) -> Probe:
        """The probe of the ``users``' vectors at ``rows``, each with what ``seen(row)`` says it has."""
        return cls(np.ascontiguousarray(users[rows]), [seen(row) for row in rows])


def found_by(index: Backend, vectors: np.ndarray, probe: Probe) -> list[np.ndarray]:
    """The probe's seen-filtered top ``K`` rows by ``index``."""
    return top_rows(index, vectors, probe.queries, K, probe.exclude)


def queries_per_second(index: Backend, vectors: np.ndarray, probe: Probe, n: int = 200) -> float:
    """Single queries answered per second, as the service answers a user per request, on ``n`` of the probe's."""
    started = time.perf_counter()
    for query, excluded in zip(probe.queries[:n], probe.exclude[:n], strict=False):
        search_excluding(index, vectors, query[None], K, [excluded])
    return min(n, len(probe.queries)) / max(time.perf_counter() - started, 1e-9)


def tune(index: Tunable, vectors: np.ndarray, score: str, folder: Path, probe: Probe
         ) -> tuple[Tunable, dict[str, Any]]:
    """The setting of a built and loaded ``index`` (its files in ``folder``) that meets its target recall on
    ``probe``, loaded, and what was measured: the recall and single-query throughput of the setting chosen,
    exact search's, and each step's. With the index's ``exact_when_faster``, it serves exactly where the setting
    that meets the target answers fewer single queries per second than exact search (which then is both faster
    and exact); ``why_exact`` says why it serves exactly, when it does."""
    exact = ExactIndex()
    exact.load(vectors, {}, folder)
    truth, exact_qps = found_by(exact, vectors, probe), queries_per_second(exact, vectors, probe)

    def measured(index: Backend) -> dict[str, Any]:
        found, qps = found_by(index, vectors, probe), queries_per_second(index, vectors, probe)
        return {"setting": index.describe(), "recall@10": round(recall(found, truth), 4), "qps": round(qps)}

    steps = [measured(index)]
    why = None
    while not index.exact and steps[-1]["recall@10"] < index.target_recall:
        wider = index.widened()
        if wider is None and (deeper := index.deepened()) is not None:
            facts = deeper.build(vectors, score, folder)
            deeper.load(vectors, {**facts, "n_items": len(vectors)}, folder)
            wider = deeper
        if wider is None:
            why = "no setting met the target recall before costing about as much as exact search"
            index = index.served_exactly()
            steps.append({"setting": index.describe(), "recall@10": 1.0, "qps": round(exact_qps)})
            break
        index = wider
        steps.append(measured(index))
    if not index.exact and index.exact_when_faster and steps[-1]["qps"] < exact_qps:
        why = (f"{steps[-1]['setting']} met the target recall at {steps[-1]['qps']} queries/s, fewer than exact "
               f"search's {round(exact_qps)}")
        index = index.served_exactly()
        steps.append({"setting": index.describe(), "recall@10": 1.0, "qps": round(exact_qps)})
    return index, {"recall@10_vs_exact": steps[-1]["recall@10"], "qps": steps[-1]["qps"],
                   "exact_qps": round(exact_qps), "tuning": steps, "why_exact": why}
