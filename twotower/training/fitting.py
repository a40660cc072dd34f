"""Running one of Lightning's fits the way every phase of a run does: a trainer that shows its progress as
``progress`` says (bars on a terminal, one line per epoch elsewhere, ``train.log`` always), and Ctrl-C a
``KeyboardInterrupt`` again."""

from __future__ import annotations

import logging
import sys
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from twotower import checks
from twotower.data.datamodule import InteractionDataModule
from twotower.model.module import TwoTowerModel
from twotower.training.progress import EpochLines, PhaseProgressBar
from twotower.training.runlog import RECORD

log = logging.getLogger("twotower")
PROGRESS = ("auto", "bars", "lines", "none")


def console_progress(cfg: DictConfig) -> str:
    """What the console shows: ``bars``, ``lines`` or ``none`` (``trainer.enable_progress_bar=false`` is none)."""
    mode = checks.choice("progress", cfg.get("progress", "auto"), PROGRESS)
    if not cfg.trainer.get("enable_progress_bar", True):
        return "none"
    if mode == "auto":
        return "bars" if sys.stderr.isatty() else "lines"
    return mode


def make_trainer(cfg: DictConfig, phase: str, callbacks: list[Any] | None = None, **overrides: Any) -> L.Trainer:
    """The run's Lightning trainer (``cfg.trainer``) for one phase, with ``overrides``, showing its progress."""
    mode = console_progress(cfg)
    shown: list[Any] = [PhaseProgressBar(phase, refresh_rate=1)] if mode == "bars" else []
    shown.append(EpochLines(phase, log if mode == "lines" else RECORD))
    return instantiate(cfg.trainer, callbacks=[*(callbacks or []), *shown], enable_progress_bar=mode == "bars",
                       **overrides)


def fit(trainer: L.Trainer, model: TwoTowerModel, datamodule: InteractionDataModule, ckpt_path: str | None = None
        ) -> None:
    """``trainer.fit``, where Ctrl-C is a ``KeyboardInterrupt`` again (Lightning turns it into exit status 1)."""
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except SystemExit as exit:
        if trainer.interrupted:
            raise KeyboardInterrupt from exit
        raise
