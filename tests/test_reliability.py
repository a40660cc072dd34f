"""Interrupted runs and concurrent readers: nothing is lost, nothing half-written is ever loaded."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from omegaconf import DictConfig

from tests.conftest import compose_train
from twotower.data.synthetic import planted_interactions
from twotower.errors import TwoTowerError
from twotower.files import atomic_path, write_json
from twotower.serving.retrieval import Retriever
from twotower.training.evaluation import evaluate_run
from twotower.training.train import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def log_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("log") / "log.parquet"
    planted_interactions(n_users=500, n_items=150, n_clusters=10, interactions_per_user=16, seed=6).write_parquet(path)
    return path


def cli(run_dir: Path, log_file: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "twotower.commands.train", "data=interactions", f"data.path={log_file}",
         f"hydra.run.dir={run_dir}", "trainer.max_epochs=4", "datamodule.batch_size=128", "model.dim=16",
         "trainer.enable_progress_bar=false", "show_similar_to=null", *overrides],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_atomic_writes_keep_the_previous_file_when_interrupted(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    write_json({"version": 1}, target)
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text('{"version": 2, "trunc')
        raise RuntimeError("killed while writing")
    assert json.loads(target.read_text()) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_same_seed_same_data_same_metrics(tmp_path: Path, log_file: Path) -> None:
    runs = [train(compose_train(tmp_path / name, "data=interactions", f"data.path={log_file}",
                                "trainer.max_epochs=2", "model.dim=16", "datamodule.batch_size=128"))
            for name in ("first", "second")]
    assert runs[0] == runs[1]
    other = train(compose_train(tmp_path / "third", "data=interactions", f"data.path={log_file}",
                                "trainer.max_epochs=2", "model.dim=16", "datamodule.batch_size=128", "seed=1"))
    assert other != runs[0]


@pytest.mark.slow
def test_killed_mid_epoch_and_resumed_finishes_like_an_uninterrupted_run(tmp_path: Path, log_file: Path) -> None:
    straight = cli(tmp_path / "straight", log_file)
    assert straight.wait(timeout=600) == 0, straight.stderr.read()[-2000:]
    finished = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    steps_per_epoch = finished["global_step"] // 4

    middle_of_third_epoch = steps_per_epoch * 2 + steps_per_epoch // 2
    killer = f"+callbacks.kill._target_=tests.conftest.KillAtStep +callbacks.kill.step={middle_of_third_epoch}"
    crashed = cli(tmp_path / "resumed", log_file, *killer.split())
    assert crashed.wait(timeout=600) == -signal.SIGKILL
    last = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 1  # the last complete epoch before the crash in the third one
    assert not (tmp_path / "resumed" / "run.json").exists()

    resumed = cli(tmp_path / "resumed", log_file, "ckpt_path=last")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-2000:]
    straight_metrics, resumed_metrics = (json.loads((tmp_path / name / "metrics" / "train.json").read_text())
                                         for name in ("straight", "resumed"))
    assert straight_metrics == resumed_metrics


@pytest.mark.slow
def test_a_run_killed_at_any_moment_leaves_only_complete_artifacts(tmp_path: Path, log_file: Path) -> None:
    for attempt, delay in enumerate((2.0, 5.0, 7.0, 9.0, 11.0)):
        run_dir = tmp_path / f"run{attempt}"
        process = cli(run_dir, log_file, "trainer.max_epochs=2")
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        for path in run_dir.rglob("*"):
            if path.name.endswith(".tmp") or not path.is_file():
                continue  # temporary names are never read by anything
            if path.suffix == ".parquet":
                pl.read_parquet(path)
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".ckpt":
                torch.load(path, map_location="cpu", weights_only=False)
        if (run_dir / "run.json").exists():
            Retriever.load(run_dir).recommend(0, k=3)
        else:
            with pytest.raises(TwoTowerError, match=r"not a finished run|not found"):
                Retriever.load(run_dir)


def test_many_threads_share_one_retriever(tmp_path: Path, log_file: Path) -> None:
    train(compose_train(tmp_path, "data=interactions", f"data.path={log_file}", "trainer.max_epochs=1",
                        "model.dim=16"))
    retriever = Retriever.load(tmp_path)
    users = retriever.run.user_vocab.ids.to_list()[:200]
    items = retriever.run.item_vocab.ids.to_list()[:100]
    expected_users = {u: retriever.recommend(u, k=10) for u in users}
    expected_items = {i: retriever.similar_items(i, k=10) for i in items}
    queries = [("user", u) for u in users] * 4 + [("item", i) for i in items] * 4
    np.random.default_rng(0).shuffle(queries)
    mismatches = []
    lock = threading.Lock()

    def ask(query: tuple[str, object]) -> None:
        kind, key = query
        ids, scores = retriever.recommend(key, k=10) if kind == "user" else retriever.similar_items(key, k=10)
        want = expected_users[key] if kind == "user" else expected_items[key]
        if list(ids) != list(want[0]) or not np.array_equal(scores, want[1]):
            with lock:
                mismatches.append(query)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(ask, queries, timeout=120))
    assert not mismatches
    assert time.perf_counter() - started < 120


def test_a_failed_rerun_leaves_the_finished_run_and_a_good_one_replaces_it(tmp_path: Path, log_file: Path) -> None:
    def overrides(*extra: str) -> DictConfig:
        return compose_train(tmp_path / "run", "data=interactions", f"data.path={log_file}", "trainer.max_epochs=2",
                             "model.dim=16", "datamodule.batch_size=128", "show_similar_to=null", *extra)

    train(overrides())
    before = {path: path.read_bytes() for path in (tmp_path / "run").rglob("*")
              if path.is_file() and ".hydra" not in path.parts and path.name != ".lock"}
    answer = Retriever.load(tmp_path / "run").recommend(0, k=5)
    with pytest.raises(RuntimeError, match="failed on cue"):
        train(overrides("seed=1", "+callbacks.boom._target_=tests.conftest.RaiseAtStep", "+callbacks.boom.step=3"))
    assert {path: path.read_bytes() for path in before} == before  # every file of the finished run as it was
    assert "error: RuntimeError: failed on cue" in (tmp_path / "run" / ".staging" / "train.log").read_text()
    kept = Retriever.load(tmp_path / "run").recommend(0, k=5)
    assert list(kept[0]) == list(answer[0])

    train(overrides("seed=1"))
    assert not (tmp_path / "run" / ".staging").exists()
    log = (tmp_path / "run" / "train.log").read_text()  # the first run's attempt, then the good re-run's
    assert log.startswith(before[tmp_path / "run" / "train.log"].decode()) and log.count("\n===== ") == 1
    assert "holds a finished run: this one replaces it" in log and log.count("Run finished:") == 2
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["fingerprints"] != json.loads(before[tmp_path / "run" / "run.json"])["fingerprints"]
    assert not [path for path in (tmp_path / "run").iterdir() if path.name.startswith(".retired")]
    Retriever.load(tmp_path / "run").recommend(0, k=5)


def test_eval_reads_a_later_log_by_the_run_s_rating_threshold(tmp_path: Path) -> None:
    ratings = planted_interactions(n_users=120, n_items=60, n_clusters=4, interactions_per_user=12, seed=2)
    ratings = ratings.with_columns(rating=pl.Series(np.random.default_rng(0).integers(1, 6, ratings.height)))
    ratings.write_csv(tmp_path / "log.csv")
    train(compose_train(tmp_path / "run", "data=interactions", f"data.path={tmp_path / 'log.csv'}",
                        "data.min_rating=4", "trainer.max_epochs=1", "model.dim=8", "show_similar_to=null"))
    later = planted_interactions(n_users=120, n_items=60, n_clusters=4, interactions_per_user=12, seed=9)
    later = later.with_columns(rating=pl.Series(np.random.default_rng(1).integers(1, 6, later.height)))
    later.write_csv(tmp_path / "later.csv")
    later.filter(pl.col("rating") >= 4).drop("rating").write_csv(tmp_path / "later-positives.csv")
    assert evaluate_run(tmp_path / "run", path=str(tmp_path / "later.csv")) == \
        evaluate_run(tmp_path / "run", path=str(tmp_path / "later-positives.csv"))
