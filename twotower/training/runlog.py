"""``train.log``: what happened to a run directory, attempt after attempt.

Every training into a directory appends to its ``train.log`` under a dated header: the configuration it
resolved, every epoch's line, the end-of-run summary, and any error in its one line. A finished run's log is
never lost: a re-run into it appends, and where the re-run fails, its lines move to ``DIR/.staging/train.log``
and the finished run's log is left byte for byte as it was, as the rest of the finished run is.

Records reach the file from the package's loggers (and the frameworks' warnings); lines meant for the file
alone (the epoch lines while progress bars show on a terminal, the summary printed to stdout) go through
``RECORD``, a logger that only the file listens to.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from pathlib import Path
from types import TracebackType

from twotower.errors import user_error
from twotower.run import RunPaths

RECORD = logging.getLogger("twotower.record")
RECORD.propagate = False
RECORD.setLevel(logging.INFO)
FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


class RunLog:
    """Append this attempt to ``DIR/train.log`` while the block runs (see the module docstring)."""

    def __init__(self, root: Path, resume: str | None = None) -> None:
        self.paths = RunPaths(root)
        self.path = root / "train.log"
        self.resume = resume  # the command that continues the run, for an interrupted attempt
        self.handler: logging.FileHandler | None = None

    def __enter__(self) -> RunLog:
        self.paths.root.mkdir(parents=True, exist_ok=True)
        self.rerun = self.paths.manifest.exists()  # a finished run is here: its log must survive a failure
        self.start = self.path.stat().st_size if self.path.exists() else 0
        self.handler = logging.FileHandler(self.path, mode="a", encoding="utf-8")
        self.handler.setFormatter(logging.Formatter(FORMAT))
        self.handler.setLevel(logging.INFO)
        with self.path.open("a", encoding="utf-8") as file:
            file.write(f"{'' if self.start == 0 else chr(10)}===== {time.strftime('%Y-%m-%d %H:%M:%S')} "
                       f"{shlex.join(['twotower-train', *sys.argv[1:]])}\n")
        logging.getLogger().addHandler(self.handler)
        RECORD.addHandler(self.handler)
        # the package's own INFO lines belong in the log even where nothing configured logging (a script)
        self.package, self.level = logging.getLogger("twotower"), logging.getLogger("twotower").level
        if self.package.getEffectiveLevel() > logging.INFO:
            self.package.setLevel(logging.INFO)
        return self

    def note(self, text: str) -> None:
        """A block of text for the file alone, as it is (what the command prints to stdout, say)."""
        self.handler.stream.write(text.rstrip("\n") + "\n")
        self.handler.flush()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if error is not None:
            RECORD.error(self.describe(error))
        logging.getLogger().removeHandler(self.handler)
        RECORD.removeHandler(self.handler)
        self.package.setLevel(self.level)
        self.handler.close()
        if error is not None and self.rerun:
            self.move_attempt()

    def describe(self, error: BaseException) -> str:
        if isinstance(error, KeyboardInterrupt):
            return f"interrupted; continue with: {self.resume}" if self.resume else "interrupted"
        if isinstance(error, SystemExit):
            return f"exited with status {error.code}"
        cause = user_error(error)
        return f"error: {cause}" if cause is not None else f"error: {type(error).__name__}: {error}"

    def move_attempt(self) -> None:
        """The failed re-run's lines into ``.staging/train.log``; the finished run's log back as it was."""
        with self.path.open("rb") as file:
            file.seek(self.start)
            attempt = file.read()
        self.paths.staging.mkdir(parents=True, exist_ok=True)
        with (self.paths.staging / "train.log").open("ab") as file:
            file.write(attempt)
        with self.path.open("r+b") as file:
            file.truncate(self.start)
