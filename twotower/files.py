"""Files that are never half-written, and one clear error for a damaged one.

Every artifact is written to a temporary name in its final folder and then renamed over the final name
(``os.replace`` is atomic on POSIX and Windows), so a reader sees the previous complete file or the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from twotower.errors import ConfigError, RunError


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


def read_parquet(path: Path, where: pl.Expr | None = None) -> pl.DataFrame:
    """A run's Parquet artifact (its rows where ``where`` holds, read row group by row group), or one clear
    error when it is missing or damaged."""
    if not path.exists():
        raise RunError(f"missing {path}; is this a finished run directory?")
    try:
        return pl.read_parquet(path) if where is None else pl.scan_parquet(path).filter(where).collect()
    except (pl.exceptions.PolarsError, OSError) as error:
        raise RunError(f"cannot read {path}: the file is damaged ({str(error).splitlines()[0]}); "
                            "train the run again") from error


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


TABLE_FORMATS = {".csv": "csv", ".json": "json", ".parquet": "parquet"}


def table_format(path: Path) -> str:
    """The format a table written to ``path`` takes, by its extension (one of ``TABLE_FORMATS``)."""
    format = TABLE_FORMATS.get(path.suffix.lower())
    if format is None:
        raise ConfigError(f"{path}: cannot tell the format from the extension; end the name with "
                            f"{', '.join(TABLE_FORMATS)}")
    return format


def write_table(frame: pl.DataFrame, path: Path) -> None:
    """``frame`` written to ``path`` in the format its extension says (a JSON list of records for .json)."""
    format = table_format(path)
    with atomic_path(path) as temporary:
        if format == "csv":
            frame.write_csv(temporary)
        elif format == "json":
            temporary.write_text(json.dumps(frame.to_dicts(), indent=1) + "\n")
        else:
            frame.write_parquet(temporary)
