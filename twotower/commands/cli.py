"""Plumbing shared by the Hydra entry points: config resolvers and readable errors."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from twotower.errors import TwoTowerError

log = logging.getLogger("twotower")


def register_resolvers() -> None:
    """``${sample_data:NAME}``: the path of a data file bundled with the package."""
    OmegaConf.register_new_resolver("sample_data", lambda name: str(files("twotower.sample_data") / name),
                                    replace=True)


def index_choice(node: DictConfig | None) -> str | None:
    """Which index a retrieval command searches with, from the ``index`` config group it shares with
    training: None for the run's own, else the backend the chosen option names (``exact``, ``annoy``)."""
    return None if node is None else get_class(node._target_).backend


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
