"""What ``twotower-train`` does, as a plain function of its composed config, in named phases: **select** the
number of epochs on the validation split, train the **final fit** on every split the user gave, **test**
the model the test split is fair to, and **publish** the run directory (vectors, index, metrics,
``run.json``). ``train`` returns the metrics; sweepers optimise the monitored one.

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
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from twotower import checks
from twotower.checks import AUTO
from twotower.data.batches import across_processes, process_share
from twotower.data.datamodule import InteractionDataModule
from twotower.data.splits import SPLIT_NAMES
from twotower.errors import ConfigError
from twotower.files import atomic_path, fingerprint, write_json, write_parquet, write_text
from twotower.index import Backend, Probe, build_for_run
from twotower.model.metrics import metric_names
from twotower.model.module import TwoTowerModel
from twotower.run import Manifest, Run, RunPaths, index_score, seen_items, with_prior, write_vectors
from twotower.training.build import batch_plan, build_datamodule, build_model, sizing
from twotower.training.evaluation import popularity_metrics
from twotower.training.fitting import fit, make_trainer
from twotower.training.prior import check_monitor, validate_with_prior
from twotower.training.progress import forget_epochs_after
from twotower.training.race import Outcome, choose_temperature
from twotower.training.runlog import RECORD, RunLog
from twotower.training.staging import exclusive, publish
from twotower.training.summary import configuration, summary

log = logging.getLogger("twotower")


def register_resolvers() -> None:
    """``${sample_data:NAME}``: the path of a data file bundled with the package (the default data's)."""
    OmegaConf.register_new_resolver("sample_data", lambda name: str(files("twotower.sample_data") / name),
                                    replace=True)


register_resolvers()  # so that composing the train config works wherever training is imported

FINAL_FITS = ("warm", "scratch")


@dataclass(frozen=True)
class Settings:
    """The options of the run itself (not of its parts), checked before anything is read."""

    final_fit: str | None  # warm, scratch, or None: export the selected model
    final_fit_share: float
    test: bool
    seed: int

    @classmethod
    def of(cls, cfg: DictConfig) -> Settings:
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError(f"{missing[0]} is required: give it on the command line, e.g. {missing[0]}=...")
        final_fit = {True: "warm", False: None, None: None}.get(cfg.final_fit, cfg.final_fit)
        if final_fit is not None and final_fit not in FINAL_FITS:
            raise ConfigError(f"final_fit must be warm, scratch or false, got {cfg.final_fit!r}")
        check_trainer_switches(cfg.trainer)
        return cls(final_fit, checks.number("final_fit_share", cfg.final_fit_share, above=0),
                   checks.flag("test", cfg.test), checks.integer("seed", cfg.seed))


def check_trainer_switches(trainer: DictConfig) -> None:
    """Stopping rules Lightning would accept but that leave no model to export."""
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps", -1)
    checks.integer("trainer.max_steps", max_steps, 1, also=(-1, "no limit"))
    unlimited = max_epochs == -1 and max_steps >= 1  # Lightning's "until max_steps"
    if not (max_epochs is None or unlimited or (checks.is_integer(max_epochs) and max_epochs >= 1)):
        raise ConfigError(f"trainer.max_epochs must be an integer >= 1 (or -1 with trainer.max_steps set), "
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
        raise ConfigError(f"monitor={monitor} is not a metric the run logs; choose one of {logged}")
    return monitor


class Stopwatch:
    """Wall seconds spent in named phases; a phase timed twice adds up."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self.started = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.laps[phase] = round(self.laps.get(phase, 0.0) + now - self.started, 3)
        self.started = now


def is_first_process() -> bool:
    """Whether this is the process that started the run (not a DDP worker Lightning or torchrun started)."""
    return all(os.environ.get(variable, "0") == "0" for variable in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def train(cfg: DictConfig, resume: str | None = None) -> dict[str, float]:
    """Select on the validation split, train the final model, test, export and index; returns the metrics.
    The attempt, its summary or its error go into the run's ``train.log`` (``resume``: the command that
    continues an interrupted attempt, said there)."""
    root = RunPaths(Path(cfg.run_dir))
    if not is_first_process():
        return fit_and_export(staged(cfg, root), Settings.of(cfg), checks.instantiate("index", cfg.index), root)
    with exclusive(root), RunLog(root.root, resume) as run_log:
        settings = Settings.of(cfg)
        index = checks.instantiate("index", cfg.index)  # its settings are checked here, not after hours of training
        if root.manifest.exists():
            log.info("%s holds a finished run: this one replaces it once it is complete, and leaves it as it is "
                     "if it fails", root.root)
        cfg = staged(cfg, root)
        work = RunPaths(Path(cfg.run_dir))
        if work != root and cfg.ckpt_path in (None, "") and work.root.exists():
            shutil.rmtree(work.root)  # an earlier re-run's leftovers: this one starts afresh
        metrics = fit_and_export(cfg, settings, index, root)
        run_log.note(summary(Run.open(root.root)))
        return metrics


def staged(cfg: DictConfig, root: RunPaths) -> DictConfig:
    """``cfg`` with its run directory moved to ``root``'s staging folder when ``root`` holds a finished run
    (every path of the run's config follows ``run_dir``)."""
    if not root.manifest.exists():
        return cfg
    cfg = cfg.copy()
    cfg.run_dir = str(root.staging)
    return cfg


def fit_and_export(cfg: DictConfig, settings: Settings, index: Backend, root: RunPaths) -> dict[str, float]:
    """The phases of a run, each timed: prepare, select, final fit, test, publish."""
    paths = RunPaths(Path(cfg.run_dir))
    seconds = Stopwatch()
    datamodule = prepare(cfg, settings, paths)
    seconds.lap("data")
    selection = select(cfg, datamodule, paths)
    seconds.lap("selection")
    final = final_fit(cfg, settings, datamodule, selection, paths) if settings.final_fit else None
    seconds.lap("final_fit")
    tested = test(cfg, settings, datamodule, selection, final)
    seconds.lap("evaluation")
    trainer = final.trainer if final else selection.trainer
    metrics = selection.metrics | tested.metrics | {"selected_epochs": selection.epochs}
    metrics |= {"final_fit_epochs": final.epochs} if final else {}
    metrics = {name: float(value) for name, value in metrics.items()}
    if trainer.world_size > 1:  # each process's view of the (synchronised) metrics, for the record
        write_json(metrics, paths.metrics(f"rank{trainer.global_rank}"))
    if trainer.is_global_zero:
        publish_run(cfg, datamodule, selection, final, tested, metrics, index, paths, seconds)
        if paths != root:
            publish(paths.root, root.root)
    return metrics


def prepare(cfg: DictConfig, settings: Settings, paths: RunPaths) -> InteractionDataModule:
    """Read and split the log, resolve what follows from it (the monitor's cut-off, ``model.dim=auto``), plan
    the batches for the loss, and save the run's config and data (vocabularies, splits, what was dropped)."""
    L.seed_everything(settings.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    cfg.monitor = checked_monitor(cfg.monitor, list(cfg.model.ks), datamodule.n_items)
    check_monitor(cfg)
    cfg.model.dim = sizing(cfg, datamodule).resolve(cfg.model.dim)
    datamodule.use(batch_plan(cfg, datamodule))
    if is_first_process():
        write_text(OmegaConf.to_yaml(cfg, resolve=True), paths.config)
        RECORD.info(configuration(cfg))
        save_data(datamodule, paths)
    return datamodule


@dataclass(frozen=True)
class Selection:
    """The model selected on the validation split: its checkpoint, its epochs, its validation metrics beside
    popularity's (and popularity's on test, which needs no model), and what was chosen for it on the way."""

    trainer: L.Trainer
    model: TwoTowerModel
    checkpoint: Path
    epochs: int
    metrics: dict[str, float]
    chosen: dict[str, dict[str, object]]


def select(cfg: DictConfig, datamodule: InteractionDataModule, paths: RunPaths) -> Selection:
    """Train on the train split, validating every epoch; early stopping and the best checkpoint select. A
    temperature left at ``auto`` is raced first, and the winner goes on (``twotower.training.race``)."""
    resume = checkpoint_to_resume(cfg.ckpt_path, paths)
    if resume is None and (paths.root / "logs").exists():
        shutil.rmtree(paths.root / "logs")  # a fresh start: an unfinished run's epochs are not this run's
    if resume is not None:
        saved = torch.load(resume, map_location="cpu", weights_only=False)
        forget_epochs_after(paths.root / "logs" / "metrics.csv", saved["epoch"])
    if resume is not None and cfg.model.temperature == AUTO:  # the interrupted run raced already
        outcome = Outcome(saved["hyper_parameters"]["temperature"], f"chosen before the run was interrupted, kept "
                          f"from {resume}")
    else:
        outcome = choose_temperature(cfg, datamodule, paths)
    if cfg.model.temperature != outcome.temperature:
        cfg.model.temperature = outcome.temperature
        if is_first_process():  # the saved configuration says what the run trains with
            write_text(OmegaConf.to_yaml(cfg, resolve=True), paths.config)
    model = build_model(cfg, datamodule)
    callbacks = [instantiate(callback) for callback in (cfg.get("callbacks") or {}).values() if callback is not None]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = make_trainer(cfg, "selection", callbacks, logger=logger)
    fit(trainer, model, datamodule, resume or (str(outcome.checkpoint) if outcome.checkpoint else None))
    if outcome.checkpoint is not None:
        outcome.checkpoint.unlink(missing_ok=True)  # the winner's start, now part of the selection's epochs
    selected = Path(trainer.checkpoint_callback.best_model_path or paths.last_checkpoint)
    epochs = torch.load(selected, map_location="cpu", weights_only=False)["epoch"] + 1
    # The selected checkpoint's metrics, not the last epoch's, with its popularity prior, beside popularity's on
    # the same splits.
    prior, metrics = validate_with_prior(cfg, trainer, model, datamodule, selected)
    if cfg.model.popularity_prior != prior.weight:
        cfg.model.popularity_prior = prior.weight  # the final fit ranks with it too
        if is_first_process():
            write_text(OmegaConf.to_yaml(cfg, resolve=True), paths.config)
    ks = list(cfg.model.ks)
    metrics |= popularity(datamodule, "val", ks) | (popularity(datamodule, "test", ks) if cfg.test else {})
    return Selection(trainer, model, selected, epochs, metrics, {"model.temperature": outcome.record(),
                                                                 "model.popularity_prior": prior.record()})


@dataclass(frozen=True)
class FinalFit:
    """The model to export, trained on ``trained_on`` for ``epochs`` more."""

    trainer: L.Trainer
    model: TwoTowerModel
    checkpoint: Path
    epochs: int
    trained_on: tuple[str, ...]


def final_fit(cfg: DictConfig, settings: Settings, datamodule: InteractionDataModule, selection: Selection,
              paths: RunPaths) -> FinalFit:
    """Train the model to export on every split the user gave (no validation: nothing is held out any more):
    ``warm``, the selected model trained on for ``final_fit_share`` of its epochs more; ``scratch``, a new
    model for as many epochs as were selected."""
    L.seed_everything(settings.seed, workers=True, verbose=False)
    datamodule.fit_on(datamodule.final_fit_splits)
    model = build_model(cfg, datamodule)  # its towers read every split now
    epochs = selection.epochs
    if settings.final_fit == "warm":
        parameters = dict(model.named_parameters())
        state = torch.load(selection.checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        model.load_state_dict({name: value for name, value in state.items() if name in parameters}, strict=False)
        epochs = max(1, math.ceil(epochs * settings.final_fit_share))
    trainer = make_trainer(cfg, "final fit", max_epochs=epochs, limit_val_batches=0, enable_checkpointing=False,
                           logger=False)
    fit(trainer, model, datamodule)
    checkpoint = paths.checkpoints / "final.ckpt"  # written once, at the end: nothing resumes a final fit
    trainer.save_checkpoint(checkpoint)
    return FinalFit(trainer, model, checkpoint, epochs, datamodule.final_fit_splits)


@dataclass(frozen=True)
class Tested:
    """Test metrics, and which model they are of: the exported one where it has not seen the test split, else
    the selected one."""

    metrics: dict[str, float] = field(default_factory=dict)
    source: dict[str, object] | None = None


def test(cfg: DictConfig, settings: Settings, datamodule: InteractionDataModule, selection: Selection,
         final: FinalFit | None) -> Tested:
    if not settings.test:
        return Tested()
    if final is None or "test" in final.trained_on:
        found = selection.trainer.test(selection.model, datamodule=datamodule, ckpt_path=str(selection.checkpoint),
                                       verbose=False)[0]
        return Tested(found, {"model": "selected", "trained_on": ["train"]})
    found = final.trainer.test(final.model, datamodule=datamodule, ckpt_path=str(final.checkpoint), verbose=False)[0]
    return Tested(found, {"model": "exported", "trained_on": list(final.trained_on)})


def publish_run(cfg: DictConfig, datamodule: InteractionDataModule, selection: Selection, final: FinalFit | None,
                tested: Tested, metrics: dict[str, float], index: Backend, paths: RunPaths,
                seconds: Stopwatch) -> None:
    """Export the model's vectors, build and measure the index over them, and write the metrics and
    ``run.json`` (last: it makes the directory a finished run)."""
    exported = final.checkpoint if final else selection.checkpoint
    model = TwoTowerModel.load_from_checkpoint(exported, map_location="cpu")
    prior_chosen_since = model.hparams.popularity_prior != cfg.model.popularity_prior  # the selected model's
    model.hparams.popularity_prior = cfg.model.popularity_prior  # checkpoint was saved before the choice
    # A tower that encodes users from what they did, exported without a final fit, encodes every interaction the
    # user gave, as its test pass did (it trained on the train split only).
    reencoded = final is None and model.user_tower.encodes_what_was_seen
    users, items = export(model, datamodule, paths, datamodule.final_fit_splits if reencoded else datamodule.fitted_on)
    if datamodule.sharded or reencoded or prior_chosen_since:  # what the saved checkpoint lacks: every user's
        completed(model, exported)  # histories (a process saves its own share's, or the train split's), the prior
    # Seen items as retrieval will read them from the run directory, so the index is tuned on what it serves;
    # only the probe's users' (every user's would hold the whole log at once).
    rows = Probe.draw(len(users), cfg.index_recall_queries, cfg.seed)
    probe = Probe.of(users, rows, seen_items(paths, datamodule.n_users, users=rows).row)
    checkpoint = fingerprint(exported)
    build_for_run(index, items, index_score(model.hparams.score, model.prior_weight), paths.index, probe, checkpoint)
    write_json(metrics, paths.metrics("train"))
    seconds.lap("export_and_index")
    sources = {"val": {"model": "selected", "trained_on": ["train"]}} | ({"test": tested.source} if tested.source
                                                                         else {})
    Manifest(
        names=datamodule.names, score=model.hparams.score, dim=int(items.shape[1]), n_users=datamodule.n_users,
        n_items=datamodule.n_items, min_rating=datamodule.min_rating,
        checkpoint=os.path.relpath(exported, paths.root), checkpoint_fingerprint=checkpoint,
        selected_checkpoint=os.path.relpath(selection.checkpoint, paths.root),
        trained_on=list(final.trained_on) if final else ["train"], monitor=cfg.monitor, metrics=metrics,
        metrics_from=sources, fingerprints=paths.fingerprints(), seconds=seconds.laps,
        device=str((final or selection).trainer.strategy.root_device), example_item=datamodule.example_item,
        parts=model.parts, chosen=selection.chosen, user_tower=type(model.user_tower).__name__,
        prior=model.prior_weight,
    ).write(paths)


def export(model: TwoTowerModel, datamodule: InteractionDataModule, paths: RunPaths,
           splits: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Write the vectors whose dot product ranks as the model does, and the tables a tower exports beside them
    (a history tower's item vectors, which embed a new user at retrieval), each user encoded from their items
    over ``splits``; returns the user and item vectors."""
    if datamodule.sharded or splits != datamodule.fitted_on:  # this process trained on its share of the users,
        model.attach(datamodule.whole(splits))  # or on other splits: the towers read every user's over splits
    model.eval()
    with torch.no_grad():
        users = model.all_user_vectors().float().cpu().numpy()
        items = model.all_item_vectors().float().cpu().numpy()
        tables = {name: table.float().cpu().numpy() for name, table in model.user_tower.exports().items()}
    if model.prior_weight:  # one coordinate more: each user's weight of the prior, each item's log-popularity
        users, items = with_prior(users, model.prior_weight), with_prior(items, model.item_prior.float().cpu().numpy())
    write_vectors(datamodule.user_vocab.ids, users, paths.embeddings("users"))
    write_vectors(datamodule.item_vocab.ids, items, paths.embeddings("items"))
    for name, table in tables.items():
        write_vectors(datamodule.item_vocab.ids, table, paths.embeddings(name))
    return users, items


def completed(model: TwoTowerModel, checkpoint: Path) -> None:
    """Rewrite ``checkpoint``, atomically, with what ``model`` holds now that the checkpoint lacks: the data its
    towers hold (histories, features) and the popularity prior chosen after it was saved."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state = saved["state_dict"]
    state |= {name: buffer for name, buffer in model.data_buffers().items() if name in state}
    saved["hyper_parameters"]["popularity_prior"] = model.hparams.popularity_prior
    with atomic_path(checkpoint) as temporary:
        torch.save(saved, temporary)


def save_data(datamodule: InteractionDataModule, paths: RunPaths) -> None:
    """Vocabularies, splits and the ids left out, so evaluation and retrieval never need the raw log again."""
    datamodule.user_vocab.save(paths.vocab("users"))
    datamodule.item_vocab.save(paths.vocab("items"))
    for name in SPLIT_NAMES:
        datamodule.write_split(name, paths.split(name))
    datamodule.write_non_positive(paths.non_positive)
    paths.dropped.unlink(missing_ok=True)  # from an earlier run into this directory
    if datamodule.dropped.height:
        write_parquet(datamodule.dropped, paths.dropped)


def popularity(datamodule: InteractionDataModule, stage: str, ks: list[int]) -> dict[str, float]:
    """``{stage}/popularity/{metric}``: the most popular training items for every user, on the same split (and
    for validation, the same users) as the model's metrics."""
    counts = datamodule.item_counts()
    seen, target = (("train",), "valid") if stage == "val" else (("train", "valid"), "test")
    held_out = datamodule.splits[target].height
    if (across_processes(held_out, "sum") if datamodule.sharded else held_out) == 0:  # decided by every process:
        return {}  # the metrics below are synchronised, so either all processes compute them or none
    targets = datamodule.ranking_targets(target, datamodule.val_users if stage == "val" else None)
    share = " of this process's share" if datamodule.sharded and process_share()[1] > 1 else ""
    log.info("popularity baseline: ranking %d %s users%s", len(targets.users()),
             "validation" if stage == "val" else "test", share)
    found = popularity_metrics(counts, datamodule.user_items(*seen, users=targets.users()), targets, ks)
    return {f"{stage}/popularity/{name}": value for name, value in found.items() if name != "users"}


def checkpoint_to_resume(ckpt_path: str | None, paths: RunPaths) -> str | None:
    if ckpt_path in (None, ""):
        return None
    path = paths.last_checkpoint if ckpt_path == "last" else Path(ckpt_path)
    if not path.exists():
        raise ConfigError(f"ckpt_path: checkpoint to resume from not found: {path}")
    return str(path)
