"""Items added to and removed from a loaded run through the Python API, without rebuilding its index: added
items merge with the index's hits by exact score, removed ones are never returned, bad input is refused."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.conftest import train_feature_run
from twotower.errors import TwoTowerError
from twotower.index import AnnoyIndex
from twotower.retrieval import Retriever
from twotower.synthetic import write_vector_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12,000 titled items: beyond the default search budget, so searches go through the Annoy trees."""
    return write_vector_run(tmp_path_factory.mktemp("live") / "run", AnnoyIndex(), n_users=40, n_items=12_000,
                            titles=True)


@pytest.fixture
def retriever(run_dir: Path) -> Retriever:
    loaded = Retriever.load(run_dir)
    assert not loaded.index.searches_exactly(20)  # k=10 with up to 10 seen items
    return loaded


def user_vector(retriever: Retriever, user: str) -> np.ndarray:
    return retriever.user_vectors[retriever.user_vocab.lookup([user])[0]]


def test_added_items_merge_with_the_index_by_exact_score(retriever: Retriever) -> None:
    query = user_vector(retriever, "u1")
    before, before_scores = retriever.recommend("u1", k=10)
    # Two items where the user points (one at another length: a cosine run keeps unit vectors), one opposite.
    retriever.add_items([1, 3, 8], [4 * query, query, -query], titles=["Best", None, "Worst"])
    ids, scores = retriever.recommend("u1", k=10)
    assert ids[0] == 1 and scores[0] == pytest.approx(1.0, abs=1e-5)
    assert 8 not in ids and list(scores) == sorted(scores, reverse=True)
    unit = retriever.live.vectors[retriever.live.rows([1, 3, 8]) - retriever.live.base]
    assert np.allclose(np.linalg.norm(unit, axis=1), 1.0)
    assert set(before[:7]) <= set(ids)  # the index's hits are still there, only pushed down
    assert retriever.describe_items([1, 8, before[0]]) == ["Best", "Worst", f"Item {before[0]}"]
    # Batches and single queries agree, and similar_items reaches added items both ways.
    batch = retriever.recommend(["u1", "u2"], k=10)
    assert batch[0][0].tolist() == ids.tolist()
    neighbours, _ = retriever.similar_items("Best", k=3)
    assert 1 not in neighbours and 3 in neighbours  # not itself; its twin first
    assert retriever.similar_items(before[0], k=5, allow=[8, 3, 1])[0].tolist() == [1, 3, 8]
    allowed, allowed_scores = retriever.recommend("u1", k=3, allow=[8, before[3], 1])
    assert allowed.tolist() == [1, before[3], 8] and allowed_scores[1] == pytest.approx(before_scores[3])


def test_removed_items_are_never_returned(retriever: Retriever) -> None:
    top, _ = retriever.recommend("u2", k=5)
    retriever.add_items([2], [user_vector(retriever, "u2")])
    retriever.remove_items([top[0], top[1], 2])
    retriever.remove_items([top[0]])  # twice: harmless
    ids, _ = retriever.recommend("u2", k=30)
    assert len(ids) == 30 and not {top[0], top[1], 2} & set(ids.tolist()) and set(top[2:]) <= set(ids.tolist())
    assert not {top[0], top[1]} & set(retriever.recommend("stranger", k=12_000, unknown="popular")[0].tolist())
    assert top[0] not in retriever.similar_items(top[2], k=50)[0]
    assert top[0] not in retriever.recommend("u2", k=5, allow=[top[0], top[3]])[0]
    with pytest.raises(TwoTowerError, match="was removed"):
        retriever.similar_items(top[0])
    retriever.add_items([top[0]], [-user_vector(retriever, "u2")])  # a removed id can come back, new vector
    assert retriever.live.n_added == 1 and retriever.live.n_removed == 2
    assert retriever.similar_items(top[0], k=1)[0].size == 1


@pytest.mark.parametrize(("ids", "vectors", "message"), [
    ([5], np.ones((1, 8)), "dimension 16"),
    ([5, 6], np.ones((1, 16)), "expected 2 new item vector"),
    ([5], np.zeros((1, 16)), "zero vector"),
    ([5], np.full((1, 16), np.nan), "finite"),
    ([5], [["a"] * 16], "numbers"),
    (["five"], np.ones((1, 16)), "ids must be whole numbers, as this run.s are"),
    ([5, 5], np.ones((2, 16)), "repeat"),
    ([7], np.ones((1, 16)), r"\[7\] are in the catalogue already"),
    ([], np.ones((0, 16)), "no new items"),
])
def test_bad_new_items_are_refused_and_change_nothing(retriever: Retriever, ids: list, vectors: object,
                                                      message: str) -> None:
    with pytest.raises(TwoTowerError, match=message):
        retriever.add_items(ids, vectors)
    assert retriever.live.n_added == 0


def test_bad_calls_name_the_problem(retriever: Retriever) -> None:
    with pytest.raises(TwoTowerError, match="vectors or their features"):
        retriever.add_items([5])
    with pytest.raises(TwoTowerError, match="no checkpoint"):
        retriever.add_items([5], features=pl.DataFrame({"genre": ["a"]}))
    with pytest.raises(TwoTowerError, match=r"unknown item id\(s\) \[5\]"):
        retriever.remove_items([5])


def test_searches_stay_whole_while_items_change(retriever: Retriever) -> None:
    """Writers replace the buffer, readers keep the one they took: no search sees half a change."""
    failures: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                for ids, _ in retriever.recommend(["u1", "u5", "u9"], k=10):
                    assert len(ids) == 10 and len(set(ids.tolist())) == 10
            except Exception as error:  # reported by the main thread below
                failures.append(error)
                return

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    rng = np.random.default_rng(0)
    for new_id in range(2, 200, 7):  # 2, 9, 16 ...: not multiples of 7, so not the run's ids
        retriever.add_items([new_id], rng.normal(size=(1, 16)))
        retriever.remove_items([new_id])
    done.set()
    for reader in readers:
        reader.join()
    assert not failures, failures[0]


def test_items_embedded_by_a_feature_tower(tmp_path: Path) -> None:
    """New items with features alone get the vector the trained item tower gives them, then are served."""
    retriever = Retriever.load(train_feature_run(tmp_path))
    features = pl.DataFrame({"genre": ["g1", "g2"]})
    retriever.add_items([1000, 1001], features=features, titles=["new g1", "new g2"])
    expected = retriever.embed("item", features)
    added = retriever.live.vectors_for(retriever.item_vectors, retriever.live.rows([1000, 1001]))
    assert np.allclose(added, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-6)
    ids, scores = retriever.search(expected[:1], k=1)[0]
    assert ids.tolist() == [1000] and scores[0] == pytest.approx(1.0, abs=1e-5)
