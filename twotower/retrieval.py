"""The retrieval API: load a run directory once, then ask for recommendations and similar items.

    from twotower import Retriever
    retriever = Retriever.load("outputs/my-run")
    ids, scores = retriever.recommend(196, k=10)            # one user: two arrays of length <= k
    results = retriever.recommend([196, 186], k=10)          # several: a list of (ids, scores)
    ids, scores = retriever.similar_items("Toy Story (1995)", k=5)   # ids or titles
    ids, scores = retriever.recommend_from_history([1, 260, 1196], k=10)  # a new user (history tower runs)

The index proposes candidates; scores are always recomputed exactly from the exported vectors. Every item
a user has anywhere in the run's log (whichever split it fell into), and any ``deny`` list, is filtered out
after over-fetching, so ``k`` results come back whenever the catalogue has ``k`` items left; an ``allow``
list restricts the answer to those items. Unknown ids raise ``TwoTowerError`` naming them, or, with
``unknown="popular"``, get the most popular items of the run's log. A loaded retriever only reads its
arrays, so threads may share it.

Items can join or leave the catalogue without a rebuild: ``add_items(ids, vectors)`` (or ``features=`` for
a feature tower to embed) and ``remove_items(ids)``; ``save_catalogue()`` keeps them in the run directory,
and ``rebuild_index`` (what ``twotower-index`` runs) folds the saved ones into the index; see
``twotower.live_items``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from twotower.artifacts import (
    SPLIT_NAMES,
    RunPaths,
    check_fingerprints,
    read_manifest,
    read_parquet,
    record_artifacts,
    run_path,
)
from twotower.data.user_items import UserItems
from twotower.data.vocab import Vocabulary
from twotower.embeddings import read_vectors
from twotower.errors import TwoTowerError
from twotower.index import (
    Backend,
    ExactIndex,
    build_index,
    exact_top,
    index_report,
    load_index,
    read_meta,
    search_excluding,
)
from twotower.live_items import LiveItems, saved_vectors

Result = tuple[np.ndarray, np.ndarray]
UNKNOWN_POLICIES = ("error", "popular")
HISTORY_UNKNOWN_POLICIES = ("error", "skip")
# Which index a loaded run searches with: its own (null), its Annoy index, or brute force.
INDEX_CHOICES = (None, "annoy", "exact")
CATALOGUE = ("added", "removed")  # what save_catalogue writes: RunPaths.catalogue(name)


def _is_batch(query: object) -> bool:
    return isinstance(query, (list, tuple, np.ndarray, pl.Series))


def _is_history_batch(query: object) -> bool:
    """Whether ``query`` is several histories (a sequence of sequences), not one."""
    return _is_batch(query) and len(query) > 0 and all(_is_batch(history) for history in query)


def _check_k(k: object, available: int) -> int:
    """``k`` as asked, capped at the ``available`` candidates (a larger k cannot return more, and a huge one
    would overflow the index's search budget)."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k <= 0:
        raise TwoTowerError(f"k must be a positive integer, got {k!r}")
    return int(min(k, max(available, 1)))


def read_seen(paths: RunPaths, n_users: int) -> UserItems:
    """Each user's items anywhere in the log the run was given (every split, and the pairs that were not
    positives): what they already have."""
    frames = [read_parquet(paths.split(name)) for name in SPLIT_NAMES]
    if paths.non_positive.exists():
        frames.append(read_parquet(paths.non_positive))
    return UserItems.from_frame(pl.concat(frames), n_users)


def read_catalogue(paths: RunPaths, manifest: dict[str, Any]) -> list[pl.DataFrame | None]:
    """The added and removed items that ``save_catalogue`` wrote (None for a kind it did not write); only
    files run.json vouches for, whose fingerprints ``check_fingerprints`` has checked."""
    files = [paths.catalogue(name) for name in CATALOGUE]
    return [read_parquet(file) if file.relative_to(paths.root).as_posix() in manifest["fingerprints"] else None
            for file in files]


def folded_rows(folder: Path, n_items: int, n_added: int) -> int:
    """How many saved added rows the run's index holds: a fold builds it over the run's ``n_items`` and the
    added rows after them. A count out of range is left for ``load_index`` to refuse."""
    held = read_meta(folder).get("n_items")
    return held - n_items if isinstance(held, int) and n_items <= held <= n_items + n_added else 0


def rebuild_index(run_dir: str | Path, index: Backend, recall_queries: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Build ``index`` over a run's exported items and the added items its catalogue saved, in that order
    (rows ``n, n+1, ...`` as in the buffer), replacing the run's index once the new one is complete. A run
    loaded afterwards finds those items in the index instead of searching them exactly. Returns the index's
    recall report, also saved in ``index/report.json``."""
    paths = RunPaths(run_path(run_dir))
    manifest = read_manifest(paths)
    check_fingerprints(paths, manifest)  # a rebuild never blesses vectors the run did not export
    _, users = read_vectors(paths.embeddings("users"))
    _, items = read_vectors(paths.embeddings("items"))
    added, _ = read_catalogue(paths, manifest)
    if added is not None:
        items = np.concatenate([items, saved_vectors(added, items.shape[1])])
    meta = build_index(index, items, manifest["score"], paths.index, checkpoint=manifest["checkpoint_fingerprint"])
    seen = read_seen(paths, len(users))
    return index_report(index, users, items, seen, meta, paths.index, recall_queries, seed)


class Retriever:
    """Top-k retrieval over a finished run: its vocabularies, vectors, interactions and index."""

    def __init__(self, paths: RunPaths, manifest: dict[str, Any], index: Backend,
                 user_vocab: Vocabulary, item_vocab: Vocabulary,
                 user_vectors: np.ndarray, index_vectors: np.ndarray, seen: UserItems, live: LiveItems,
                 history_vectors: np.ndarray | None = None) -> None:
        self.paths = paths
        self.manifest = manifest
        self.names = manifest["names"]
        self.index = index
        self.user_vocab = user_vocab
        self.item_vocab = item_vocab
        self.user_vectors = user_vectors
        self.index_vectors = index_vectors  # the run's items, then any added ones a fold put in the index
        self.item_vectors = index_vectors[:len(item_vocab)]  # a view, not a copy
        self.seen = seen
        self.item_counts = np.bincount(seen.items, minlength=len(item_vocab))
        self.popular_items = np.argsort(-self.item_counts, kind="stable")
        self._model = None
        self._model_lock = threading.Lock()
        self.live = live  # replaced whole, never changed in place
        self._live_lock = threading.Lock()
        self.history_vectors = history_vectors  # a history tower's: items as evidence about a user

    @classmethod
    def load(cls, run_dir: str | Path, index: str | None = None) -> Retriever:
        """Open a run directory; ``index="exact"`` searches by brute force instead of its Annoy index."""
        if index not in INDEX_CHOICES:
            raise TwoTowerError(f"index must be null (the run's own), annoy or exact, got {index!r}")
        paths = RunPaths(run_path(run_dir))
        manifest = read_manifest(paths)
        check_fingerprints(paths, manifest)
        names = manifest["names"]
        user_vocab = Vocabulary.load(paths.vocab("users"), names["user"])
        item_vocab = Vocabulary.load(paths.vocab("items"), names["item"])
        _, user_vectors = read_vectors(paths.embeddings("users"))
        _, item_vectors = read_vectors(paths.embeddings("items"))
        if len(user_vectors) != len(user_vocab) or len(item_vectors) != len(item_vocab):
            raise TwoTowerError(f"{paths.root}: embeddings and vocabularies disagree in size; re-export the run")
        added, removed = read_catalogue(paths, manifest)
        n_added = 0 if added is None else added.height
        indexed = 0 if index == "exact" else folded_rows(paths.index, len(item_vocab), n_added)
        live = LiveItems.restored(item_vocab, item_vectors.shape[1], added, removed, indexed)
        if indexed:
            item_vectors = np.concatenate([item_vectors, live.vectors[:indexed]])  # the rows the index holds
        if index == "exact":  # brute force over the run's items; every added one is searched exactly
            searcher: Backend = ExactIndex()
            searcher.load(item_vectors, {}, paths.index)
        else:
            searcher, _ = load_index(paths.index, item_vectors, manifest["score"],
                                     checkpoint=manifest.get("checkpoint_fingerprint"))
        history = paths.embeddings("history")
        history_vectors = read_vectors(history)[1] if history.exists() else None  # fingerprint checked above
        if history_vectors is not None and len(history_vectors) != len(item_vocab):
            raise TwoTowerError(f"{history}: {len(history_vectors)} vectors for {len(item_vocab)} items; "
                                "train the run again")
        return cls(paths, manifest, searcher, user_vocab, item_vocab, user_vectors, item_vectors,
                   read_seen(paths, len(user_vocab)), live, history_vectors)

    def recommend(self, users: object, k: int = 10, exclude_seen: bool = True, allow: Iterable | None = None,
                  deny: Iterable | None = None, unknown: str = "error") -> Result | list[Result]:
        """Top-``k`` items for a user id (or a batch of ids), without the items the user already has.

        ``allow``/``deny`` are item ids to restrict to / leave out. ``unknown="popular"`` answers ids
        outside the vocabulary with the most popular items of the run's log instead of raising.
        """
        if unknown not in UNKNOWN_POLICIES:
            raise TwoTowerError(f"unknown must be one of {UNKNOWN_POLICIES}, got '{unknown}'")
        k = _check_k(k, len(self.item_vocab))
        batch = list(users) if _is_batch(users) else [users]
        rows = self.user_vocab.lookup(batch, missing=-1 if unknown == "popular" else None)
        denied = self._item_rows(deny)
        exclude = [np.union1d(self.seen.row(row), denied)
                   if exclude_seen and row >= 0 else denied for row in rows]
        known = rows >= 0
        results: list[Result | None] = [None] * len(rows)
        found = self.search(self.user_vectors[rows[known]], k, [e for e, ok in zip(exclude, known, strict=True) if ok],
                            allow=allow)
        for position, result in zip(np.flatnonzero(known), found, strict=True):
            results[position] = result
        for position in np.flatnonzero(~known):
            results[position] = self.popular(k, exclude=exclude[position], allow=allow)
        return results if _is_batch(users) else results[0]

    def recommend_from_history(self, items: object, k: int = 10, allow: Iterable | None = None,
                               deny: Iterable | None = None, unknown: str = "error") -> Result | list[Result]:
        """Top-``k`` items for a user known only by the items they interacted with: one list of item ids,
        or a batch of lists. No retraining and no training data: the run's history tower embeds the list
        (the mean of its items' history vectors). The given items are left out of the answer.

        Only runs trained with a history tower (``model=history``) can do this. A known user's whole training
        history gives that user's own vector when the tower has no user ids (``use_id=false``), so the same
        ranking as ``recommend(user)``, which also leaves out what else the user has (e.g. low ratings).
        ``unknown="skip"`` drops item ids outside the run's vocabulary (also items added after training)
        instead of raising; a history left empty gets the most popular items.
        """
        if self.history_vectors is None:
            raise TwoTowerError(f"{self.paths.root} was trained without a history tower, so it cannot embed a user "
                                "from their items; train with model=history")
        if unknown not in HISTORY_UNKNOWN_POLICIES:
            raise TwoTowerError(f"unknown must be one of {HISTORY_UNKNOWN_POLICIES}, got '{unknown}'")
        histories = list(items) if _is_history_batch(items) else [items]
        rows = []
        for history in histories:
            if not _is_batch(history):
                raise TwoTowerError(f"a history is a list of item ids, got {history!r}")
            found = self.item_vocab.lookup(list(history), missing=-1 if unknown == "skip" else None)
            rows.append(np.unique(found[found >= 0]))
        denied = self._item_rows(deny)
        exclude = [np.union1d(given, denied) for given in rows]
        results = [self.popular(k, exclude=excluded, allow=allow) if not len(given) else None
                   for given, excluded in zip(rows, exclude, strict=True)]
        filled = [i for i, result in enumerate(results) if result is None]
        if filled:
            queries = self.history_queries([rows[i] for i in filled])
            for position, result in zip(filled, self.search(queries, k, [exclude[i] for i in filled], allow=allow),
                                        strict=True):
                results[position] = result
        return results if _is_history_batch(items) else results[0]

    def history_queries(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """The history tower's user vectors for histories of item indices, in the space of the index."""
        queries = np.stack([self.history_vectors[rows].mean(axis=0) for rows in histories])
        if self.manifest["score"] == "cosine":
            queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        # A tower with user ids puts the history part last, beside an ID part that a new user does not have.
        return np.pad(queries, ((0, 0), (self.item_vectors.shape[1] - queries.shape[1], 0)))

    def similar_items(self, items: object, k: int = 10, allow: Iterable | None = None,
                      deny: Iterable | None = None) -> Result | list[Result]:
        """The ``k`` items closest to an item id or title (or a batch), by the model's score; not itself."""
        batch = list(items) if _is_batch(items) else [items]
        live = self.live
        rows = np.array([live.resolve(item) for item in batch], dtype=np.int64)
        denied = self._item_rows(deny)
        results = self.search(live.vectors_for(self.item_vectors, rows), k,
                              [np.union1d(denied, [row]) for row in rows], allow=allow)
        return results if _is_batch(items) else results[0]

    def similar_users(self, users: object, k: int = 10) -> Result | list[Result]:
        """The ``k`` users closest to a user id (or a batch), by exact search over the user vectors."""
        k = _check_k(k, len(self.user_vocab))
        batch = list(users) if _is_batch(users) else [users]
        rows = np.array([self.user_vocab.resolve(user) for user in batch], dtype=np.int64)
        indices, scores = exact_top(self.user_vectors[rows], self.user_vectors, k + 1)
        results = []
        for row, found, found_scores in zip(rows, indices, scores, strict=True):
            keep = found != row
            results.append((self.user_vocab.decode(found[keep][:k]), found_scores[keep][:k]))
        return results if _is_batch(users) else results[0]

    def popular(self, k: int = 10, exclude: np.ndarray | None = None, allow: Iterable | None = None) -> Result:
        """The ``k`` items with the most interactions in the run's log (the fallback for unknown users)."""
        order = self.popular_items
        if allow is not None:
            order = order[np.isin(order, self._item_rows(allow))]
        exclude = self.live.masked(exclude)
        if len(exclude):
            order = order[~np.isin(order, exclude)]
        top = order[:_check_k(k, len(order))]
        return self.item_vocab.decode(top), self.item_counts[top].astype(np.float32)

    def search(self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None = None,
               allow: Iterable | None = None) -> list[Result]:
        """Top-``k`` items by dot product with each query vector, leaving out ``exclude[i]`` (item indices)."""
        k = _check_k(k, len(self.item_vectors))
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        exclude = exclude if exclude is not None else [np.empty(0, dtype=np.int64)] * len(queries)
        allowed = None if allow is None else self._item_rows(allow)
        live = self.live  # taken after every row lookup: a later buffer knows every earlier row
        exclude = [live.masked(excluded) for excluded in exclude]
        if allowed is not None:
            return self._search_allowed(queries, k, exclude, allowed, live)
        found = search_excluding(self.index, self.index_vectors, queries, k, exclude)
        return [live.top(query, indices, scores, k, excluded)
                for query, (indices, scores), excluded in zip(queries, found, exclude, strict=True)]

    def _search_allowed(self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray], allowed: np.ndarray,
                        live: LiveItems) -> list[Result]:
        """An allow list is searched exactly: it is usually small, and an index cannot filter by it."""
        return [live.rank(self.item_vectors, query, allowed[~np.isin(allowed, excluded)], k)
                for query, excluded in zip(queries, exclude, strict=True)]

    def _item_rows(self, ids: Iterable | None) -> np.ndarray:
        if ids is None:
            return np.empty(0, dtype=np.int64)
        return np.unique(self.live.rows(list(ids)))

    def describe_items(self, ids: Iterable[object]) -> list[str | None]:
        """Titles for item ids where the vocabulary (or the added items) have them."""
        live = self.live
        return live.titles_of(live.rows(list(ids)))

    def add_items(self, ids: Sequence[object], vectors: object = None, features: pl.DataFrame | None = None,
                  titles: Sequence[str | None] | None = None) -> None:
        """Put new items in the catalogue without rebuilding the index: their ``vectors`` (one per id, in the
        run's space), or their ``features`` (one row per id) for the run's item feature tower to embed."""
        if (vectors is None) == (features is None):
            raise TwoTowerError("give the new items' vectors or their features (one of the two)")
        if features is not None:
            vectors = self.embed("item", features)
        with self._live_lock:  # one writer at a time; readers keep the buffer they took
            self.live = self.live.added(ids, vectors, titles, self.manifest["score"])

    def remove_items(self, ids: Sequence[object]) -> None:
        """Take items (the run's or added ones) out of every answer, without rebuilding the index."""
        with self._live_lock:
            self.live = self.live.without(ids)

    def save_catalogue(self) -> dict[str, int]:
        """Write the items added and removed since training into the run directory (``catalogue/``, vouched
        for in run.json), so that loading the run again starts with them and ``rebuild_index`` (or
        ``twotower-index``) folds the added ones into the index. Returns the counts saved."""
        with self._live_lock:  # no change lands mid-save, and two saves cannot write an older buffer last
            live = self.live
            added, removed = live.frames()
            try:
                record_artifacts(self.paths, self.manifest, {self.paths.catalogue("added"): added,
                                                             self.paths.catalogue("removed"): removed})
            except OSError as error:
                raise TwoTowerError(f"cannot save the catalogue into {self.paths.root}: {error}") from error
        return {"added_items": live.n_added, "removed_items": live.n_removed, "saved_rows": len(live.ids),
                "indexed_rows": live.indexed}

    def model(self) -> Any:
        """The trained ``TwoTowerModel`` (loaded on first use; needs PyTorch)."""
        if not self.manifest.get("checkpoint"):
            raise TwoTowerError(f"{self.paths.root} has no checkpoint, so it has no model to embed with")
        with self._model_lock:
            if self._model is None:
                from twotower.module import TwoTowerModel

                self._model = TwoTowerModel.load_from_checkpoint(self.paths.root / self.manifest["checkpoint"],
                                                                 map_location="cpu").eval()
            return self._model

    def embed(self, side: str, features: pl.DataFrame) -> np.ndarray:
        """Vectors for new users or items (``side``) from their side features alone (cold start).

        Only runs whose tower for that side is a feature tower can do this; ``features`` has one row per
        new id and the feature columns the model was trained with (missing values are allowed).
        """
        import torch

        from twotower.data.features import encode_features
        from twotower.scoring import project
        from twotower.towers import FeatureTower

        model = self.model()
        tower = getattr(model, f"{side}_tower", None)
        if not isinstance(tower, FeatureTower):
            raise TwoTowerError(f"this run's {self.names.get(side, side)} tower uses no features, so new "
                                f"{self.names.get(side, side)}s cannot be embedded; use unknown='popular'")
        with torch.no_grad():
            vectors = project(tower.embed_features(encode_features(features, tower.specs)), self.manifest["score"],
                              model.blocks)
        return vectors.numpy()
