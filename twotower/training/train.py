"""What ``twotower-train`` does, as a plain function of its composed config: select the number of epochs on
the validation split, train the final model, test, export the vectors, build and measure the index, and
write the run directory (``train`` returns the metrics; sweepers optimise the monitored one).

Training into a finished run directory builds the new run in ``DIR/.staging`` and replaces the old one only
once the new one is complete, so a failed re-run leaves the finished run as it was; a lock refuses a second
training into a directory in use.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from importlib.resources import files
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from twotower.data.datamodule import InteractionDataModule
from twotower.embeddings import write_vectors
from twotower.errors import TwoTowerError
from twotower.files import fingerprint, write_json, write_text
from twotower.index import Backend, build_for_run
from twotower.model.metrics import metric_names
from twotower.model.module import TwoTowerModel
from twotower.model.towers import FeatureTower, HistoryTower
from twotower.run import Manifest, RunPaths, seen_items
from twotower.training.evaluation import popularity_metrics
from twotower.training.progress import PhaseProgressBar
from twotower.training.sizing import AUTO, Sizing
from twotower.training.staging import exclusive, publish

log = logging.getLogger("twotower")


def register_resolvers() -> None:
    """``${sample_data:NAME}``: the path of a data file bundled with the package (the default data's)."""
    OmegaConf.register_new_resolver("sample_data", lambda name: str(files("twotower.sample_data") / name),
                                    replace=True)


register_resolvers()  # so that composing the train config works wherever training is imported


class Stopwatch:
    """Wall seconds spent in named phases; a phase timed twice adds up."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self.started = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.laps[phase] = round(self.laps.get(phase, 0.0) + now - self.started, 3)
        self.started = now


def build_model(model_cfg: DictConfig, datamodule: InteractionDataModule) -> TwoTowerModel:
    """The configured model, sized for the data, with its feature towers' tables and its history tower's
    histories (what it now trains on) filled in."""
    model_cfg = model_cfg.copy()
    if model_cfg.dim == AUTO:  # as fit_and_export resolves it for the log (and says so)
        model_cfg.dim = sizing(model_cfg, datamodule).dim
    for side in ("user", "item"):  # assigned, not merged: a feature list becomes a list of specs
        model_cfg[f"{side}_tower"] = datamodule.complete_tower(side, model_cfg.get(f"{side}_tower") or {})
    # Only the optimizers and the scheduler become objects; the loss and towers stay plain specs (the loss's
    # _target_ included), which the model stores as hyperparameters and builds itself on loading.
    factories = {name: instantiate(model_cfg[name]) if model_cfg.get(name) else None
                 for name in ("optimizer", "scheduler", "sparse_optimizer")}
    try:
        model = instantiate(model_cfg, _recursive_=False, n_users=datamodule.n_users, n_items=datamodule.n_items,
                            **factories)
    except InstantiationException as error:  # the model's own refusal, said as itself
        if isinstance(error.__cause__, TwoTowerError):
            raise error.__cause__ from None
        raise
    for side in ("user", "item"):
        tower = getattr(model, f"{side}_tower")
        if isinstance(tower, FeatureTower):
            tower.load_features(*datamodule.side_features(side, tower.specs))
    if isinstance(model.user_tower, HistoryTower):
        history = datamodule.training_user_items()
        model.user_tower.load_history(torch.from_numpy(history.indptr), torch.from_numpy(history.items))
    return model


def export(model: TwoTowerModel, datamodule: InteractionDataModule, paths: RunPaths) -> tuple[np.ndarray, np.ndarray]:
    """Write the vectors whose dot product ranks as the model does (and a history tower's item vectors,
    which embed a new user at retrieval); returns the user and item vectors."""
    model.eval()
    with torch.no_grad():
        users = model.all_user_vectors().float().cpu().numpy()
        items = model.all_item_vectors().float().cpu().numpy()
    write_vectors(datamodule.user_vocab.ids, users, paths.embeddings("users"))
    write_vectors(datamodule.item_vocab.ids, items, paths.embeddings("items"))
    if isinstance(model.user_tower, HistoryTower):
        write_vectors(datamodule.item_vocab.ids, model.user_tower.history.weight.detach().float().cpu().numpy(),
                      paths.embeddings("history"))
    return users, items


FINAL_FITS = ("warm", "scratch")


def final_fit(cfg: DictConfig, datamodule: InteractionDataModule, selected: Path, epochs: int, paths: RunPaths
              ) -> tuple[Path, L.Trainer, int]:
    """Train the model to export on every split the user gave (no validation: nothing is held out any more):
    ``warm``, the selected model trained on for ``final_fit_share`` of its epochs more; ``scratch``, a new
    model for as many epochs as were selected. Returns its checkpoint, its trainer and its epochs."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule.fit_on(datamodule.final_fit_splits)
    model = build_model(cfg.model, datamodule)  # its feature and history buffers: of every split now
    if final_fit_mode(cfg.final_fit) == "warm":
        parameters = dict(model.named_parameters())
        state = torch.load(selected, map_location="cpu", weights_only=False)["state_dict"]
        model.load_state_dict({name: value for name, value in state.items() if name in parameters}, strict=False)
        epochs = max(1, math.ceil(epochs * cfg.final_fit_share))
    trainer = instantiate(cfg.trainer, max_epochs=epochs, limit_val_batches=0, enable_checkpointing=False,
                          logger=False, callbacks=progress_bar(cfg, "final fit"))
    fit(trainer, model, datamodule)
    exported = paths.checkpoints / "final.ckpt"  # written once, at the end: nothing resumes a final fit
    trainer.save_checkpoint(exported)
    return exported, trainer, epochs


def checked_share(share: object) -> float:
    """``final_fit_share``, refused unless it is a number above 0."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or share <= 0:
        raise TwoTowerError(f"final_fit_share must be a number > 0, got {share!r}")
    return share


def final_fit_mode(final_fit: object) -> str | None:
    """``warm``, ``scratch`` or None (export the selected model); ``true`` is the default, ``warm``."""
    if final_fit is True:
        return "warm"
    if final_fit is False or final_fit is None:
        return None
    if final_fit not in FINAL_FITS:
        raise TwoTowerError(f"final_fit must be warm, scratch or false, got {final_fit!r}")
    return final_fit


def progress_bar(cfg: DictConfig, phase: str) -> list[PhaseProgressBar]:
    return [PhaseProgressBar(phase, refresh_rate=1)] if cfg.trainer.get("enable_progress_bar", True) else []


def fit(trainer: L.Trainer, model: TwoTowerModel, datamodule: InteractionDataModule, ckpt_path: str | None = None
        ) -> None:
    """``trainer.fit``, where Ctrl-C is a ``KeyboardInterrupt`` again (Lightning turns it into exit status 1)."""
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except SystemExit as exit:
        if trainer.interrupted:
            raise KeyboardInterrupt from exit
        raise


def check_trainer_switches(trainer: DictConfig) -> None:
    """Stopping rules Lightning would accept but that leave no model to export."""
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps", -1)
    if not (isinstance(max_steps, int) and (max_steps == -1 or max_steps >= 1)):
        raise TwoTowerError(f"trainer.max_steps must be -1 (no limit) or an integer >= 1, got {max_steps!r}")
    unlimited = max_epochs == -1 and max_steps >= 1  # Lightning's "until max_steps"
    if not (max_epochs is None or unlimited or (isinstance(max_epochs, int) and max_epochs >= 1)):
        raise TwoTowerError(f"trainer.max_epochs must be an integer >= 1 (or -1 with trainer.max_steps set), "
                            f"got {max_epochs!r}")


def checked_monitor(monitor: str, ks: list[int], n_items: int) -> str:
    """The metric that selects checkpoints and stops early, as the validation pass logs it: a cut-off beyond a
    small catalogue is the catalogue's size (``val/ndcg@20`` of 5 items is ``val/ndcg@5``)."""
    logged = [f"val/{name}" for name in metric_names(ks, n_items)]
    name, _, cut_off = monitor.partition("@")
    if cut_off.isdigit() and int(cut_off) > n_items and f"{name}@{n_items}" in logged:
        log.info("monitor=%s: the catalogue has %d items, so %s@%d selects the model", monitor, n_items, name,
                 n_items)
        return f"{name}@{n_items}"
    if monitor not in logged:
        raise TwoTowerError(f"monitor={monitor} is not a metric the run logs; choose one of {logged}")
    return monitor


def is_first_process() -> bool:
    """Whether this is the process that started the run (not a DDP worker Lightning or torchrun started)."""
    return all(os.environ.get(variable, "0") == "0" for variable in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def checkpoint_to_resume(ckpt_path: str | None, paths: RunPaths) -> str | None:
    if ckpt_path in (None, ""):
        return None
    path = paths.last_checkpoint if ckpt_path == "last" else Path(ckpt_path)
    if not path.exists():
        raise TwoTowerError(f"checkpoint to resume from not found: {path}")
    return str(path)


def train(cfg: DictConfig) -> dict[str, float]:
    """Select on the validation split, train the final model, test, export and index; returns the metrics."""
    check_trainer_switches(cfg.trainer)
    index = instantiate(cfg.index)  # its settings are checked here, not after hours of training
    root = RunPaths(Path(cfg.run_dir))
    if not is_first_process():
        return fit_and_export(staged(cfg, root), index, root)
    with exclusive(root):
        cfg = staged(cfg, root)
        work = RunPaths(Path(cfg.run_dir))
        if work != root and cfg.ckpt_path in (None, "") and work.root.exists():
            shutil.rmtree(work.root)  # an earlier re-run's leftovers: this one starts afresh
        return fit_and_export(cfg, index, root)


def staged(cfg: DictConfig, root: RunPaths) -> DictConfig:
    """``cfg`` with its run directory moved to ``root``'s staging folder when ``root`` holds a finished run
    (every path of the run's config follows ``run_dir``)."""
    if not root.manifest.exists():
        return cfg
    cfg = cfg.copy()
    cfg.run_dir = str(root.staging)
    return cfg


def fit_and_export(cfg: DictConfig, index: Backend, root: RunPaths) -> dict[str, float]:
    paths = RunPaths(Path(cfg.run_dir))
    seconds = Stopwatch()
    mode = final_fit_mode(cfg.final_fit)  # checked before anything is read
    checked_share(cfg.final_fit_share)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule: InteractionDataModule = instantiate(cfg.datamodule)
    datamodule.setup("fit")
    cfg.monitor = checked_monitor(cfg.monitor, list(cfg.model.ks), datamodule.n_items)
    cfg.model.dim = sizing(cfg.model, datamodule).resolve(cfg.model.dim)
    model = build_model(cfg.model, datamodule)
    resume = checkpoint_to_resume(cfg.ckpt_path, paths)
    if resume is None and (paths.root / "logs").exists():
        shutil.rmtree(paths.root / "logs")  # a fresh start: an unfinished run's epochs are not this run's
    callbacks = [instantiate(callback) for callback in (cfg.get("callbacks") or {}).values() if callback is not None]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=[*callbacks, *progress_bar(cfg, "selection")],
                                     logger=logger)
    if trainer.is_global_zero:
        write_text(OmegaConf.to_yaml(cfg, resolve=True), paths.config)
        datamodule.save(paths)
    seconds.lap("data")

    fit(trainer, model, datamodule, resume)
    seconds.lap("selection")
    selected = Path(trainer.checkpoint_callback.best_model_path or paths.last_checkpoint)
    epochs = torch.load(selected, map_location="cpu", weights_only=False)["epoch"] + 1
    # Metrics of the selected checkpoint, not of the last epoch, beside popularity's on the same splits.
    metrics = trainer.validate(model, datamodule=datamodule, ckpt_path=str(selected), verbose=False)[0]
    metrics |= popularity(datamodule, "val", list(cfg.model.ks))
    metrics["selected_epochs"] = epochs
    sources = {"val": {"model": "selected", "trained_on": ["train"]}}
    exported, trained_on = selected, ["train"]
    if cfg.test:
        metrics |= popularity(datamodule, "test", list(cfg.model.ks))
    if mode is not None:
        trained_on = list(datamodule.final_fit_splits)
        if cfg.test and "test" in trained_on:  # the final model will have seen the test split: test before
            metrics |= trainer.test(model, datamodule=datamodule, ckpt_path=str(selected), verbose=False)[0]
            sources["test"] = {"model": "selected", "trained_on": ["train"]}
        seconds.lap("evaluation")
        exported, trainer, metrics["final_fit_epochs"] = final_fit(cfg, datamodule, selected, epochs, paths)
        seconds.lap("final_fit")
    if cfg.test and "test" not in sources:
        metrics |= trainer.test(model, datamodule=datamodule, ckpt_path=str(exported), verbose=False)[0]
        sources["test"] = {"model": "exported", "trained_on": trained_on}
    metrics = {name: float(value) for name, value in metrics.items()}
    if trainer.world_size > 1:  # each process's view of the (synchronised) metrics, for the record
        write_json(metrics, paths.metrics(f"rank{trainer.global_rank}"))
    if not trainer.is_global_zero:
        return metrics
    seconds.lap("evaluation")

    best = TwoTowerModel.load_from_checkpoint(exported, map_location="cpu")
    users, items = export(best, datamodule, paths)
    # Seen items as retrieval will read them from the run directory, so the index is tuned on what it serves.
    seen = seen_items(paths, datamodule.n_users)
    checkpoint = fingerprint(exported)
    build_for_run(index, users, items, seen, best.hparams.score, paths.index, checkpoint, cfg.index_recall_queries,
                  cfg.seed)
    write_json(metrics, paths.metrics("train"))
    seconds.lap("export_and_index")
    Manifest(
        names=datamodule.names, score=best.hparams.score, dim=int(items.shape[1]), n_users=datamodule.n_users,
        n_items=datamodule.n_items, min_rating=datamodule.min_rating,
        checkpoint=os.path.relpath(exported, paths.root), checkpoint_fingerprint=checkpoint,
        selected_checkpoint=os.path.relpath(selected, paths.root), trained_on=trained_on, monitor=cfg.monitor,
        metrics=metrics, metrics_from=sources, fingerprints=paths.fingerprints(), seconds=seconds.laps,
        device=str(trainer.strategy.root_device), example_item=datamodule.example_item, parts=best.blocks,
    ).write(paths)
    if paths != root:
        publish(paths.root, root.root)
    return metrics


def sizing(model_cfg: DictConfig, datamodule: InteractionDataModule) -> Sizing:
    """What ``auto`` settings become for this log: the pairs an epoch of this loss scores decide."""
    loss = model_cfg.loss or {}
    return Sizing.of(datamodule.n_users, datamodule.n_items, loss.get("max_candidates"), loss.get("sample_above", 0))


def popularity(datamodule: InteractionDataModule, stage: str, ks: list[int]) -> dict[str, float]:
    """``{stage}/popularity/{metric}``: the most popular training items for every user, on the same split."""
    counts = np.bincount(datamodule.splits["train"]["item"].to_numpy(), minlength=datamodule.n_items)
    seen, target = (("train",), "valid") if stage == "val" else (("train", "valid"), "test")
    if datamodule.splits[target].height == 0:
        return {}
    found = popularity_metrics(counts, datamodule.user_items(*seen), datamodule.user_items(target), ks)
    return {f"{stage}/popularity/{name}": value for name, value in found.items() if name != "users"}


