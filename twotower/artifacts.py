"""The run directory: where each artifact lives, and writes that never leave half a file behind.

Every artifact is written to a temporary name in its final folder and then renamed over the final name
(``os.replace`` is atomic on POSIX and Windows), so a reader sees the previous complete file or the new one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import polars as pl

from twotower.errors import TwoTowerError

SPLIT_NAMES = ("train", "valid", "test")
# What run.json must say for a run directory to be used (older or hand-edited files may lack some).
MANIFEST_KEYS = ("names", "score", "dim", "n_users", "n_items", "checkpoint", "trained_on", "min_rating",
                 "fingerprints")


@dataclass(frozen=True)
class RunPaths:
    """Names of everything a training run leaves in its directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.ckpt"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    def vocab(self, side: str) -> Path:
        """``side`` is ``users`` or ``items``."""
        return self.root / "vocab" / f"{side}.parquet"

    def split(self, name: str) -> Path:
        return self.root / "splits" / f"{name}.parquet"

    @property
    def non_positive(self) -> Path:
        """Pairs of the log that are not positives (low ratings, labels <= 0): seen, never trained on."""
        return self.root / "splits" / "non_positive.parquet"

    def embeddings(self, side: str) -> Path:
        """``users``, ``items``, or ``history``: a history tower's item vectors that embed a user's items."""
        return self.root / "embeddings" / f"{side}.parquet"

    @property
    def index(self) -> Path:
        return self.root / "index"

    def catalogue(self, name: str) -> Path:
        """``name`` is ``added`` or ``removed``: the items added to and removed from the catalogue after
        training, as ``Retriever.save_catalogue`` wrote them."""
        return self.root / "catalogue" / f"{name}.parquet"

    def metrics(self, name: str) -> Path:
        return self.root / "metrics" / f"{name}.json"

    @property
    def manifest(self) -> Path:
        """``run.json``: what the run is (names, score, sizes, checkpoint); written last by training."""
        return self.root / "run.json"

    @property
    def staging(self) -> Path:
        """Where a re-run into a finished run directory builds its artifacts, beside the finished ones."""
        return self.root / ".staging"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    def fingerprinted(self) -> list[Path]:
        """The artifacts retrieval and evaluation read besides the index (which has its own fingerprints)."""
        files = [self.vocab("users"), self.vocab("items"), self.embeddings("users"), self.embeddings("items"),
                 self.embeddings("history"), *(self.split(name) for name in SPLIT_NAMES), self.non_positive]
        return [file for file in files if file.exists()]


# A run directory's own entries: a re-run replaces all of them (and leaves Hydra's .hydra/ and train.log).
RUN_ENTRIES = ("config.yaml", "vocab", "splits", "checkpoints", "logs", "embeddings", "index", "metrics",
               "catalogue")


def fingerprint(data: np.ndarray | Path) -> str:
    """A short SHA-256 of an array's bytes or a file's contents."""
    digest = hashlib.sha256()
    if isinstance(data, Path):
        with data.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    else:
        digest.update(np.ascontiguousarray(data).tobytes())
    return digest.hexdigest()[:16]


def artifact_fingerprints(paths: RunPaths) -> dict[str, str]:
    """``{path relative to the run directory: fingerprint}`` of the artifacts run.json vouches for."""
    return {file.relative_to(paths.root).as_posix(): fingerprint(file) for file in paths.fingerprinted()}


def check_fingerprints(paths: RunPaths, manifest: dict[str, Any]) -> None:
    """Every artifact run.json vouches for must be the file the run wrote: one copied from another run, or
    edited, would be served or scored as this run's without a word."""
    recorded = manifest["fingerprints"]
    essential = [paths.vocab("users"), paths.vocab("items"), paths.embeddings("users"), paths.embeddings("items"),
                 paths.split("train")]
    unvouched = [file.name for file in essential if file.relative_to(paths.root).as_posix() not in recorded]
    if unvouched:
        raise TwoTowerError(f"{paths.manifest} has no fingerprint for {unvouched}; train the run again")
    for name, expected in recorded.items():
        file = paths.root / name
        if not file.exists():
            raise TwoTowerError(f"missing {file}; is this a finished run directory?")
        if fingerprint(file) != expected:
            raise TwoTowerError(f"{file} does not match this run (its fingerprint differs from the one in "
                                f"run.json): it was replaced or changed after it was written; {_remedy(name)}")


def _remedy(name: str) -> str:
    if name.startswith("catalogue/"):  # saved after training: the run itself is fine without it
        return "delete catalogue/ and its entries in run.json's fingerprints to load the run without the saved items"
    return "train the run again"


def run_path(run_dir: object) -> Path:
    """A run directory given as text or a path (``None`` or an empty string is a clear error)."""
    if not isinstance(run_dir, (str, os.PathLike)) or str(run_dir) == "":
        raise TwoTowerError(f"a run directory must be a path, got {run_dir!r}")
    return Path(run_dir)


def read_parquet(path: Path) -> pl.DataFrame:
    """A run's Parquet artifact, or one clear error when it is missing or damaged."""
    if not path.exists():
        raise TwoTowerError(f"missing {path}; is this a finished run directory?")
    try:
        return pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as error:
        raise TwoTowerError(f"cannot read {path}: the file is damaged ({str(error).splitlines()[0]}); "
                            "train the run again") from error


def read_manifest(paths: RunPaths) -> dict[str, Any]:
    if not paths.root.is_dir():
        raise TwoTowerError(f"run directory not found: {paths.root}")
    if not paths.manifest.exists():
        raise TwoTowerError(f"{paths.root} is not a finished run directory (run.json missing)")
    try:
        manifest = json.loads(paths.manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TwoTowerError(f"{paths.manifest} is damaged (not valid JSON); train the run again") from error
    missing = [key for key in MANIFEST_KEYS if not isinstance(manifest, dict) or key not in manifest]
    if missing:
        raise TwoTowerError(f"{paths.manifest} lacks {missing} (written by another version, or edited); "
                            "train the run again")
    return manifest


@contextmanager
def exclusive(paths: RunPaths) -> Iterator[None]:
    """Hold the run directory's lock: a second training into the same directory is refused, not raced."""
    paths.root.mkdir(parents=True, exist_ok=True)
    handle: IO[str] = paths.lock.open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise TwoTowerError(f"{paths.root} is in use by another training ({holder}); wait for it, or "
                                "choose another directory with hydra.run.dir=...") from error
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock, as does the process ending in any way


def publish(staging: Path, root: Path) -> None:
    """Replace a finished run's entries by those built in ``staging``; run.json goes last, so a reader
    sees the old run, or no finished run for the few renames in between, or the new one."""
    (root / "run.json").unlink(missing_ok=True)
    retired = root / f".retired-{uuid.uuid4().hex[:8]}"
    retired.mkdir()
    for name in RUN_ENTRIES:
        if (root / name).exists():
            os.replace(root / name, retired / name)
        if (staging / name).exists():
            os.replace(staging / name, root / name)
    os.replace(staging / "run.json", root / "run.json")
    shutil.rmtree(retired, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write to; rename it to ``path`` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces ``path`` (the old one is removed).

    Between the two renames ``path`` is briefly absent, so a reader sees the old folder, the new one, or
    none, never a mixture.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    building = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.building")
    building.mkdir()
    try:
        yield building
        retired = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
        if path.exists():
            os.replace(path, retired)
        os.replace(building, path)
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(building, ignore_errors=True)


def write_parquet(frame: pl.DataFrame, path: Path) -> None:
    with atomic_path(path) as temporary:
        frame.write_parquet(temporary)


def write_json(payload: Any, path: Path) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_text(text: str, path: Path) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def record_artifacts(paths: RunPaths, loaded: dict[str, Any], frames: dict[Path, pl.DataFrame]) -> None:
    """Write artifacts made after training (an empty frame removes its file) and vouch for them in run.json,
    rewritten atomically, so that every load checks them as it checks the trained ones. ``loaded`` is the
    manifest the caller read: a run trained again since then is refused, not given another model's items."""
    manifest = read_manifest(paths)
    names = {path: path.relative_to(paths.root).as_posix() for path in frames}

    def trained(fingerprints: dict[str, str]) -> dict[str, str]:
        return {name: value for name, value in fingerprints.items() if name not in names.values()}

    if trained(manifest["fingerprints"]) != trained(loaded["fingerprints"]):
        raise TwoTowerError(f"{paths.root} holds another run than the one loaded (it was trained again since); "
                            "load it again first")
    emptied = []
    for path, frame in frames.items():
        if frame.height:
            write_parquet(frame, path)
            manifest["fingerprints"][names[path]] = fingerprint(path)
        else:
            manifest["fingerprints"].pop(names[path], None)
            emptied.append(path)
    write_json(manifest, paths.manifest)
    for path in emptied:  # only once run.json no longer vouches for them, so no load misses a vouched file
        path.unlink(missing_ok=True)
