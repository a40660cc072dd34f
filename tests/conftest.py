"""Shared fixtures: composed configs pointed at tmp_path, and data locations."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from lightning import Callback, Trainer
from omegaconf import DictConfig

import twotower.cli

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

twotower.cli.register_resolvers()


def compose_train(run_dir: Path, *overrides: str) -> DictConfig:
    """The real ``train`` config, shrunk for tests: no progress bar, no logger, output in ``run_dir``."""
    with initialize_config_module(config_module="twotower.conf", version_base="1.3"):
        return compose("train", overrides=[
            f"run_dir={run_dir}", "logger=none", "trainer.enable_progress_bar=false", *overrides])


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


class KillAtStep(Callback):
    """SIGKILLs its own process after a given global step: a crash mid-epoch, on cue."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class RaiseAtStep(Callback):
    """Fails the run with an error after a given global step: a re-run that goes wrong halfway."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"failed on cue at step {self.step}")
