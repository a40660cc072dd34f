"""Shared fixtures: composed configs pointed at tmp_path, and data locations."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hydra import compose, initialize_config_module
from lightning import Callback, Trainer
from omegaconf import DictConfig

from twotower.data.synthetic import planted_interactions
from twotower.training.train import register_resolvers

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

register_resolvers()



def compose_train(run_dir: Path, *overrides: str) -> DictConfig:
    """The real ``train`` config, shrunk for tests: no progress bar, no logger, output in ``run_dir``."""
    with initialize_config_module(config_module="twotower.conf", version_base="1.3"):
        return compose("train", overrides=[
            f"run_dir={run_dir}", "logger=none", "trainer.enable_progress_bar=false", *overrides])


def train_feature_run(folder: Path) -> Path:
    """A small trained run whose item tower reads a ``genre`` feature (g0-g3), in ``folder / "run"``."""
    from twotower.training.train import train

    planted_interactions(n_users=120, n_items=80, n_clusters=4, seed=1).write_csv(folder / "log.csv")
    pl.DataFrame({"item_id": np.arange(80), "genre": [f"g{i % 4}" for i in range(80)]}).write_csv(folder / "items.csv")
    train(compose_train(folder / "run", "data=interactions", f"data.path={folder / 'log.csv'}",
                        f"data.item_info_path={folder / 'items.csv'}", "model/item_tower=features",
                        "model.item_tower.features=[genre]", "trainer.max_epochs=1", "model.dim=8", "final_fit=false"))
    return folder / "run"


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
