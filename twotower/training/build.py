"""What a run is made of, built from its composed config: the data module (with its reader, split and
sampler), the loss's batch plan, and the model, sized for the data.

Each config group is said once in the config (``data``, ``split``, ``sampler``, ``loss``, ``scheduler``): the
objects that take one are given it here, rather than the config interpolating it into their nodes.
"""

from __future__ import annotations

from hydra.errors import InstantiationException
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from twotower import checks
from twotower.checks import AUTO
from twotower.data.batches import BatchPlan, UserBatch
from twotower.data.datamodule import InteractionDataModule
from twotower.errors import ConfigError, TwoTowerError
from twotower.model.losses import build_loss
from twotower.model.module import TwoTowerModel
from twotower.model.towers import Tower
from twotower.training.sizing import Sizing, sequence_candidates


def unwrapped(error: InstantiationException) -> Exception:
    """The package's own refusal inside Hydra's instantiation error, said as itself."""
    return error.__cause__ if isinstance(error.__cause__, TwoTowerError) else error


def user_tower(cfg: DictConfig) -> type[Tower]:
    """The class of the configured user tower (what it reads of the data decides what the data keeps); the
    base class where the target is not a tower, which building the model then refuses by name."""
    try:
        kind = get_class(cfg.model.user_tower._target_)
    except Exception:  # Hydra's import error, whatever its type
        return Tower
    return kind if isinstance(kind, type) and issubclass(kind, Tower) else Tower


def build_datamodule(cfg: DictConfig) -> InteractionDataModule:
    """The data module of ``cfg``, with the reader (``data``), split and sampler groups; nothing read yet. It
    keeps each interaction's order where the user tower reads it."""
    try:
        parts = {name: checks.instantiate(name, cfg[name]) for name in ("data", "split", "sampler")}
        return checks.instantiate("datamodule", cfg.datamodule, source=parts["data"], split=parts["split"],
                                  sampler=parts["sampler"], keep_order=user_tower(cfg).reads_order,
                                  **planned_processes(cfg.trainer))
    except InstantiationException as error:
        raise unwrapped(error) from None


def planned_processes(trainer: DictConfig) -> dict[str, object]:
    """The processes the trainer will start, devices per node and nodes, as configured (a prepared log is shared
    out among them before they exist); one each for a strategy that runs in one process."""
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    if str(trainer.get("strategy", "auto")) in ("single_device", "dp"):
        return {"devices": 1, "nodes": 1}
    return {"devices": devices, "nodes": nodes}


def batch_plan(cfg: DictConfig, datamodule: InteractionDataModule) -> BatchPlan:
    """What each training batch holds for the configured loss over the data's catalogue, its users in order
    where the user tower reads order (each position scored against a sample of the catalogue where the whole
    would pass the epoch's budget: ``sizing.sequence_candidates``)."""
    loss = build_loss(OmegaConf.to_container(cfg.loss, resolve=True))
    plan = loss.plan(datamodule.n_items)
    if not user_tower(cfg).reads_order:
        return plan
    if plan.examples is not UserBatch:
        raise ConfigError("model/user_tower=sequence trains each position against the catalogue: use "
                          "loss=catalogue, not a loss over pairs")
    length = cfg.model.user_tower.get("max_length", 50)
    queries = datamodule.training_positions(length)
    whole = getattr(loss, "max_candidates", None) is None  # loss.max_candidates=null: always the whole catalogue
    return plan.in_sequences(length, None if whole else sequence_candidates(queries, datamodule.n_items))


def sizing(cfg: DictConfig, datamodule: InteractionDataModule) -> Sizing:
    """What ``auto`` settings become for this log: the pairs an epoch of this loss scores decide."""
    plan = batch_plan(cfg, datamodule)
    scored = datamodule.training_positions(plan.length) if plan.length else datamodule.n_users
    return Sizing.of(scored, plan.scored_per_user(datamodule.n_items))


def build_model(cfg: DictConfig, datamodule: InteractionDataModule) -> TwoTowerModel:
    """The configured model, sized for the data, its towers given what they read from the data it now trains
    on (features, histories)."""
    model_cfg = cfg.model.copy()
    if model_cfg.dim == AUTO:  # as the run resolves it for the log (and says so)
        model_cfg.dim = sizing(cfg, datamodule).dim
    if model_cfg.get("popularity_prior") == AUTO:  # chosen once the model is selected (twotower.training.prior)
        model_cfg.popularity_prior = 0.0
    if model_cfg.get("temperature") == AUTO:  # built outside a run's race (a notebook): what a short run takes
        model_cfg.temperature = cfg.race.fallback
    for side in ("user", "item"):  # a tower's feature names become their full encodings (assigned, not merged)
        tower = OmegaConf.to_container(model_cfg[f"{side}_tower"], resolve=True)
        if "features" in tower:
            tower["features"] = datamodule.feature_specs(side, tower["features"])
        model_cfg[f"{side}_tower"] = tower
    # Only the optimizers and the scheduler become objects; the loss and the towers stay plain specs (their
    # _target_ included), which the model stores as hyperparameters and builds itself on loading.
    factories = {name: checks.instantiate(f"model.{name}", model_cfg[name]) if model_cfg.get(name) else None
                 for name in ("optimizer", "sparse_optimizer")}
    factories["scheduler"] = checks.instantiate("scheduler", cfg.scheduler) if cfg.get("scheduler") else None
    try:
        model = checks.instantiate("model", model_cfg, _recursive_=False, n_users=datamodule.n_users,
                                   n_items=datamodule.n_items, loss=OmegaConf.to_container(cfg.loss, resolve=True),
                                   **factories)
    except InstantiationException as error:
        raise unwrapped(error) from None
    model.attach(datamodule)
    return model
