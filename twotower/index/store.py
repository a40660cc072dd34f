"""An index on disk: ``meta.json`` (backend and its settings, metric, transform, dimensions, fingerprints of
the vectors and checkpoint it was built from) beside the backend's files. ``meta.json`` is written last, so
a folder without it is an unfinished build; loading checks every recorded fact against the run, and the
backend is rebuilt from the settings it was saved with (``backend_from``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from twotower import checks
from twotower.errors import RunError
from twotower.files import atomic_directory, fingerprint, write_json
from twotower.index.backend import BACKENDS, Backend, backend_from
from twotower.index.tuning import Probe, tune

log = logging.getLogger("twotower")
INDEX_FORMAT = 1
SCORES = ("dot", "cosine")


def build_index(index: Backend, vectors: np.ndarray, score: str, folder: Path, checkpoint: str | None = None,
                probe: Probe | None = None) -> tuple[Backend, dict[str, Any]]:
    """Build ``index`` over item ``vectors`` into ``folder`` (replacing what was there only once the new
    index is complete), tuned to its target recall on ``probe`` where one is given; returns the setting built,
    opened from there, and its metadata."""
    checks.choice("score", score, SCORES)
    with atomic_directory(folder) as building:
        started = time.perf_counter()
        facts = index.build(vectors, score, building)
        if probe is not None and len(probe.queries) and index.target_recall is not None:
            index.load(vectors, {**facts, "n_items": len(vectors)}, building)
            index, facts["measured"] = tune(index, vectors, score, building, probe)
        meta = {
            "format": INDEX_FORMAT,
            "backend": index.backend,
            "params": index.params(),
            "score": score,
            "dim": int(vectors.shape[1]),
            "n_items": int(vectors.shape[0]),
            "vectors_fingerprint": fingerprint(vectors),
            "checkpoint_fingerprint": checkpoint,
            "build_seconds": round(time.perf_counter() - started, 3),  # with the tuning
            "files": {file.name: {"bytes": file.stat().st_size, "sha256": fingerprint(file)}
                      for file in sorted(building.iterdir())},
            **facts,
        }
        write_json(meta, building / "meta.json")
    index.load(vectors, meta, folder)
    return index, meta


def report_path(folder: Path) -> Path:
    return folder / "report.json"


def read_report(folder: Path) -> dict[str, Any]:
    """What the build of the index in ``folder`` measured and chose; empty where there is no readable report
    (only a report: no reason to refuse the index)."""
    try:
        report = json.loads(report_path(folder).read_text())
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def read_meta(folder: Path) -> dict[str, Any]:
    path = folder / "meta.json"
    if not path.exists():
        raise RunError(f"no finished index in {folder} (meta.json missing); build it with twotower-index")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RunError(f"{path} is not valid JSON; rebuild the index") from error


def load_index(folder: Path, vectors: np.ndarray, score: str, checkpoint: str | None = None,
               index: Backend | None = None) -> tuple[Backend, dict[str, Any]]:
    """Open the index in ``folder``, refusing one built from other vectors, score or checkpoint."""
    meta = read_meta(folder)
    problems = []
    if meta.get("format") != INDEX_FORMAT:
        problems.append(f"format {meta.get('format')} (this version reads {INDEX_FORMAT})")
    if meta.get("score") != score:
        problems.append(f"score '{meta.get('score')}' but the model scores by '{score}'")
    if meta.get("dim") != vectors.shape[1] or meta.get("n_items") != vectors.shape[0]:
        problems.append(f"{meta.get('n_items')} items of dimension {meta.get('dim')} but the run has "
                        f"{vectors.shape[0]} of dimension {vectors.shape[1]}")
    elif meta.get("vectors_fingerprint") != fingerprint(vectors):
        problems.append("it was built from other item vectors")
    if checkpoint and meta.get("checkpoint_fingerprint") and meta["checkpoint_fingerprint"] != checkpoint:
        problems.append("it was built from another checkpoint")
    for name, facts in meta.get("files", {}).items():
        path = folder / name
        if not path.exists():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != facts["bytes"]:
            problems.append(f"{name} has {path.stat().st_size} bytes, not {facts['bytes']} (truncated or replaced)")
        elif fingerprint(path) != facts["sha256"]:
            problems.append(f"{name} is damaged (its contents changed since it was built)")
    if problems:
        raise RunError(f"the index in {folder} does not match this run: {'; '.join(problems)}. "
                       "Rebuild it with twotower-index")
    if meta.get("backend") not in BACKENDS:
        raise RunError(f"the index in {folder} is of an unknown backend {meta.get('backend')!r}; "
                       f"this version reads {sorted(BACKENDS)}. Rebuild it with twotower-index")
    if index is not None and index.backend != meta["backend"]:
        raise RunError(f"the index in {folder} is {meta['backend']}, not {index.backend}; build one with "
                       f"twotower-index run_dir=... index={index.backend}")
    # A fresh backend, so that a run loaded beside another (a swap) never shares an open index with it; a
    # given one lends its settings (its query-time ones matter: the files hold the rest).
    index = backend_from(meta["backend"], meta["params"] if index is None else index.params())
    index.load(vectors, meta, folder)
    return index, meta


def build_for_run(index: Backend, items: np.ndarray, score: str, folder: Path, probe: Probe,
                  checkpoint: str | None = None) -> dict[str, Any]:
    """A run's index, tuned on ``probe``, a sample of its users with their seen items left out, as retrieval
    leaves them out (``Probe.sample``); its report, also saved in ``folder/report.json`` and said in one log
    line."""
    index, meta = build_index(index, items, score, folder, checkpoint, probe)
    measured = meta.get("measured", {})
    report = {
        "backend": meta["backend"],
        "params": meta["params"],
        "chosen": index.describe(),
        "target_recall": index.target_recall,
        "recall@10_vs_exact": measured.get("recall@10_vs_exact", 1.0 if index.backend == "exact" else None),
        "qps": measured.get("qps"),
        "exact_qps": measured.get("exact_qps"),
        # The task users get: top 10 with each user's seen items left out. Queries that need more
        # candidates than the search budget covers are answered exactly; this is their share.
        "seen_filtered": True,
        "exact_share": round(float(np.mean([index.searches_exactly(10 + len(e)) for e in probe.exclude])), 4)
        if len(probe.exclude) else None,
        "queries": len(probe.queries),
        "tuning": measured.get("tuning", []),
        "why_exact": measured.get("why_exact"),
        "build_seconds": meta["build_seconds"],
        "size_bytes": sum(facts["bytes"] for facts in meta["files"].values()),
    }
    write_json(report, report_path(folder))
    if measured and report["chosen"] == "exact search" and index.backend != "exact":
        log.info("index: %s built and tuned in %.1f s, but exact search serves (%d queries/s): %s",
                 report["backend"], report["build_seconds"], report["exact_qps"],
                 report["why_exact"] or "chosen by the build")
    elif measured:
        log.info("index: %s (%s): recall@10 %.3f against exact search (target %s) at %d queries/s, exact search "
                 "%d/s; built and tuned in %.1f s", report["backend"], report["chosen"], report["recall@10_vs_exact"],
                 report["target_recall"], report["qps"], report["exact_qps"], report["build_seconds"])
    return report
