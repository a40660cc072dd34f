"""What a run shows and keeps while it trains: progress bars that name their phase and count epochs from 1,
and a CSV log that a resumed run appends to."""

from __future__ import annotations

import csv
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class PhaseProgressBar(TQDMProgressBar):
    """Lightning's bar, described as ``selection, epoch 3/30`` or ``final fit, epoch 2/14``."""

    def __init__(self, phase: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.phase = phase

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        self.train_progress_bar.set_description(f"{self.phase}, epoch {trainer.current_epoch + 1}{epochs}")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Close the open bars now: left to the garbage collector, a bar prints its last state when it goes,
        which can be after the interrupted run's resume hint."""
        for bar in (self._train_progress_bar, self._val_progress_bar, self._test_progress_bar,
                    self._predict_progress_bar):
            if bar is not None:
                bar.close()


class KeptExperimentWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        """Keep the metrics file and its columns: a resumed run appends its epochs to the earlier ones (a fresh
        run starts without one, as training clears the folder first)."""
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSV logger, whose ``metrics.csv`` survives a resume from ``ckpt_path=last``."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = KeptExperimentWriter(log_dir=self.log_dir)
        return self._experiment
