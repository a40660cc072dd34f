"""Which settings a log of a given shape gets where they are left at ``auto`` (``twotower.training.sizing``)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.conftest import compose_train
from twotower.data.batches import BatchPlan
from twotower.data.synthetic import planted_interactions
from twotower.errors import TwoTowerError
from twotower.training.sizing import Sizing
from twotower.training.train import train

# (users, items): the shapes of logs the defaults were measured on, and of two they never saw.
SHAPES = {"ml-1m": (6_039, 3_628), "lastfm": (1_885, 17_388), "citeulike": (5_551, 16_980),
          "amazon-sports": (35_598, 18_357), "amazon-beauty": (52_204, 57_289), "gowalla": (29_858, 40_981)}


@pytest.mark.parametrize(("log", "wide"), [("ml-1m", True), ("lastfm", True), ("citeulike", True),
                                           ("amazon-sports", False), ("amazon-beauty", False), ("gowalla", False)])
def test_the_pairs_an_epoch_scores_decide_the_width(log: str, wide: bool) -> None:
    users, items = SHAPES[log]
    sizing = Sizing.of(users, BatchPlan.users(items, max_candidates=8192, sample_above=32768).scored_per_user(items))
    scored = items if items <= 32768 else 8192  # a catalogue beyond sample_above is sampled
    assert sizing.scored_pairs == users * scored
    assert sizing.dim == (96 if wide else 64)


def test_given_values_are_kept_and_bad_ones_refused(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    sizing = Sizing.of(1_000, 1_000)
    with caplog.at_level(logging.INFO, logger="twotower"):
        assert sizing.resolve(32) == 32
    assert "model.dim" not in caplog.text
    with caplog.at_level(logging.INFO, logger="twotower"):
        assert sizing.resolve("auto") == 96
    assert "model.dim=96" in caplog.text
    planted_interactions(n_users=100, n_items=50, n_clusters=4, seed=1).write_csv(tmp_path / "log.csv")
    with pytest.raises(TwoTowerError, match=r"model\.dim must be auto or an integer >= 1, got 'wide'"):
        train(compose_train(tmp_path / "run", "data=interactions", f"data.path={tmp_path / 'log.csv'}",
                            "model.dim=wide", "show_similar_to=null"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_bad_final_fit_share_is_refused_before_training(tmp_path: Path) -> None:
    planted_interactions(n_users=100, n_items=50, n_clusters=4, seed=1).write_csv(tmp_path / "log.csv")
    with pytest.raises(TwoTowerError, match="final_fit_share must be a number > 0"):
        train(compose_train(tmp_path / "run", "data=interactions", f"data.path={tmp_path / 'log.csv'}",
                            "final_fit_share=0", "show_similar_to=null"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_run_records_what_auto_became(tmp_path: Path) -> None:
    planted_interactions(n_users=100, n_items=50, n_clusters=4, seed=1).write_csv(tmp_path / "log.csv")
    train(compose_train(tmp_path / "run", "data=interactions", f"data.path={tmp_path / 'log.csv'}",
                        "trainer.max_epochs=2", "show_similar_to=null"))
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "dim: 96" in config
