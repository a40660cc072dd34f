"""``model.temperature=auto``: a race of temperatures on the run's own validation split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import compose_train
from twotower.data.synthetic import planted_interactions
from twotower.errors import TwoTowerError
from twotower.training.train import train


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    planted_interactions(n_users=300, n_items=120, n_clusters=6, interactions_per_user=15, seed=3).write_csv(
        tmp_path / "log.csv")
    return tmp_path / "log.csv"


def run(tmp_path: Path, log_file: Path, *overrides: str) -> dict:
    train(compose_train(tmp_path / "run", "data=interactions", f"data.path={log_file}", "model.dim=16",
                        "show_similar_to=null", *overrides))
    return json.loads((tmp_path / "run" / "run.json").read_text())


def test_the_race_judges_every_candidate_keeps_the_better_half_and_goes_on_with_the_winner(
        tmp_path: Path, log_file: Path) -> None:
    manifest = run(tmp_path, log_file, "model.temperature=auto", "trainer.max_epochs=6", "race.rounds=[1,2]",
                   "race.temperatures=[0.05,0.1,0.2,0.4]")
    chosen = manifest["chosen"]["model.temperature"]
    race = chosen["race"]
    assert sorted(race) == ["0.05", "0.1", "0.2", "0.4"]
    assert sorted(len(scores) for scores in race.values()) == [1, 1, 2, 2]  # half the field runs a second round
    finalists = {name: scores for name, scores in race.items() if len(scores) == 2}
    first_round = sorted(race, key=lambda name: race[name][0], reverse=True)
    assert set(finalists) == set(first_round[:2])  # the better half of round one went on
    winner = max(finalists, key=lambda name: finalists[name][1])
    assert chosen["value"] == float(winner) and "race" in chosen["why"]
    assert manifest["metrics"]["selected_epochs"] >= 3  # the winner's race epochs count as selection's
    assert not list((tmp_path / "run" / "checkpoints").glob("race-*"))  # the race leaves no checkpoint
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert f"temperature: {chosen['value']}" in config


def test_a_given_temperature_is_kept_and_a_short_run_takes_the_fallback(tmp_path: Path, log_file: Path) -> None:
    given = run(tmp_path / "given", log_file, "model.temperature=0.3", "trainer.max_epochs=2")
    assert given["chosen"]["model.temperature"] == {"value": 0.3, "why": "given", "race": {}}
    short = run(tmp_path / "short", log_file, "model.temperature=auto", "trainer.max_epochs=2")
    assert short["chosen"]["model.temperature"]["value"] == 0.15
    assert "too short for the race" in short["chosen"]["model.temperature"]["why"]


def test_a_bad_race_is_refused_before_training(tmp_path: Path, log_file: Path) -> None:
    with pytest.raises(TwoTowerError, match=r"race\.temperatures must be a number > 0"):
        run(tmp_path, log_file, "model.temperature=auto", "race.temperatures=[0.1,hot]")
