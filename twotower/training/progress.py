"""What a run shows and keeps while it trains: progress bars that name their phase and count epochs from 1 on a
terminal, one line per epoch anywhere else (and in ``train.log`` always), and a CSV log that a resumed run
continues."""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from twotower.files import atomic_path


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


class EpochLines(Callback):
    """One line per epoch, to ``sink``: the phase, the epoch, the mean training loss, the validation metrics
    at the largest cut-off, and the seconds the epoch took; no carriage returns, so that a file, a pipe or a
    scheduler's log reads as a list of epochs."""

    def __init__(self, phase: str, sink: logging.Logger) -> None:
        self.phase = phase
        self.sink = sink

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()
        self.loss_sum, self.weight = 0.0, 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        weight = getattr(batch, "positives", 1)
        self.loss_sum += float(loss.detach()) * weight
        self.weight += weight

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        parts = [f"{self.phase}, epoch {trainer.current_epoch + 1}{epochs}:"]
        if self.weight:
            parts.append(f"loss {self.loss_sum / self.weight:.4f}")
        validated = {name: value for name, value in trainer.callback_metrics.items()
                     if name.startswith("val/") and "/popularity/" not in name and "@" in name}
        if validated:
            k = max(int(name.rpartition("@")[2]) for name in validated)
            parts += [f"{name} {float(validated[name]):.4f}" for name in (f"val/recall@{k}", f"val/ndcg@{k}")
                      if name in validated and isinstance(validated[name], torch.Tensor | float)]
        parts.append(f"{time.perf_counter() - self.started:.1f} s")
        self.sink.info("%s %s", parts[0], " · ".join(parts[1:]))


class KeptExperimentWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        """Keep the metrics file and its columns: a resumed run continues it (a fresh run starts without one, as
        training clears the folder first)."""
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])


def forget_epochs_after(metrics_file: Path, epoch: int) -> None:
    """Drop the rows of epochs after ``epoch`` from a metrics CSV: a run resumed from the end of that epoch
    trains the next one again, and its rows would otherwise stand twice."""
    if not metrics_file.exists():
        return
    with metrics_file.open(newline="") as file:
        rows = list(csv.reader(file))
    if not rows or "epoch" not in rows[0]:
        return
    column = rows[0].index("epoch")
    kept = [rows[0], *(row for row in rows[1:] if row[column] == "" or int(row[column]) <= epoch)]
    if len(kept) < len(rows):
        with atomic_path(metrics_file) as temporary, temporary.open("w", newline="") as file:
            csv.writer(file, lineterminator="\n").writerows(kept)


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSV logger, whose ``metrics.csv`` survives a resume from ``ckpt_path=last``."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = KeptExperimentWriter(log_dir=self.log_dir)
        return self._experiment
