"""twotower-train: train a two-tower model, export its vectors, build its index, report its metrics.

    twotower-train                                   # the bundled Wikipedia book sample
    twotower-train data=interactions data.path=log.csv model.dim=128 loss=bpr
    twotower-train -m model.dim=32,64 loss=bpr,softmax

The work is ``twotower.training.train``; the command returns the monitored validation metric so Hydra
sweepers can optimise it.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from twotower.commands.cli import quiet_framework_notices, reported_errors, user_error
from twotower.files import write_json
from twotower.run import RunPaths
from twotower.training import train

log = logging.getLogger("twotower")
quiet_framework_notices()


def sweep_job(cfg: DictConfig) -> float:
    """One job of a multirun: a failure is logged and saved in the job's directory as
    ``metrics/error.json``, and the job returns NaN (a failed trial to sweepers) so the sweep goes on."""
    try:
        return train(cfg)[cfg.monitor]
    except Exception as error:
        cause = user_error(error)
        log.error("job failed: %s", cause or error, exc_info=cause is None or cfg.get("debug", False))
        write_json({"error": str(cause or error), "type": type(cause or error).__name__},
                   RunPaths(Path(cfg.run_dir)).metrics("error"))
        return float("nan")


def command_line_problem(arguments: list[str]) -> str | None:
    """What stops the command before Hydra starts, said in one line (Hydra's own errors would be a
    traceback or a bare "cannot load config"): a search this environment cannot run, or a run directory
    that is a file."""
    for argument in arguments:
        key, _, value = argument.partition("=")
        key = key.lstrip("+~").strip()
        if key == "hparams_search" and value.strip() == "optuna" and \
                importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
            return ("hparams_search=optuna needs the Optuna sweeper: pip install -e '.[sweep]' "
                    "(or hydra-optuna-sweeper)")
        if key == "hydra.run.dir" and Path(value.strip("'\"")).expanduser().is_file():
            return f"hydra.run.dir={value} is a file; the run directory must be a folder (or not exist yet)"
    return None


@hydra.main(version_base="1.3", config_path="pkg://twotower.conf", config_name="train")
def run(cfg: DictConfig) -> float:
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return sweep_job(cfg)
    with reported_errors(cfg.get("debug", False)):
        return train(cfg)[cfg.monitor]


def main() -> None:
    problem = command_line_problem(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    run()


if __name__ == "__main__":
    main()
