"""The retrieval API: load a run directory once, then ask for recommendations and similar items.

    from twotower import Retriever
    retriever = Retriever.load("outputs/my-run")
    ids, scores = retriever.recommend(196, k=10)            # one user: two arrays of length <= k
    results = retriever.recommend([196, 186], k=10)          # several: a list of (ids, scores)
    ids, scores = retriever.similar_items("Toy Story (1995)", k=5)   # ids or titles
    ids, scores = retriever.recommend_from_history([1, 260, 1196], k=10)  # a new user (history tower runs)

Each answer is a ``Result``: it unpacks as ``(ids, scores)`` and also carries the items' ``titles`` and its
``fallback`` (``"popular"`` where popular items stand in for the model). The index proposes candidates;
scores are always recomputed exactly from the exported vectors. Every item a user has anywhere in the run's
log (whichever split it fell into), and any ``deny`` list, is filtered out after over-fetching, so ``k``
results come back whenever the catalogue has ``k`` items left; an ``allow`` list restricts the answer to
those items. Unknown ids raise ``UnknownIdError`` naming them, or, with ``unknown="popular"``, get the most
popular items of the run's log. A loaded retriever only reads its arrays, so threads may share it.

Items can join or leave the catalogue without a rebuild: ``add_items(ids, vectors)`` (or ``features=`` for
a feature tower to embed) and ``remove_items(ids)``; ``save_catalogue()`` keeps them in the run directory,
and ``twotower-index`` folds the saved ones into the index (``twotower.serving.catalogue``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from twotower import checks
from twotower.errors import ConfigError, DataError, RunError, UnknownIdError
from twotower.index import Backend, ExactIndex, backend_from, exact_top, read_meta
from twotower.run import Run
from twotower.serving.catalogue import Catalogue
from twotower.serving.encoder import TowerEncoder
from twotower.serving.result import Result

# What to do with ids the run does not know: refuse them (error), leave them out (skip), or answer with the most
# popular items (popular). A user is answered or refused (error, popular); a history's items are left out or
# refused, and a history with no known item is answered with popular items (error, skip, popular).
UNKNOWN = ("error", "skip", "popular")
USER_UNKNOWN = tuple(word for word in UNKNOWN if word != "skip")  # a single answer per user: no skipping


def latest_places(rows: np.ndarray) -> np.ndarray:
    """``rows`` in order with each repeated one kept at its last place (a history's most recent use)."""
    reversed_rows = rows[::-1]
    _, first = np.unique(reversed_rows, return_index=True)
    return reversed_rows[np.sort(first)][::-1]


def _is_batch(query: object) -> bool:
    return isinstance(query, (list, tuple, np.ndarray, pl.Series))


def _is_history_batch(query: object) -> bool:
    """Whether ``query`` is several histories (a sequence of sequences), not one."""
    return _is_batch(query) and len(query) > 0 and all(_is_batch(history) for history in query)


def _check_k(k: object, available: int) -> int:
    """``k`` as asked, capped at the ``available`` candidates (a larger k cannot return more, and a huge one
    would overflow the index's search budget)."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k <= 0:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    return int(min(k, max(available, 1)))


def _chosen_index(index: Backend | str | None, run: Run) -> Backend | None:
    """The index to search with: a backend as given, or one named (``exact``, or the run's own kind with its
    saved settings)."""
    if not isinstance(index, str):
        return index
    if index == "exact":
        return ExactIndex()
    meta = read_meta(run.paths.index)
    return backend_from(index, meta.get("params") if meta.get("backend") == index else None)


class Retriever:
    """Top-k retrieval over a finished run: its users (vectors, what each has seen) and its ``catalogue``."""

    def __init__(self, run: Run, catalogue: Catalogue) -> None:
        self.run = run
        self.catalogue = catalogue  # replaced whole by a change, never changed in place
        self._changing = threading.Lock()
        self.encoder = TowerEncoder(run)

    @classmethod
    def load(cls, run_dir: str | Path, index: Backend | str | None = None) -> Retriever:
        """Open a run directory. ``index``: None searches with the run's own index; an ``ExactIndex`` (or
        ``"exact"``) by brute force; a backend of the run's kind with that backend's query settings."""
        run = Run.open(run_dir)
        retriever = cls(run, Catalogue.load(run, _chosen_index(index, run)))
        _ = run.user_vectors, run.history_vectors, run.seen  # every artifact checked before it serves
        return retriever

    def why_unknown(self, side: str, ids: list[object]) -> str:
        """Why ids of ``side`` that the source had are not in the run (``""`` where nothing says)."""
        reasons = list(self.run.dropped_reasons(side, ids).items())[:3]
        return "".join(f"; {id_} is in the log but was left out ({reason})" for id_, reason in reasons)

    @contextmanager
    def _explained(self, side: str, ids: list[object]) -> Iterator[None]:
        """An unknown-id error that also says why those ids are not in the run, where the run knows."""
        try:
            yield
        except UnknownIdError as error:
            reason = self.why_unknown(side, ids)
            if not reason:
                raise
            raise UnknownIdError(f"{error}{reason}") from None

    def recommend(self, users: object, k: int = 10, exclude_seen: bool = True, allow: Iterable | None = None,
                  deny: Iterable | None = None, unknown: str = "error") -> Result | list[Result]:
        """Top-``k`` items for a user id (or a batch of ids), without the items the user already has.

        ``allow``/``deny`` are item ids to restrict to / leave out. ``unknown="popular"`` answers ids
        outside the vocabulary with the most popular items of the run's log instead of raising.
        """
        checks.choice("unknown", unknown, USER_UNKNOWN)
        catalogue = self.catalogue  # one catalogue for the whole call
        k = _check_k(k, len(self.run.item_vocab))
        batch = list(users) if _is_batch(users) else [users]
        with self._explained("user", batch):
            rows = self.run.user_vocab.lookup(batch, missing=-1 if unknown == "popular" else None)
        with self._explained("item", [*(() if deny is None else deny), *(() if allow is None else allow)]):
            denied = catalogue.denied(deny)
            allowed = catalogue.allowed(allow)
        exclude = [np.union1d(self.run.seen.row(row), denied) if exclude_seen and row >= 0 else denied for row in rows]
        known = rows >= 0
        results: list[Result | None] = [None] * len(rows)
        found = catalogue.search(self.run.user_vectors[rows[known]], k, [exclude[i] for i in np.flatnonzero(known)],
                                 allow=allowed)
        for position, result in zip(np.flatnonzero(known), found, strict=True):
            results[position] = result
        for position in np.flatnonzero(~known):
            results[position] = catalogue.popular(k, exclude=exclude[position], allow=allowed)
        return results if _is_batch(users) else results[0]

    def recommend_from_history(self, items: object, k: int = 10, allow: Iterable | None = None,
                               deny: Iterable | None = None, unknown: str = "error") -> Result | list[Result]:
        """Top-``k`` items for a user known only by the items they interacted with: one list of item ids, in the
        order they were met, most recent last, or a batch of lists. No retraining and no training data: the
        run's user tower embeds the list: a history tower by the mean of its items' history vectors, a sequence
        tower by reading it in order. The given items are left out of the answer.

        Only runs whose user tower embeds users from items can do this (the default, ``model=history``,
        ``model/user_tower=sequence``); with a history part beside user ids, a new user is the history part
        alone. A repeated item counts once, at its latest place. A known user's whole training
        history gives that user's own vector when the tower has no user ids (``use_id=false``), so the same
        ranking as ``recommend(user)``, which also leaves out what else the user has (e.g. low ratings).
        ``unknown="skip"`` (or ``"popular"``) drops item ids outside the run's vocabulary (also items added
        after training) instead of raising; a history left empty gets the most popular items.
        """
        if self.run.history_vectors is None and not self.reads_sequences:
            raise ConfigError(f"{self.run.root} was trained without a history tower, so it cannot embed a user "
                              "from their items; train with a user tower that does (the default, model=history, "
                              "or model/user_tower=sequence)")
        checks.choice("unknown", unknown, UNKNOWN)
        catalogue = self.catalogue
        k = _check_k(k, len(self.run.item_vocab))
        histories = list(items) if _is_history_batch(items) else [items]
        rows = []
        for history in histories:
            if not _is_batch(history):
                raise DataError(f"a history is a list of item ids, got {history!r}")
            with self._explained("item", list(history)):
                found = self.run.item_vocab.lookup(list(history), missing=None if unknown == "error" else -1)
            rows.append(latest_places(found[found >= 0]))
        denied = catalogue.denied(deny)
        allowed = catalogue.allowed(allow)
        exclude = [np.union1d(given, denied) for given in rows]
        results = [None if len(given) else catalogue.popular(k, exclude=excluded, allow=allowed)
                   for given, excluded in zip(rows, exclude, strict=True)]
        filled = [i for i, result in enumerate(results) if result is None]
        if filled:
            found = catalogue.search(self.history_queries([rows[i] for i in filled]), k, [exclude[i] for i in filled],
                                     allow=allowed)
            for position, result in zip(filled, found, strict=True):
                results[position] = result
        return results if _is_history_batch(items) else results[0]

    @property
    def reads_sequences(self) -> bool:
        """Whether the run's user tower reads a user's items in order (a sequence tower)."""
        return self.run.manifest.user_tower == "SequenceTower"

    def history_queries(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """The user tower's vectors for histories of item rows (in order), in the space of the index."""
        catalogue = self.catalogue
        if self.reads_sequences:
            return catalogue.user_queries(self.encoder.encode_sequences(histories))
        queries = np.stack([self.run.history_vectors[rows].mean(axis=0) for rows in histories])
        if self.run.score == "cosine":
            queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        # A tower with user ids puts the history part last, beside an ID part that a new user does not have.
        return catalogue.user_queries(np.pad(queries, ((0, 0), (catalogue.model_dim - queries.shape[1], 0))))

    def similar_items(self, items: object, k: int = 10, allow: Iterable | None = None,
                      deny: Iterable | None = None) -> Result | list[Result]:
        """The ``k`` items closest to an item id or title (or a batch), by the model's score; not itself."""
        catalogue = self.catalogue
        k = _check_k(k, len(self.run.item_vocab))
        batch = list(items) if _is_batch(items) else [items]
        with self._explained("item", batch):
            rows = np.array([catalogue.resolve(item) for item in batch], dtype=np.int64)
        denied = catalogue.denied(deny)
        allowed = catalogue.allowed(allow)
        results = catalogue.search(catalogue.item_queries(rows), k, [np.union1d(denied, [row]) for row in rows],
                                   allow=allowed)
        return results if _is_batch(items) else results[0]

    def similar_users(self, users: object, k: int = 10) -> Result | list[Result]:
        """The ``k`` users closest to a user id (or a batch), by exact search over the user vectors."""
        k = _check_k(k, len(self.run.user_vocab))
        batch = list(users) if _is_batch(users) else [users]
        with self._explained("user", batch):
            rows = np.array([self.run.user_vocab.resolve(user) for user in batch], dtype=np.int64)
        vectors = self.run.user_vectors[:, :self.run.manifest.model_dim]  # users alike, whatever the prior
        indices, scores = exact_top(vectors[rows], vectors, k + 1)
        results = []
        for row, found, found_scores in zip(rows, indices, scores, strict=True):
            keep = found != row
            results.append(Result(self.run.user_vocab.decode(found[keep][:k]), found_scores[keep][:k]))
        return results if _is_batch(users) else results[0]

    def popular(self, k: int = 10, exclude: np.ndarray | None = None, allow: Iterable | None = None) -> Result:
        """The ``k`` items with the most interactions in the run's log (the fallback for unknown users);
        ``exclude`` holds item rows, ``allow`` item ids."""
        catalogue = self.catalogue
        allowed = catalogue.allowed(allow)
        return catalogue.popular(_check_k(k, len(self.run.item_vocab)), exclude=exclude, allow=allowed)

    def search(self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None,
               allow: Iterable | None = None) -> list[Result]:
        """Top-``k`` items by dot product with each query vector, leaving out ``exclude[i]`` (item rows)."""
        catalogue = self.catalogue
        allowed = catalogue.allowed(allow)
        return catalogue.search(queries, _check_k(k, len(self.run.item_vocab)), exclude, allow=allowed)

    def describe_items(self, ids: Iterable[object]) -> list[str | None]:
        """Titles for item ids where the vocabulary (or the added items) have them."""
        catalogue = self.catalogue
        rows = catalogue.rows(list(ids))
        return catalogue.titles(rows) or [None] * len(rows)

    def add_items(self, ids: Sequence[object], vectors: object = None, features: pl.DataFrame | None = None,
                  titles: Sequence[str | None] | None = None) -> None:
        """Put new items in the catalogue without rebuilding the index: their ``vectors`` (one per id, in the
        run's space), or their ``features`` (one row per id) for the run's item feature tower to embed."""
        if (vectors is None) == (features is None):
            raise DataError("give the new items' vectors or their features (one of the two)")
        if features is not None:
            vectors = self.embed("item", features)
        with self._changing:  # one writer at a time; readers keep the catalogue they took
            self.catalogue = self.catalogue.with_items(ids, vectors, titles)

    def remove_items(self, ids: Sequence[object]) -> None:
        """Take items (the run's or added ones) out of every answer, without rebuilding the index."""
        with self._changing:
            self.catalogue = self.catalogue.without(ids)

    def save_catalogue(self) -> dict[str, int]:
        """Write the items added and removed since training into the run directory (``catalogue/``, vouched
        for in run.json), so that loading the run again starts with them and ``twotower-index`` folds the
        added ones into the index. Returns the counts saved."""
        with self._changing:  # no change lands mid-save, and two saves cannot write an older catalogue last
            catalogue = self.catalogue
            added, removed = catalogue.frames()
            paths = self.run.paths
            try:
                self.run.record({paths.catalogue("added"): added, paths.catalogue("removed"): removed})
            except OSError as error:
                raise RunError(f"cannot save the catalogue into {self.run.root}: {error}") from error
        return {**catalogue.counts(), "saved_rows": len(catalogue.added_ids), "indexed_rows": catalogue.indexed}

    def about(self) -> dict[str, Any]:
        """What is being served: the run, its sizes, score and index, and the catalogue's changes."""
        catalogue = self.catalogue
        return {"run_dir": str(self.run.root), "score": self.run.score, "users": len(self.run.user_vocab),
                "items": len(self.run.item_vocab), "dim": catalogue.model_dim // catalogue.parts,
                "parts": catalogue.parts, "popularity_prior": catalogue.prior, "index": catalogue.index.backend,
                **catalogue.counts()}

    def item_features(self) -> list[str]:
        """The side features the run's item tower reads (none for an ID tower)."""
        return self.encoder.features("item")

    def embed(self, side: str, features: pl.DataFrame) -> np.ndarray:
        """Vectors for new users or items (``side``) from their side features alone (cold start).

        Only runs whose tower for that side is a feature tower can do this; ``features`` has one row per
        new id and the feature columns the model was trained with (missing values are allowed). New users come
        as queries of the index (``search``), new items as ``add_items`` takes them.
        """
        vectors = self.encoder.embed_features(side, features)
        return self.catalogue.user_queries(vectors) if side == "user" else vectors
