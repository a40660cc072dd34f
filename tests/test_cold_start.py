"""Feature towers on MovieLens-100K: side features carry enough signal to recommend for users the model
has never seen, well above chance, through the run's own retrieval API."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.conftest import compose_train
from twotower.serving.retrieval import Retriever
from twotower.training.train import train


@pytest.mark.slow
def test_new_users_are_served_from_their_features(tmp_path: Path, shared_data: Path) -> None:
    cfg = compose_train(
        tmp_path, "data=movielens", f"data.path={shared_data / 'ml-100k'}", "trainer.max_epochs=4",
        "model.user_tower.features={age: numeric, gender: categorical, occupation: categorical}",
        "model/user_tower=features", "model/item_tower=features", "model.item_tower.features=[genres]",
        "model.dim=32",
    )
    train(cfg)
    retriever = Retriever.load(tmp_path)
    users = retriever.run.user_vocab.frame
    test = pl.read_parquet(tmp_path / "splits" / "test.parquet").group_by("user").agg(pl.col("item"))
    test = test.sort("user").head(300)
    features = users.join(test.select(pl.col("user").alias("index")), on="index", how="semi").sort("index")
    vectors = retriever.embed("user", features.select("age", "gender", "occupation"))
    assert vectors.shape == (features.height, retriever.catalogue.dim)  # as queries: with the prior's coordinate
    found = retriever.search(vectors, k=20)  # as new users: no id vector, nothing excluded
    def recall(results: list) -> float:
        return float(np.mean([
            len(set(retriever.run.item_vocab.lookup(list(ids))) & set(items)) / len(items)
            for (ids, _), items in zip(results, test["item"].to_list(), strict=True)]))
    rng = np.random.default_rng(0)
    random_ids = [retriever.run.item_vocab.decode(rng.choice(len(retriever.run.item_vocab), 20, replace=False))
                  for _ in range(test.height)]
    chance = recall([(ids, None) for ids in random_ids])
    from_features = recall(found)
    assert from_features > 4 * chance, (from_features, chance)
