"""The run being served, and the changes to it: swaps to another run (or the same one read again).

Every request reads ``Served.current`` once, so it finishes on the retriever it started with; a new run is
loaded and checked beside the old one and then put in place in one assignment; a run that fails to load
leaves the old one serving and the reason in ``last_error``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from twotower.errors import TwoTowerError
from twotower.index import Backend, read_report
from twotower.serving.retrieval import Retriever

log = logging.getLogger("twotower")


@dataclass(frozen=True)
class Loaded:
    """One served run: replaced whole by a swap, so a request sees one run throughout."""

    retriever: Retriever
    run_dir: str  # as given, so that SIGHUP reads it again (a symlink may point elsewhere by then)
    loaded_at: float
    load_seconds: float
    index_recall: float | None


def load_checked(run_dir: str, index: Backend | None) -> Loaded:
    """Load a run and answer one query of each kind with it before it may take traffic."""
    started = time.perf_counter()
    retriever = Retriever.load(run_dir, index=index)
    if len(retriever.run.user_vocab) == 0 or len(retriever.run.item_vocab) < 2:
        raise TwoTowerError(f"{run_dir}: nothing to serve ({len(retriever.run.user_vocab)} users, "
                            f"{len(retriever.run.item_vocab)} items)")
    retriever.recommend(retriever.run.user_vocab.ids[0], k=1)
    retriever.similar_items(retriever.run.item_vocab.ids[0], k=1)
    return Loaded(retriever, run_dir, time.time(), round(time.perf_counter() - started, 3),
                  index_recall(retriever.run.paths.index))


def index_recall(folder: Path) -> float | None:
    """The recall@10 that the index build measured, if it did."""
    return read_report(folder).get("recall@10_vs_exact")


class Served:
    """The run being served, and the changes to it (swaps, added and removed items), one at a time."""

    def __init__(self, loaded: Loaded, index: Backend | None) -> None:
        self.current = loaded  # read once per request; assigned only once a new run is loaded and checked
        self.index = index
        self.swaps = 0
        self.failed_swaps = 0
        self.last_error: str | None = None
        self.changing = threading.Lock()

    def swap(self, run_dir: str | None = None) -> Loaded:
        """Serve ``run_dir`` (by default the served one, read again) if it loads; else keep the old run and
        raise ``TwoTowerError`` saying why. Items added to the old run are not carried over (their vectors
        belong to the old model's space) unless they were saved into its directory and it is loaded again."""
        with self.changing:
            run_dir = run_dir or self.current.run_dir
            try:
                loaded = load_checked(run_dir, self.index)
            except Exception as error:  # whatever breaks the new run, the old one goes on serving
                self.failed_swaps += 1
                self.last_error = f"{run_dir}: {error}"
                raise TwoTowerError(f"cannot load {run_dir} ({error}); still serving "
                                    f"{self.current.run_dir}") from error
            self.current = loaded
            self.swaps += 1
            self.last_error = None
            return loaded

    def reload_logged(self) -> None:
        """What SIGHUP does: load the served run directory again, saying how it went on the log."""
        try:
            loaded = self.swap()
        except TwoTowerError as error:
            log.error("reload failed: %s", error)
            return
        log.info("now serving %s (%d items, loaded in %.1f s)", loaded.run_dir, len(loaded.retriever.run.item_vocab),
                 loaded.load_seconds)
