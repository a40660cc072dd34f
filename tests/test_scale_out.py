"""Multi-process training (DDP on CPU over gloo) and multirun sweeps through the real command line."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from twotower.commands.sweep import summarise
from twotower.data.synthetic import planted_interactions
from twotower.data.user_items import UserItems
from twotower.model.module import TwoTowerModel
from twotower.training.evaluation import evaluate_vectors


def run_train(*overrides: str, multirun: bool = False) -> subprocess.CompletedProcess:
    flags = ["-m"] if multirun else []
    return subprocess.run([sys.executable, "-m", "twotower.commands.train", *flags, "trainer.enable_progress_bar=false",
                           "show_similar_to=null", *overrides], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def log_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "log.parquet"
    planted_interactions(n_users=400, n_items=200, n_clusters=10, seed=4).write_parquet(path)
    return path


def steps_per_epoch(run_dir: Path) -> int:
    metrics = pl.read_csv(run_dir / "logs" / "metrics.csv")
    return int(metrics.filter(pl.col("epoch") == 0)["step"].drop_nulls().max()) + 1


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_shards_batches_and_agrees_on_metrics(tmp_path: Path, log_file: Path) -> None:
    common = ["data=interactions", f"data.path={log_file}", "trainer.max_epochs=2", "datamodule.batch_size=64"]
    single = run_train(*common, f"hydra.run.dir={tmp_path / 'single'}")
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run_train(*common, "trainer=ddp", f"hydra.run.dir={tmp_path / 'ddp'}")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    # Each process takes half of the batches, so an epoch is half as many optimizer steps.
    assert steps_per_epoch(tmp_path / "ddp") == steps_per_epoch(tmp_path / "single") // 2
    ranks = [json.loads((tmp_path / "ddp" / "metrics" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    # The two processes evaluated different users; their synchronised result is the full evaluation of the
    # selected model (the exported one is the final fit, which ran under DDP too and saw the valid split).
    run_dir = tmp_path / "ddp"
    assert json.loads((run_dir / "run.json").read_text())["trained_on"] == ["train", "valid", "test"]
    selected = TwoTowerModel.load_from_checkpoint(run_dir / "checkpoints" / "best.ckpt", map_location="cpu")
    weight = json.loads((run_dir / "run.json").read_text())["chosen"]["model.popularity_prior"]["value"]
    with torch.no_grad():  # ranked with the popularity prior chosen by the two processes together
        users, items = selected.all_user_vectors().numpy(), selected.all_item_vectors().numpy()
        prior = weight * selected.hparams.temperature
        users = np.hstack([users, np.full((len(users), 1), prior, np.float32)])
        items = np.hstack([items, selected.item_prior.numpy()[:, None]])
    train, valid = (pl.read_parquet(run_dir / "splits" / f"{name}.parquet") for name in ("train", "valid"))
    full = evaluate_vectors(users, items, UserItems.from_frame(train, len(users)),
                            UserItems.from_frame(valid, len(users)))
    assert ranks[0]["val/ndcg@20"] == pytest.approx(full["ndcg@20"], abs=1e-5)
    assert ranks[0]["val/recall@10"] == pytest.approx(full["recall@10"], abs=1e-5)


@pytest.mark.slow
def test_parallel_sweep_reports_every_job_and_survives_a_failing_one(tmp_path: Path, log_file: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    result = run_train("hydra/launcher=parallel", "data=interactions", f"data.path={log_file}",
                       "trainer.max_epochs=1", "model.dim=8,16", "sampler.n_negatives=1,0",
                       f"hydra.sweep.dir={sweep_dir}", multirun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    table = summarise(sweep_dir)
    assert table.height == 4
    assert sorted(table["status"].to_list()) == ["failed", "failed", "ok", "ok"]
    failed = table.filter(pl.col("status") == "failed")
    assert set(failed["sampler.n_negatives"]) == {"0"} and failed["error"].str.contains("n_negatives").all()
    assert table.filter(pl.col("status") == "ok")["val/ndcg@20"].is_not_null().all()
    assert (sweep_dir / "summary.png").stat().st_size > 10_000
    assert "| model.dim |" in (sweep_dir / "summary.md").read_text()
