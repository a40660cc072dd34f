"""The retrieval API on a small trained run: exclusion, allow/deny lists, fallbacks, batches, errors."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.conftest import compose_train
from twotower.data.synthetic import planted_interactions
from twotower.errors import TwoTowerError
from twotower.serving.retrieval import Retriever
from twotower.training.train import train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("retrieval")
    planted_interactions(n_users=200, n_items=120, n_clusters=6, seed=3).write_csv(folder / "log.csv")
    cfg = compose_train(folder / "run", "data=interactions", f"data.path={folder / 'log.csv'}",
                        "trainer.max_epochs=3", "datamodule.batch_size=256", "model.dim=16")
    train(cfg)
    return folder / "run"


@pytest.fixture(scope="module")
def retriever(run_dir: Path) -> Retriever:
    return Retriever.load(run_dir)


def seen_items(retriever: Retriever, user: int) -> set:
    row = retriever.run.user_vocab.lookup([user])[0]
    start, end = retriever.run.seen.indptr[row], retriever.run.seen.indptr[row + 1]
    return set(retriever.run.item_vocab.decode(retriever.run.seen.items[start:end]))


def test_recommend_excludes_seen_items_and_returns_k(retriever: Retriever) -> None:
    ids, scores = retriever.recommend(0, k=15)
    assert len(ids) == 15 and len(set(ids)) == 15
    assert not set(ids) & seen_items(retriever, 0)
    assert list(scores) == sorted(scores, reverse=True)
    with_seen, _ = retriever.recommend(0, k=15, exclude_seen=False)
    assert set(with_seen) & seen_items(retriever, 0)  # the model ranks the user's own items high


def test_batch_matches_single_queries(retriever: Retriever) -> None:
    users = [5, 0, 7]
    batch = retriever.recommend(users, k=5)
    for user, (ids, scores) in zip(users, batch, strict=True):
        single_ids, single_scores = retriever.recommend(user, k=5)
        assert list(ids) == list(single_ids)
        assert np.allclose(scores, single_scores)


def test_allow_and_deny_lists(retriever: Retriever) -> None:
    top, _ = retriever.recommend(1, k=5)
    denied, _ = retriever.recommend(1, k=5, deny=top[:2])
    assert not set(denied) & set(top[:2]) and len(denied) == 5
    allowed_pool = [i for i in retriever.run.item_vocab.ids.to_list() if i not in seen_items(retriever, 1)][:7]
    allowed, _ = retriever.recommend(1, k=5, allow=allowed_pool)
    assert set(allowed) <= set(allowed_pool) and len(allowed) == 5


def test_unknown_ids_error_or_fall_back_to_popular(retriever: Retriever) -> None:
    with pytest.raises(TwoTowerError, match=r"unknown user id\(s\) \[99999\]"):
        retriever.recommend([0, 99999], k=3)
    fallback = retriever.recommend(99999, k=3, unknown="popular")
    assert fallback.fallback == "popular" and list(fallback.ids) == list(retriever.popular(3).ids)
    log = pl.concat([retriever.run.split(name) for name in ("train", "valid", "test")])
    counts = log["item"].value_counts(sort=True)
    assert retriever.run.item_vocab.lookup([fallback.ids[0]])[0] == counts["item"][0]
    # a fallback's score is the item's share of the log's interactions, not a model score
    assert fallback.scores[0] == pytest.approx(counts["count"][0] / log.height)


def test_bad_k_and_similar_items(retriever: Retriever) -> None:
    for k in (0, -3, 2.5):
        with pytest.raises(TwoTowerError, match="k must be a positive integer"):
            retriever.recommend(0, k=k)
    ids, scores = retriever.similar_items(3, k=4)
    assert 3 not in list(ids) and len(ids) == 4 and list(scores) == sorted(scores, reverse=True)
    neighbours, _ = retriever.similar_users(0, k=3)
    assert 0 not in list(neighbours) and len(neighbours) == 3


def test_any_k_and_mixed_id_types_are_answered(retriever: Retriever) -> None:
    everything, _ = retriever.recommend(0, k=2**63 - 1)
    assert len(everything) == len(retriever.run.item_vocab) - len(seen_items(retriever, 0))
    mixed = retriever.recommend(["1", 2, 3.0], k=4)
    plain = retriever.recommend([1, 2, 3], k=4)
    for (ids, scores), (same_ids, same_scores) in zip(mixed, plain, strict=True):
        assert list(ids) == list(same_ids) and np.allclose(scores, same_scores)
    with pytest.raises(TwoTowerError, match=r"unknown user id\(s\) \['001'\]"):
        retriever.recommend(["001"], k=3)
    for missing in (None, ""):
        with pytest.raises(TwoTowerError, match="run_dir must be a path"):
            Retriever.load(missing)
