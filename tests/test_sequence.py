"""The sequence user tower: users as the order of what they did.

A planted structure that only order can reveal (item k + 1 follows item k inside runs, runs start anywhere),
causality, a known user as the encoding of their sequence, the same answer for an ordered history through
Python, the command line and HTTP, and the order of a log: from times, from positions, ties by file order.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from tests.conftest import compose_train
from tests.test_serve import Server
from twotower import Retriever
from twotower.data.interactions import with_order
from twotower.data.prepared import prepare
from twotower.data.readers import InteractionFileReader, UserLinesReader
from twotower.data.splits import TemporalSplit
from twotower.errors import TwoTowerError
from twotower.model.towers import SequenceTower
from twotower.training.train import train

N_ITEMS, RUNS, RUN = 500, 12, 4


def runs_log(n_users: int = 400, seed: int = 0) -> pl.DataFrame:
    """Each user walks ``RUNS`` runs of ``RUN`` consecutive items (item k + 1 follows item k), each run starting
    anywhere: the next item follows from the last one, while the set of a user's items points at every run's
    two ends alike."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(n_users):
        starts = rng.choice(N_ITEMS // RUN, RUNS, replace=False) * RUN + rng.integers(0, RUN, RUNS)
        sequence = [(start + step) % N_ITEMS for start in starts for step in range(RUN)]
        if len(set(sequence)) == len(sequence):
            rows += [(user, int(item), position) for position, item in enumerate(sequence)]
    return pl.DataFrame(rows, schema=["user_id", "item_id", "position"], orient="row")


def train_on_runs(folder: Path, *overrides: str) -> dict[str, float]:
    runs_log().write_csv(folder / "runs.csv")
    return train(compose_train(folder / "run", "data=interactions", f"data.path={folder / 'runs.csv'}",
                               "split=temporal", "model.temperature=0.15", "model.dim=32", "show_similar_to=null",
                               *overrides))


@pytest.fixture(scope="module")
def sequence_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    folder = tmp_path_factory.mktemp("sequence")
    metrics = train_on_runs(folder, "model/user_tower=sequence", "trainer.max_epochs=4")
    return folder / "run", metrics


def test_only_an_order_aware_tower_learns_what_comes_next(sequence_run: tuple, tmp_path: Path) -> None:
    _, metrics = sequence_run
    assert metrics["test/recall@10"] > 0.9, metrics  # the run's last item, from everything before it
    history = train_on_runs(tmp_path, "model=history", "trainer.max_epochs=6")
    assert history["test/recall@10"] < 0.3, history  # the same items as a set say little of which is next


def test_no_position_sees_a_later_item() -> None:
    torch.manual_seed(0)
    tower = SequenceTower(n=3, dim=16, n_items=20, max_length=6, blocks=2, heads=2).eval()
    inputs = torch.tensor([[-1, -1, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    changed = inputs.clone()
    changed[:, 4:] = torch.tensor([[9, 10], [11, 12]])
    with torch.no_grad():
        before, after = tower.encode(inputs), tower.encode(changed)
    torch.testing.assert_close(before[:, :4], after[:, :4])  # positions 0-3 never read positions 4-5
    assert not torch.allclose(before[:, 4:], after[:, 4:])


def assert_known_users_encode_their_whole_sequences(run_dir: Path) -> None:
    retriever = Retriever.load(run_dir, index="exact")
    splits = pl.concat([retriever.run.split(name) for name in ("train", "valid", "test")]).sort("user", "order")
    users = [0, 7, 41]
    histories = [splits.filter(pl.col("user") == user)["item"].to_numpy() for user in users]
    np.testing.assert_allclose(retriever.history_queries(histories), retriever.run.user_vectors[users], atol=1e-5)


def test_a_known_user_is_the_encoding_of_their_sequence(sequence_run: tuple) -> None:
    assert_known_users_encode_their_whole_sequences(sequence_run[0])


def test_without_a_final_fit_a_known_user_is_still_the_encoding_of_their_whole_sequence(tmp_path: Path) -> None:
    """The selected model trained on each user's train split; its test pass encoded the valid item too, and so
    does the export, from every interaction given."""
    train_on_runs(tmp_path, "model/user_tower=sequence", "trainer.max_epochs=1", "final_fit=false", "test=false")
    assert_known_users_encode_their_whole_sequences(tmp_path / "run")


def test_a_sequence_tower_trains_from_a_prepared_log_and_encodes_each_whole_sequence(tmp_path: Path) -> None:
    """``twotower-prepare`` keeps each user's order in the shards (split=temporal), so ``data=prepared`` trains
    the sequence tower as the log itself does; without a final fit, the export reads every split's shards."""
    runs_log().write_csv(tmp_path / "runs.csv")
    prepare(InteractionFileReader(str(tmp_path / "runs.csv")), TemporalSplit(), tmp_path / "prepared", shards=3)
    metrics = train(compose_train(tmp_path / "run", "data=prepared", f"data.path={tmp_path / 'prepared'}",
                                  "model.temperature=0.15", "model.dim=32", "show_similar_to=null",
                                  "model/user_tower=sequence", "trainer.max_epochs=4", "final_fit=false"))
    assert metrics["test/recall@10"] > 0.9, metrics
    assert_known_users_encode_their_whole_sequences(tmp_path / "run")


def test_an_ordered_history_answers_alike_in_python_cli_and_http(sequence_run: tuple, tmp_path: Path) -> None:
    run_dir, _ = sequence_run
    retriever = Retriever.load(run_dir)
    history = [120, 121, 122]  # a run: 123 comes next
    ids, _ = retriever.recommend_from_history(history, k=5)
    assert ids[0] == 123
    assert retriever.recommend_from_history(history[::-1], k=5)[0][0] != 123  # order, not the set, decides
    command = subprocess.run([sys.executable, "-m", "twotower.commands.retrieve", f"run_dir={run_dir}",
                              "history=[120,121,122]", "k=5", "output=json"], capture_output=True, text=True,
                             timeout=300)
    assert command.returncode == 0, command.stderr
    assert [row["id"] for row in json.loads(command.stdout)] == ids.tolist()
    server = Server(run_dir, tmp_path / "serve.log", token=None)
    try:
        server.wait_ready()
        answer = server.client.post("/recommend_from_history", json={"histories": [history], "k": 5})
        assert [row["id"] for row in answer.json()["results"][0]] == ids.tolist()
    finally:
        server.stop()


def test_order_comes_from_times_then_positions_then_the_file() -> None:
    frame = pl.DataFrame({"user_id": [1, 1, 1, 2], "item_id": [5, 6, 7, 8], "timestamp": [30, 10, 10, 5]})
    assert with_order(frame, "log", "split=temporal")["order"].to_list() == [3, 1, 2, 0]  # a tie keeps file order
    positions = pl.DataFrame({"user_id": [1, 1], "item_id": [5, 6], "position": [1, 0]})
    assert with_order(positions, "log", "split=temporal")["order"].to_list() == [1, 0]


def test_user_lines_are_sequences_in_file_order(tmp_path: Path) -> None:
    (tmp_path / "lines.txt").write_text("1 30 10 20\n2 5\n")
    frame = UserLinesReader(str(tmp_path / "lines.txt")).read().interactions
    assert frame.filter(pl.col("user_id") == 1).sort("position")["item_id"].to_list() == [30, 10, 20]


def test_a_log_without_order_is_refused_in_one_line_and_single_items_are_counted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    runs_log().drop("position").write_csv(tmp_path / "plain.csv")
    for tower in ("model/user_tower=sequence", "model/user_tower=history"):
        overrides = [tower] if tower.endswith("sequence") else [tower, "split=temporal"]
        with pytest.raises(TwoTowerError, match=r"needs the order of each user's interactions.*data\.timestamp_col"):
            train(compose_train(tmp_path / "run", "data=interactions", f"data.path={tmp_path / 'plain.csv'}",
                                *overrides))
    single = pl.concat([runs_log(n_users=40), pl.DataFrame({"user_id": [1000], "item_id": [3], "position": [0]})])
    single.write_csv(tmp_path / "single.csv")
    with caplog.at_level(logging.INFO):
        train(compose_train(tmp_path / "single", "data=interactions", f"data.path={tmp_path / 'single.csv'}",
                            "split=temporal", "model/user_tower=sequence", "trainer.max_epochs=1",
                            "show_similar_to=null"))
    assert "1 user(s) with a single interaction stay in train only" in caplog.text
