"""Train -> export -> index -> retrieve, through the real configs and command-line entry points."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.conftest import compose_train
from twotower.data.synthetic import planted_interactions
from twotower.errors import TwoTowerError
from twotower.serving.retrieval import Retriever
from twotower.training.evaluation import evaluate_run
from twotower.training.train import train


def split_items(run_dir: Path, *names: str) -> dict[int, set[int]]:
    frame = pl.concat([pl.read_parquet(run_dir / "splits" / f"{name}.parquet") for name in names])
    return {user: set(items) for user, items in frame.group_by("user").agg(pl.col("item")).rows()}


def recall_through_index(retriever: Retriever, run_dir: Path, k: int = 10) -> float:
    """Mean recall@k of each user's test items, searched through the run's index with the user's train and
    valid items left out (retrieval itself leaves out the test items too: the user has them)."""
    test, known = split_items(run_dir, "test"), split_items(run_dir, "train", "valid")
    users = sorted(test)
    exclude = [np.array(sorted(known.get(user, ())), dtype=np.int64) for user in users]
    results = retriever.search(retriever.run.user_vectors[users], k, exclude)
    recalls = [len(set(retriever.run.item_vocab.lookup(list(ids))) & test[user]) / len(test[user])
               for user, (ids, _) in zip(users, results, strict=True)]
    return float(np.mean(recalls))


def test_planted_structure_is_recovered_through_the_index(tmp_path: Path) -> None:
    log = planted_interactions(n_users=600, n_items=300, n_clusters=15, interactions_per_user=20, seed=0)
    log.write_csv(tmp_path / "log.csv")
    run_dir = tmp_path / "run"
    cfg = compose_train(run_dir, "data=interactions", f"data.path={tmp_path / 'log.csv'}",
                        "trainer.max_epochs=15", "datamodule.batch_size=256", "final_fit=false")
    metrics = train(cfg)
    retriever = Retriever.load(run_dir)
    recall = recall_through_index(retriever, run_dir)
    # 20 items per planted group, ~13 of them seen: the held-out ones are among the few unseen group items.
    # Random ranking would give recall@10 of about 10 / 300 = 0.03.
    assert recall >= 0.5, recall
    assert metrics["test/recall@10"] >= 0.5
    exact = Retriever.load(run_dir, index="exact")
    assert recall_through_index(exact, run_dir) == pytest.approx(recall, abs=0.02)
    evaluated = evaluate_run(run_dir)
    assert evaluated["recall@10"] == pytest.approx(metrics["test/recall@10"], abs=1e-6)
    report = json.loads((run_dir / "index" / "report.json").read_text())
    assert report["recall@10_vs_exact"] >= 0.9 and report["seen_filtered"]
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["trained_on"] == ["train"] and manifest["checkpoint"] == manifest["selected_checkpoint"]


def test_final_model_learns_from_every_split_and_is_never_scored_on_them(tmp_path: Path) -> None:
    log = planted_interactions(n_users=300, n_items=200, n_clusters=10, interactions_per_user=15, seed=1)
    log.write_csv(tmp_path / "log.csv")
    run_dir = tmp_path / "run"
    metrics = train(compose_train(run_dir, "data=interactions", f"data.path={tmp_path / 'log.csv'}",
                                  "trainer.max_epochs=4", "datamodule.batch_size=256", "model.dim=16"))
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["trained_on"] == ["train", "valid", "test"]
    assert manifest["checkpoint"] == "checkpoints/final.ckpt" != manifest["selected_checkpoint"]
    # The reported held-out metrics are the selected model's, measured before the final fit saw them.
    assert manifest["metrics_from"]["test"] == {"model": "selected", "trained_on": ["train"]}
    assert 1 <= metrics["final_fit_epochs"] <= 4 and "test/ndcg@20" in manifest["metrics"]
    for holdout in ("test", "valid"):
        with pytest.raises(TwoTowerError, match=rf"trained on the {holdout} split.*metrics/train\.json"):
            evaluate_run(run_dir, holdout=holdout)
    with pytest.raises(TwoTowerError, match=r"every interaction in .* is one the run trained or selected on"):
        evaluate_run(run_dir, path=str(tmp_path / "log.csv"))
    # Seen means seen: nothing a user has anywhere in the log comes back, whichever split it fell into.
    retriever = Retriever.load(run_dir)
    users = log["user_id"].unique().to_list()
    had = {user: set(items) for user, items in log.group_by("user_id").agg("item_id").rows()}
    for user, (ids, _) in zip(users, retriever.recommend(users, k=10), strict=True):
        assert len(ids) == 10 and not set(ids.tolist()) & had[user]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=600)


def test_movielens_100k_trains_indexes_and_retrieves(tmp_path: Path, shared_data: Path) -> None:
    run_dir = tmp_path / "ml100k"
    trained = run_cli("twotower.commands.train", "data=movielens", f"data.path={shared_data / 'ml-100k'}",
                      "trainer.max_epochs=3", "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    for artifact in ("config.yaml", "checkpoints/best.ckpt", "vocab/users.parquet", "vocab/items.parquet",
                     "embeddings/users.parquet", "embeddings/items.parquet", "index/items.ann",
                     "index/meta.json", "run.json"):
        assert (run_dir / artifact).exists(), artifact
    items = pl.read_parquet(run_dir / "embeddings" / "items.parquet")
    assert items.schema == {"id": pl.Int64, "vector": pl.List(pl.Float32)}

    retrieved = run_cli("twotower.commands.retrieve", f"run_dir={run_dir}", "user=196", "k=10", "output=json")
    assert retrieved.returncode == 0, retrieved.stderr
    rows = json.loads(retrieved.stdout)
    assert len(rows) == 10 and {"id", "score", "title"} <= set(rows[0])
    ratings = pl.read_csv(shared_data / "ml-100k" / "u.data", separator="\t", has_header=False,
                          new_columns=["user", "item", "rating", "time"])
    rated = set(ratings.filter(pl.col("user") == 196)["item"])  # a low rating is not a positive, but seen
    seen = set(ratings.filter((pl.col("user") == 196) & (pl.col("rating") >= 4))["item"])
    train_items = pl.read_parquet(run_dir / "splits" / "train.parquet")
    vocab = pl.read_parquet(run_dir / "vocab" / "items.parquet")
    user_index = pl.read_parquet(run_dir / "vocab" / "users.parquet").filter(pl.col("id") == 196)["index"][0]
    trained_items = set(vocab.filter(pl.col("index").is_in(
        train_items.filter(pl.col("user") == user_index)["item"].implode()))["id"])
    assert trained_items <= seen and not rated & {row["id"] for row in rows}  # nothing the user has in the log
    assert [row["score"] for row in rows] == sorted((row["score"] for row in rows), reverse=True)

    similar = run_cli("twotower.commands.retrieve", f"run_dir={run_dir}", 'item="Toy Story (1995)"', "k=5")
    assert similar.returncode == 0 and "similar to 'Toy Story (1995)'" in similar.stdout
    missing = run_cli("twotower.commands.retrieve", f"run_dir={run_dir}", "user=999999")
    assert missing.returncode != 0 and "unknown user id" in missing.stderr and "Traceback" not in missing.stderr


def test_default_main_job_prints_books_similar_to_a_famous_title(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, "trainer.max_epochs=2")
    metrics = train(cfg)
    assert "val/ndcg@20" in metrics
    retriever = Retriever.load(tmp_path)
    assert retriever.run.names == {"user": "link", "item": "book"}
    ids, scores = retriever.similar_items("The Beasts of Tarzan", k=5)
    assert len(ids) == 5 and "The Beasts of Tarzan" not in list(ids)
    assert list(scores) == sorted(scores, reverse=True)


def test_no_user_is_offered_what_their_log_already_has(tmp_path: Path, shared_data: Path) -> None:
    """MovieLens-100K as one plain CSV with the defaults: whichever split an interaction fell into, and
    whatever its rating, the user's recommendations never include it."""
    ratings = pl.read_csv(shared_data / "ml-100k" / "u.data", separator="\t", has_header=False,
                          new_columns=["user_id", "item_id", "rating", "timestamp"])
    ratings.write_csv(tmp_path / "log.csv")
    run_dir = tmp_path / "run"
    train(compose_train(run_dir, "data=interactions", f"data.path={tmp_path / 'log.csv'}", "trainer.max_epochs=1",
                        "data.min_rating=4"))  # low ratings are not positives, but the user has seen them
    retriever = Retriever.load(run_dir)
    users = retriever.run.user_vocab.ids.to_list()
    had = {user: set(items) for user, items in ratings.group_by("user_id").agg("item_id").rows()}
    offered = retriever.recommend(users, k=10)
    assert all(len(ids) == 10 for ids, _ in offered)
    assert sum(len(set(ids.tolist()) & had[user]) for user, (ids, _) in zip(users, offered, strict=True)) == 0
    # The same users through the batch command line path.
    pl.DataFrame({"user_id": users}).write_csv(tmp_path / "users.csv")
    batch = run_cli("twotower.commands.retrieve", f"run_dir={run_dir}", f"users_file={tmp_path / 'users.csv'}", "k=10",
                    "output=csv", f"output_file={tmp_path / 'recs.csv'}")
    assert batch.returncode == 0, batch.stderr[-2000:]
    recs = pl.read_csv(tmp_path / "recs.csv")
    assert recs.height == 10 * len(users)
    assert recs.join(ratings, on=["user_id", "item_id"]).height == 0
