"""A temperature chosen by the run's own data: a race of candidates on the validation split.

The softmax temperature that ranks best differs from log to log, and no rule of the log's shape predicts it
well, so a run with ``model.temperature=auto`` measures it. Every candidate starts from the same initial
vectors and trains on the training split for a round of epochs; the monitored validation metric judges them,
and the better half goes on to the next round, continuing where it stopped. The winner of the last round goes
on as the selection phase from its checkpoint, so only the other candidates' epochs are extra. A run too short
to hold the race (``trainer.max_epochs`` below twice the race's epochs) keeps the race's ``fallback``. The log
and ``run.json`` say what each candidate scored and what was chosen.
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
from twotower.run import RunPaths
from twotower.training.build import build_model
from twotower.training.fitting import fit, make_trainer

log = logging.getLogger("twotower")


@dataclass(frozen=True)
class Race:
    """The candidates, the epochs of each round, and what a run too short to race takes."""

    temperatures: tuple[float, ...]
    rounds: tuple[int, ...]
    fallback: float

    @classmethod
    def of(cls, cfg: DictConfig) -> Race:
        temperatures = tuple(cfg.temperatures or ())
        if not temperatures:
            raise ConfigError("race.temperatures must name at least one temperature")
        for temperature in temperatures:
            checks.number("race.temperatures", temperature, above=0)
        rounds = tuple(checks.integer("race.rounds", epochs, 1) for epochs in cfg.rounds or ())
        if not rounds:
            raise ConfigError("race.rounds must give at least one round's epochs")
        return cls(temperatures, rounds, checks.number("race.fallback", cfg.fallback, above=0))

    @property
    def epochs(self) -> int:
        return sum(self.rounds)


@dataclass(frozen=True)
class Outcome:
    """The temperature chosen, why, and the checkpoint the selection phase goes on from (None: from scratch)."""

    temperature: float
    why: str
    scores: dict[str, list[float]] = field(default_factory=dict)  # each candidate's metric after each round
    checkpoint: Path | None = None

    def record(self) -> dict[str, object]:
        return {"value": self.temperature, "why": self.why, "race": self.scores}


def choose_temperature(cfg: DictConfig, datamodule: InteractionDataModule, paths: RunPaths) -> Outcome:
    """``model.temperature`` as given, or, where it is ``auto``, the winner of the race."""
    given = checks.auto_or("model.temperature", cfg.model.temperature,
                           lambda option, value: checks.number(option, value, above=0))
    if given != AUTO:
        return Outcome(given, "given")
    race = Race.of(cfg.race)
    max_epochs = cfg.trainer.get("max_epochs")
    if isinstance(max_epochs, int) and 0 < max_epochs < 2 * race.epochs:
        why = (f"a run of {max_epochs} epochs is too short for the race's {race.epochs}: the fallback "
               f"{race.fallback:g}")
        log.info("model.temperature=%g: %s", race.fallback, why)
        return Outcome(race.fallback, why)
    if len(race.temperatures) == 1:
        return Outcome(race.temperatures[0], "the only candidate")
    return run_race(cfg, race, datamodule, paths)


def run_race(cfg: DictConfig, race: Race, datamodule: InteractionDataModule, paths: RunPaths) -> Outcome:
    field_ = list(race.temperatures)
    scores: dict[str, list[float]] = {f"{temperature:g}": [] for temperature in field_}
    checkpoints: dict[float, Path] = {}
    epochs = 0
    for round_number, round_epochs in enumerate(race.rounds, start=1):
        epochs += round_epochs
        for temperature in field_:
            scores[f"{temperature:g}"].append(train_candidate(cfg, datamodule, temperature, epochs, checkpoints,
                                                              paths))
        ranked = sorted(field_, key=lambda t: scores[f"{t:g}"][-1], reverse=True)
        kept = ranked[:max(1, (len(ranked) + 1) // 2)] if round_number < len(race.rounds) else ranked[:1]
        log.info("temperature race, %d epochs: %s; %s", epochs,
                 ", ".join(f"{t:g} {scores[f'{t:g}'][-1]:.4f}" for t in ranked),
                 f"{' and '.join(f'{t:g}' for t in kept)} go on" if round_number < len(race.rounds) else
                 f"{kept[0]:g} wins")
        for temperature in set(field_) - set(kept):
            checkpoints.pop(temperature).unlink(missing_ok=True)
        field_ = kept
    winner = field_[0]
    why = f"the best {cfg.monitor} of the race after {epochs} epochs"
    log.info("model.temperature=%g: %s (give a value to choose otherwise)", winner, why)
    return Outcome(winner, why, scores, checkpoints[winner])


def train_candidate(cfg: DictConfig, datamodule: InteractionDataModule, temperature: float, epochs: int,
                    checkpoints: dict[float, Path], paths: RunPaths) -> float:
    """Train the candidate up to ``epochs`` (from the same initial vectors as every other, or on from its
    checkpoint), keep its checkpoint, and return its validation metric."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    candidate = cfg.copy()
    candidate.model.temperature = temperature
    model = build_model(candidate, datamodule)
    # validated once, at the end of its round (by the same loader the selection validates with)
    trainer = make_trainer(cfg, f"race, temperature {temperature:g}", max_epochs=epochs, logger=False,
                           enable_checkpointing=False, limit_val_batches=0, num_sanity_val_steps=0)
    fit(trainer, model, datamodule, str(checkpoints[temperature]) if temperature in checkpoints else None)
    checkpoints[temperature] = paths.checkpoints / f"race-{temperature:g}.ckpt"
    trainer.save_checkpoint(checkpoints[temperature])
    judge = make_trainer(cfg, "race", logger=False, enable_checkpointing=False)
    return float(judge.validate(model, datamodule=datamodule, verbose=False)[0][cfg.monitor])
