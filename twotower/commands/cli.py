"""Plumbing shared by the Hydra entry points: readable errors, and quiet frameworks."""

from __future__ import annotations

import difflib
import logging
import re
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
    """Before Hydra starts: ``--help``, the command's own options, each with its description from the YAML
    (where Hydra's help would list every config group of training and describe none); and an option or choice
    that does not exist, or cannot be read, refused in one line with the nearest that does (where Hydra would
    print several lines and exit 1)."""
    if any(argument in ("--help", "-h") for argument in sys.argv[1:]):
        print(help_text(command, config))
        sys.exit(0)
    problem = override_problem(config, sys.argv[1:])
    if problem:
        print(f"error: {problem} ({command} --help lists the options)", file=sys.stderr)
        sys.exit(2)


def override_problem(config: str, arguments: list[str]) -> str | None:
    """What is wrong with the ``KEY=VALUE`` arguments of a command whose primary config is ``config``, found by
    composing them as Hydra will; None where they compose (a sweep's lists are Hydra's to check)."""
    from hydra import compose, initialize_config_module
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    if any(argument in ("-m", "--multirun") for argument in arguments):
        return None
    overrides = [argument for argument in arguments if not argument.startswith("-")]

    def composed(overrides: list[str]) -> DictConfig:
        with initialize_config_module(config_module="twotower.conf", version_base="1.3"):
            return compose(config, overrides=overrides)

    try:
        composed(overrides)
    except MissingConfigException as error:  # a choice of a group that has no such file
        group, _, choice = str(error.missing_cfg_file).rpartition("/")
        near = difflib.get_close_matches(choice, error.options or [], n=1)
        hint = f"; did you mean {group}={near[0]}?" if near else ""
        return f"{group}={choice} is not a choice of {group} (choose one of {', '.join(error.options or [])}){hint}"
    except OverrideParseException as error:
        return f"cannot read the options as given: {str(error).splitlines()[0]}"
    except ConfigCompositionException as error:
        text = str(error)
        appended = re.search(r"An item is already at '([^']+)'", text)
        if appended:
            return f"{appended[1]} exists already: set it without the +, as {appended[1]}=VALUE"
        unknown = re.search(r"Could not override '([^']+)'", text)
        if not unknown:
            return text.splitlines()[0]
        key = unknown[1]
        rest = [o for o in overrides if o.lstrip("+~").partition("=")[0] != key]
        try:
            known = composed(rest)
        except Exception:  # another bad option: this one is reported first
            return f"{key} is not an option"
        parent, _, _ = key.rpartition(".")
        node = OmegaConf.select(known, parent) if parent else known
        names = [f"{parent}.{name}" if parent else str(name) for name in node] if isinstance(node, DictConfig) \
            else []
        near = difflib.get_close_matches(key, names, n=1)
        return f"{key} is not an option" + (f"; did you mean {near[0]}?" if near else "")
    return None


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
