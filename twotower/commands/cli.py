"""Plumbing shared by the Hydra entry points: readable errors, and quiet frameworks."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from twotower.errors import TwoTowerError

log = logging.getLogger("twotower")


def quiet_framework_notices() -> None:
    """Drop framework messages that say nothing about the user's run: an advert for a hosted logger, a
    deprecation inside Lightning itself, the logging-interval hint for epochs shorter than it, and the
    notice that the checkpoint folder is not empty (the final fit writes beside the selected model)."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


def user_error(error: BaseException) -> TwoTowerError | None:
    """The ``TwoTowerError`` behind ``error``, if any (Hydra wraps errors raised while instantiating);
    Lightning's refusal of a trainer setting (``trainer.limit_val_batches`` below one batch, say) is one."""
    # Looked up, not imported: the commands that never load Lightning (eval, retrieve) stay light.
    lightning_refusal = getattr(sys.modules.get("lightning.fabric.utilities.exceptions"),
                                "MisconfigurationException", ())
    while error is not None:
        if isinstance(error, TwoTowerError):
            return error
        if isinstance(error, lightning_refusal):
            return TwoTowerError(f"trainer settings: {error}")
        error = error.__cause__
    return None


@contextmanager
def reported_errors(debug: bool = False) -> Iterator[None]:
    """Turn input errors into one line on stderr and exit status 2; ``debug=true`` keeps the traceback."""
    try:
        yield
    except Exception as error:
        cause = user_error(error)
        if cause is None or debug:
            raise
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(2)
