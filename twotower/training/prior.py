"""The popularity prior chosen by the run's own data.

A trained model can rank an item below what its popularity warrants: a cosine score is bounded, and a loss
that corrects for how often popular items are drawn as candidates (logQ) removes popularity on purpose.
Adding each item's log(1 + training interactions), weighted, to its logit puts it back. How much helps differs
from log to log (on some, nothing), so a run with ``model.popularity_prior=auto`` measures it: the selected
model ranks the validation users once, and every candidate weight is scored on the same scores; the best
monitored metric wins, 0 (no prior) among the candidates. Training is unchanged. The log and ``run.json``
say what each candidate scored and what was chosen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from twotower import checks
from twotower.checks import AUTO
from twotower.data.datamodule import InteractionDataModule
from twotower.errors import ConfigError
from twotower.model.metrics import RankingMetrics
from twotower.model.module import TwoTowerModel

log = logging.getLogger("twotower")


@dataclass(frozen=True)
class PriorChoice:
    """The weight chosen, why, and what each candidate scored (the monitored metric, on validation)."""

    weight: float
    why: str
    scores: dict[str, float] = field(default_factory=dict)

    def record(self) -> dict[str, object]:
        return {"value": self.weight, "why": self.why, "candidates": self.scores}


def candidate_weights(cfg: DictConfig) -> tuple[float, ...]:
    weights = tuple(cfg.weights or ())
    if not weights:
        raise ConfigError("prior.weights must name at least one weight (0: no prior)")
    return tuple(float(checks.number("prior.weights", weight, at_least=0)) for weight in weights)


def validate_with_prior(cfg: DictConfig, trainer: L.Trainer, model: TwoTowerModel,
                        datamodule: InteractionDataModule, checkpoint: Path) -> tuple[PriorChoice, dict[str, float]]:
    """The selected model (``checkpoint``) validated with ``model.popularity_prior`` as given, or with the
    candidate that validates best where it is ``auto``; returns the choice and the validation metrics under it
    (``model`` ranks with the chosen weight from then on)."""
    given = checks.auto_or("model.popularity_prior", cfg.model.popularity_prior,
                           lambda option, value: checks.number(option, value, at_least=0))
    if given != AUTO:
        model.hparams.popularity_prior = float(given)
        return PriorChoice(float(given), "given"), validate(trainer, model, datamodule, checkpoint)
    weights = candidate_weights(cfg.prior)
    model.hparams.popularity_prior = 0.0
    model.prior_trials = {weight: RankingMetrics(datamodule.n_items, model.hparams.ks).to(model.device)
                          for weight in weights}
    try:
        metrics = validate(trainer, model, datamodule, checkpoint)
        results = model.prior_results
    finally:
        model.prior_trials = {}
    name = cfg.monitor.removeprefix("val/")
    best = max(weights, key=lambda weight: (results[weight][name], -weight))  # a tie: the smaller weight
    model.hparams.popularity_prior = best
    scores = {f"{weight:g}": round(results[weight][name], 4) for weight in weights}
    why = f"the best {cfg.monitor} of the selected model over the candidates"
    log.info("model.popularity_prior=%g: %s (%s; give a value to choose otherwise)", best, why,
             ", ".join(f"{weight} {score:.4f}" for weight, score in scores.items()))
    return PriorChoice(best, why, scores), metrics | {f"val/{metric}": value for metric, value in
                                                       results[best].items()}


def validate(trainer: L.Trainer, model: TwoTowerModel, datamodule: InteractionDataModule,
             checkpoint: Path) -> dict[str, float]:
    return trainer.validate(model, datamodule=datamodule, ckpt_path=str(checkpoint), verbose=False)[0]
