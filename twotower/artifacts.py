"""The run directory: where each artifact lives, and writes that never leave half a file behind.

Every artifact is written to a temporary name in its final folder and then renamed over the final name
(``os.replace`` is atomic on POSIX and Windows), so a reader sees the previous complete file or the new one.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from twotower.errors import TwoTowerError

SPLIT_NAMES = ("train", "valid", "test")


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
        return self.root / "embeddings" / f"{side}.parquet"

    @property
    def index(self) -> Path:
        return self.root / "index"

    def metrics(self, name: str) -> Path:
        return self.root / "metrics" / f"{name}.json"

    @property
    def manifest(self) -> Path:
        """``run.json``: what the run is (names, score, sizes, checkpoint); written last by training."""
        return self.root / "run.json"


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
        return json.loads(paths.manifest.read_text())
    except json.JSONDecodeError as error:
        raise TwoTowerError(f"{paths.manifest} is damaged (not valid JSON); train the run again") from error


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
