"""Train -> export -> index -> retrieve, through the real configs and command-line entry points."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.conftest import compose_train
from twotower.eval import evaluate_run
from twotower.retrieval import Retriever
from twotower.synthetic import planted_interactions
from twotower.train import train


def recall_through_index(retriever: Retriever, run_dir: Path, k: int = 10) -> float:
    """Mean recall@k of each user's test items, retrieved through the run's index with seen items removed."""
    test = pl.read_parquet(run_dir / "splits" / "test.parquet")
    valid = pl.read_parquet(run_dir / "splits" / "valid.parquet")
    per_user = test.group_by("user").agg(pl.col("item")).sort("user")
    valid_items = dict(valid.group_by("user").agg(pl.col("item")).rows())
    users = retriever.user_vocab.decode(per_user["user"].to_numpy())
    results = retriever.recommend(list(users), k=k + 5)
    recalls = []
    for (user, targets), (ids, _) in zip(per_user.rows(), results, strict=True):
        found = retriever.item_vocab.lookup(list(ids))
        found = [i for i in found if i not in set(valid_items.get(user, []))][:k]  # valid items are not seen
        recalls.append(len(set(found) & set(targets)) / len(targets))
    return float(np.mean(recalls))


def test_planted_structure_is_recovered_through_the_index(tmp_path: Path) -> None:
    log = planted_interactions(n_users=600, n_items=300, n_clusters=15, interactions_per_user=20, seed=0)
    log.write_csv(tmp_path / "log.csv")
    run_dir = tmp_path / "run"
    cfg = compose_train(run_dir, "data=interactions", f"data.path={tmp_path / 'log.csv'}",
                        "trainer.max_epochs=15", "datamodule.batch_size=256")
    metrics = train(cfg)
    retriever = Retriever.load(run_dir)
    recall = recall_through_index(retriever, run_dir)
    # 20 items per planted group, ~13 of them seen: the held-out ones are among the few unseen group items.
    # Random ranking would give recall@10 of about 10 / 300 = 0.03.
    assert recall >= 0.5, recall
    assert metrics["test/recall@10"] >= 0.5
    exact = Retriever.load(run_dir, backend="exact")
    assert recall_through_index(exact, run_dir) == pytest.approx(recall, abs=0.02)
    evaluated = evaluate_run(run_dir)
    assert evaluated["recall@10"] == pytest.approx(metrics["test/recall@10"], abs=1e-6)
    report = json.loads((run_dir / "index" / "report.json").read_text())
    assert report["recall@10_vs_exact"] >= 0.9


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=600)


def test_movielens_100k_trains_indexes_and_retrieves(tmp_path: Path, shared_data: Path) -> None:
    run_dir = tmp_path / "ml100k"
    trained = run_cli("twotower.train", "data=movielens", f"data.path={shared_data / 'ml-100k'}",
                      "trainer.max_epochs=3", "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    for artifact in ("config.yaml", "checkpoints/best.ckpt", "vocab/users.parquet", "vocab/items.parquet",
                     "embeddings/users.parquet", "embeddings/items.parquet", "index/items.ann",
                     "index/meta.json", "run.json"):
        assert (run_dir / artifact).exists(), artifact
    items = pl.read_parquet(run_dir / "embeddings" / "items.parquet")
    assert items.schema == {"id": pl.Int64, "vector": pl.List(pl.Float32)}

    retrieved = run_cli("twotower.retrieve", f"run_dir={run_dir}", "user=196", "k=10", "output=json")
    assert retrieved.returncode == 0, retrieved.stderr
    rows = json.loads(retrieved.stdout)
    assert len(rows) == 10 and {"id", "score", "title"} <= set(rows[0])
    ratings = pl.read_csv(shared_data / "ml-100k" / "u.data", separator="\t", has_header=False,
                          new_columns=["user", "item", "rating", "time"])
    seen = set(ratings.filter((pl.col("user") == 196) & (pl.col("rating") >= 4))["item"])
    train_items = pl.read_parquet(run_dir / "splits" / "train.parquet")
    vocab = pl.read_parquet(run_dir / "vocab" / "items.parquet")
    user_index = pl.read_parquet(run_dir / "vocab" / "users.parquet").filter(pl.col("id") == 196)["index"][0]
    trained_items = set(vocab.filter(pl.col("index").is_in(
        train_items.filter(pl.col("user") == user_index)["item"].implode()))["id"])
    assert trained_items <= seen and not trained_items & {row["id"] for row in rows}
    assert [row["score"] for row in rows] == sorted((row["score"] for row in rows), reverse=True)

    similar = run_cli("twotower.retrieve", f"run_dir={run_dir}", 'item="Toy Story (1995)"', "k=5")
    assert similar.returncode == 0 and "similar to 'Toy Story (1995)'" in similar.stdout
    missing = run_cli("twotower.retrieve", f"run_dir={run_dir}", "user=999999")
    assert missing.returncode != 0 and "unknown user id" in missing.stderr and "Traceback" not in missing.stderr


def test_default_main_job_prints_books_similar_to_a_famous_title(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, "trainer.max_epochs=2")
    metrics = train(cfg)
    assert "val/ndcg@20" in metrics
    retriever = Retriever.load(tmp_path)
    assert retriever.names == {"user": "link", "item": "book"}
    ids, scores = retriever.similar_items("The Beasts of Tarzan", k=5)
    assert len(ids) == 5 and "The Beasts of Tarzan" not in list(ids)
    assert list(scores) == sorted(scores, reverse=True)
