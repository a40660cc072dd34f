"""Training into a run directory: one training at a time (a lock), and a re-run into a finished run that
replaces it only once the new run is complete (it is built in ``DIR/.staging``, then published)."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from twotower.errors import TwoTowerError
from twotower.run import RUN_ENTRIES, RunPaths

log = logging.getLogger("twotower")


@contextmanager
def exclusive(paths: RunPaths) -> Iterator[None]:
    """Hold the run directory's lock: a second training into the same directory is refused, not raced. The
    lock file goes when the training ends; one left by a process that was killed is recognised and said."""
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
        stale = handle.read().strip()
        if stale:  # the lock is free, so its holder is gone: it ended without removing its file
            log.info("%s held a stale lock (%s, no longer running); taking it over", paths.root, stale)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield
    finally:
        paths.lock.unlink(missing_ok=True)  # while still held: no other training can be between the two
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

