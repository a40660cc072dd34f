"""Plumbing shared by the Hydra entry points: readable errors, and quiet frameworks."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from twotower.errors import TwoTowerError, user_error
from twotower.options import help_text

log = logging.getLogger("twotower")


# Lightning's routine lines: the devices (the run summary names the one used), each reload of the selected
# checkpoint for its metrics, why a fit stopped, an advert for a hosted logger, and its own Ctrl-C notice
# (the command says what to do instead).
ROUTINE = ("GPU available", "TPU available", "HPU available", "Restoring states from the checkpoint",
           "Loaded model weights from the checkpoint", "`weights_only` was not set", "`Trainer.fit` stopped",
           "Detected KeyboardInterrupt", "litlogger")


def routine(record: logging.LogRecord) -> bool:
    return not any(text in record.getMessage() for text in ROUTINE)


def quiet_framework_notices() -> None:
    """Drop framework messages that say nothing about the user's run: Lightning's routine lines (above), a
    deprecation inside Lightning itself, the logging-interval hint for epochs shorter than it, and the
    notice that the checkpoint folder is not empty (the final fit writes beside the selected model)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.trainer.connectors.checkpoint_connector",
                 "lightning.fabric.utilities.rank_zero", "lightning.pytorch.callbacks.early_stopping"):
        logging.getLogger(name).addFilter(routine)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


def answer_help(command: str, config: str) -> None:
    """``--help``: the command's own options, each with its description from the YAML, where Hydra's help
    would list every config group of training and describe none."""
    if any(argument in ("--help", "-h") for argument in sys.argv[1:]):
        print(help_text(command, config))
        sys.exit(0)


def check_options(cfg: DictConfig, config: str) -> None:
    """Refuse a top-level option the command does not have (``+unknown=popular`` on a command without it
    would otherwise be accepted and do nothing)."""
    own = OmegaConf.load(files("twotower.conf") / f"{config}.yaml")
    groups = {name for entry in own.get("defaults", []) if isinstance(entry, DictConfig)
              for name in entry if not name.startswith("override ")}
    known = (set(own) | groups) - {"defaults"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise TwoTowerError(f"unknown option(s) {unknown}; this command's options are {sorted(known - {'hydra'})}")


@contextmanager
def reported_errors(debug: bool = False) -> Iterator[None]:
    """Turn input errors into one line on stderr and exit status 2; ``debug=true`` keeps the traceback."""
    try:
        yield
    except MissingMandatoryValue as error:  # a required option left out, e.g. run_dir
        if debug:
            raise
        key = error.full_key or "an option"
        example = "run_dir=DIR (or run_dir=latest, the newest run under outputs/)" if key == "run_dir" else f"{key}=..."
        print(f"error: {key} is required: give it on the command line, e.g. {example}", file=sys.stderr)
        sys.exit(2)
    except Exception as error:
        cause = user_error(error)
        if cause is None or debug:
            raise
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(2)
