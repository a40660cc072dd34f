"""The popularity prior chosen by the run's own data.

A trained model can rank an item below what its popularity warrants: a cosine score is bounded, and a loss
that corrects for how often popular items are drawn as candidates (logQ) removes popularity on purpose.
Adding each item's log(1 + training interactions), weighted, to its logit puts it back. How much helps differs
from log to log (on some, nothing), so a run with ``model.popularity_prior=auto`` measures it: the selected
model ranks the validation users once, and every candidate weight is scored on the same scores. A weight above
the smallest (the baseline, usually 0) must earn its place: its mean per-user gain in the monitored metric must
exceed ``prior.evidence`` standard errors of the paired per-user differences, so a gain within a validation
split's noise leaves the ranking as the towers make it. Of the weights that pass, the best monitored metric
wins. Training is unchanged. The log and ``run.json`` say what each candidate scored and what was chosen.
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
from twotower.model.metrics import METRICS, PriorTrials, Trial
from twotower.model.module import TwoTowerModel

log = logging.getLogger("twotower")


@dataclass(frozen=True)
class PriorChoice:
    """The weight chosen, why, and what each candidate scored (the monitored metric, on validation) and its gain
    over the baseline in standard errors."""

    weight: float
    why: str
    scores: dict[str, float] = field(default_factory=dict)
    evidence: dict[str, float] = field(default_factory=dict)

    def record(self) -> dict[str, object]:
        return {"value": self.weight, "why": self.why, "candidates": self.scores} | (
            {"evidence": self.evidence} if self.evidence else {})


def candidate_weights(cfg: DictConfig) -> tuple[float, ...]:
    """The candidate weights in increasing order, the baseline first."""
    weights = tuple(cfg.weights or ())
    if not weights:
        raise ConfigError("prior.weights must name at least one weight (0: no prior)")
    return tuple(sorted({float(checks.number("prior.weights", weight, at_least=0)) for weight in weights}))


def check_monitor(cfg: DictConfig) -> None:
    """``auto`` compares the weights user by user on the monitored metric: refuse, before training, a monitor
    that is not a per-user metric (coverage, a share of the catalogue)."""
    if cfg.model.popularity_prior == AUTO and cfg.monitor.removeprefix("val/").partition("@")[0] not in METRICS:
        raise ConfigError(f"model.popularity_prior=auto chooses the weight by each user's {cfg.monitor}, which is "
                          f"not a per-user metric; monitor one of {', '.join(METRICS)} or give the prior a value")


def choose(results: dict[float, Trial], metric: str, evidence: float) -> tuple[float, dict[float, float]]:
    """The weight with the best ``metric`` among the baseline (the first) and the weights whose gain over it
    exceeds ``evidence`` standard errors (a tie: the smaller weight), and each weight's gain in standard errors."""
    weights = list(results)
    ratios = {weight: results[weight].evidence for weight in weights[1:]}
    eligible = [weights[0]] + [weight for weight in weights[1:]
                               if results[weight].gain > 0 and ratios[weight] > evidence]
    best = max(eligible, key=lambda weight: (results[weight].metrics[metric], -weight))
    return best, ratios


def validate_with_prior(cfg: DictConfig, trainer: L.Trainer, model: TwoTowerModel,
                        datamodule: InteractionDataModule, checkpoint: Path) -> tuple[PriorChoice, dict[str, float]]:
    """The selected model (``checkpoint``) validated with ``model.popularity_prior`` as given, or with the
    candidate chosen on validation where it is ``auto``; returns the choice and the validation metrics under it
    (``model`` ranks with the chosen weight from then on)."""
    given = checks.auto_or("model.popularity_prior", cfg.model.popularity_prior,
                           lambda option, value: checks.number(option, value, at_least=0))
    if given != AUTO:
        return PriorChoice(float(given), "given"), validate(trainer, model, datamodule, checkpoint)
    weights = candidate_weights(cfg.prior)
    evidence = float(checks.number("prior.evidence", cfg.prior.evidence, at_least=0))
    name = cfg.monitor.removeprefix("val/")
    model.hparams.popularity_prior = 0.0
    model.prior_trials = PriorTrials(datamodule.n_items, model.hparams.ks, weights, name).to(model.device)
    try:
        metrics = validate(trainer, model, datamodule, checkpoint)
        results = model.prior_results
    finally:
        model.prior_trials = None
    best, ratios = choose(results, name, evidence)
    model.hparams.popularity_prior = best
    scores = {f"{weight:g}": round(results[weight].metrics[name], 4) for weight in weights}
    why = (f"the best {cfg.monitor} of the selected model among the weights whose per-user gain over "
           f"{weights[0]:g} exceeds {evidence:g} standard errors")
    log.info("model.popularity_prior=%g: %s (%s; give a value to choose otherwise)", best, why, ", ".join(
        f"{weight:g} {results[weight].metrics[name]:.4f}" + (f" ({ratios[weight]:+.1f} se)" if weight in ratios else "")
        for weight in weights))
    record = {f"{weight:g}": round(ratio, 2) for weight, ratio in ratios.items()}
    return PriorChoice(best, why, scores, record), metrics | {
        f"val/{metric}": value for metric, value in results[best].metrics.items()}


def validate(trainer: L.Trainer, model: TwoTowerModel, datamodule: InteractionDataModule,
             checkpoint: Path) -> dict[str, float]:
    return trainer.validate(model, datamodule=datamodule, ckpt_path=str(checkpoint), verbose=False)[0]
