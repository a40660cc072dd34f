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
import shlex
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from twotower.commands.cli import answer_help, quiet_framework_notices, reported_errors
from twotower.data.batches import UserBatch
from twotower.errors import user_error
from twotower.files import write_json
from twotower.model.losses import build_loss
from twotower.run import Run, RunPaths
from twotower.serving.retrieval import Retriever
from twotower.training.summary import summary
from twotower.training.train import is_first_process, train

log = logging.getLogger("twotower")
quiet_framework_notices()


def sweep_job(cfg: DictConfig) -> float:
    """One job of a multirun: a failure is logged and saved in the job's directory as
    ``metrics/error.json``, and the job returns NaN (a failed trial to sweepers) so the sweep goes on."""
    try:
        metrics = train(cfg)
        return metrics[Run.open(cfg.run_dir).manifest.monitor]  # as resolved for the data (a small catalogue)
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


def warn_unused(cfg: DictConfig, overrides: list[str]) -> None:
    """Settings a user gave (or a sweep searches) that the chosen loss never reads."""
    if build_loss(OmegaConf.to_container(cfg.loss, resolve=True)).plan(n_items=0).examples is not UserBatch:
        return
    unused = sorted({override.lstrip("+~").partition("=")[0] for override in overrides
                     if override.lstrip("+~").startswith("sampler.")})
    if unused:
        log.warning("%s: not used by loss=catalogue, which trains on users with all their items and needs no "
                    "sampled negatives (a loss over pairs does: loss=softmax, bpr, bce, mse)", ", ".join(unused))


def show_similar(run: Run, item: object, k: int) -> None:
    """The items closest to one the data is known for (a Tarzan novel, Toy Story), as a first look."""
    retriever = Retriever.load(run.root)
    result = retriever.similar_items(item, k=k)
    anchor = retriever.run.item_vocab.resolve(item)
    print(f"\n{retriever.run.names['item'].capitalize()}s closest to '{retriever.run.item_vocab.ids[anchor]}':")
    for rank, record in enumerate(result.records(), start=1):
        title = record.get("title")
        print(f"{rank:3d}. {title if title is not None and title != record['id'] else record['id']}  "
              f"({record['score']:.3f})")


def resume_command(cfg: DictConfig, overrides: list[str]) -> str:
    """The command that continues this run from its last epoch."""
    kept = [o for o in overrides if o.lstrip("+~").partition("=")[0] not in ("ckpt_path", "hydra.run.dir")]
    return shlex.join(["twotower-train", *kept, "ckpt_path=last", f"hydra.run.dir={cfg.run_dir}"])


@hydra.main(version_base="1.3", config_path="pkg://twotower.conf", config_name="train")
def run(cfg: DictConfig) -> float:
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return sweep_job(cfg)
    overrides = list(HydraConfig.get().overrides.task)
    resume = resume_command(cfg, overrides)
    with reported_errors(cfg.get("debug", False)):
        warn_unused(cfg, overrides)
        try:
            metrics = train(cfg, resume)
        except KeyboardInterrupt:
            print(f"\ninterrupted; continue from the last finished epoch with:\n  {resume}", file=sys.stderr)
            sys.exit(130)
        if not is_first_process():  # a process Lightning or torchrun started: the first one reports the run
            return metrics.get(cfg.monitor, float("nan"))
        finished = Run.open(cfg.run_dir)
        print(summary(finished))
        example = finished.manifest.example_item if cfg.show_similar_to == "auto" else cfg.show_similar_to
        if example is not None:
            show_similar(finished, example, cfg.show_k)
        return metrics[finished.manifest.monitor]


def main() -> None:
    answer_help("twotower-train", "train")
    problem = command_line_problem(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    run()


if __name__ == "__main__":
    main()
