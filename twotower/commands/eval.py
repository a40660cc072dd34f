"""twotower-eval: full-ranking metrics of a finished run, from its exported vectors.

    twotower-eval run_dir=DIR                  # its test split (training + validation items excluded)
    twotower-eval run_dir=DIR holdout=valid    # its validation split (training items excluded)
    twotower-eval run_dir=DIR path=later.csv   # another interaction log with the same ids

Prints the metrics as JSON and writes them to ``DIR/metrics/eval-<holdout or file name>.json``
(``twotower.training.evaluation`` says what is scored where).
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from twotower import checks
from twotower.commands.cli import answer_help, check_options, reported_errors
from twotower.files import write_json
from twotower.run import RunPaths
from twotower.training.evaluation import evaluate_run


@hydra.main(version_base="1.3", config_path="pkg://twotower.conf", config_name="eval")
def app(cfg: DictConfig) -> None:
    with reported_errors(cfg.debug):
        check_options(cfg, "eval")
        prior = checks.flag("prior", cfg.prior)
        results = evaluate_run(cfg.run_dir, cfg.holdout, cfg.path, list(cfg.ks), cfg.user_col, cfg.item_col, prior)
        name = (Path(cfg.path).name.split(".")[0] if cfg.path else cfg.holdout) + ("" if prior else "-no-prior")
        # "eval-" keeps these apart from the metrics the training run wrote (metrics/train.json).
        write_json(results, RunPaths(Path(cfg.run_dir)).metrics(f"eval-{name}"))
        print(json.dumps(results, indent=2, sort_keys=True))


def main() -> None:
    answer_help("twotower-eval", "eval")
    app()


if __name__ == "__main__":
    main()
