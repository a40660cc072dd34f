"""Items added to and removed from a loaded run through the Python API, without rebuilding its index: added
items merge with the index's hits by exact score, removed ones are never returned, bad input is refused.
Saved into the run directory, the changes load again, and a rebuild folds the added items into the index."""

from __future__ import annotations

import json
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.conftest import train_feature_run
from twotower.commands import reindex
from twotower.errors import TwoTowerError
from twotower.index import AnnoyIndex, read_meta
from twotower.serving.catalogue import Result, rebuild_index
from twotower.serving.retrieval import Retriever
from twotower.training.vector_run import write_vector_run

N_ITEMS = 12_000


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12,000 titled items: beyond the default search budget, so searches go through the Annoy trees."""
    return write_vector_run(tmp_path_factory.mktemp("live") / "run", AnnoyIndex(), n_users=40, n_items=N_ITEMS,
                            titles=True)


@pytest.fixture
def retriever(run_dir: Path) -> Retriever:
    loaded = Retriever.load(run_dir)
    assert not loaded.catalogue.index.searches_exactly(20)  # k=10 with up to 10 seen items
    return loaded


@pytest.fixture
def own_run(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the run, for tests that save into it."""
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def user_vector(retriever: Retriever, user: str) -> np.ndarray:
    return retriever.run.user_vectors[retriever.run.user_vocab.lookup([user])[0]]


def assert_same(found: list[Result], expected: list[Result]) -> None:
    assert len(found) == len(expected)
    for (ids, scores), (expected_ids, expected_scores) in zip(found, expected, strict=True):
        assert ids.tolist() == expected_ids.tolist()
        assert np.allclose(scores, expected_scores, atol=1e-5)


def add_near_users(retriever: Retriever, ids: list[int], seed: int) -> None:
    """Items close to random users, so that they reach those users' top 10."""
    rng = np.random.default_rng(seed)
    near = retriever.run.user_vectors[rng.integers(len(retriever.run.user_vocab), size=len(ids))]
    retriever.add_items(ids, near + 0.05 * rng.normal(size=near.shape))


def fold_with_the_command(run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> dict:
    """``twotower-index run_dir=RUN``, in process; its report as printed."""
    monkeypatch.setattr(sys, "argv", ["twotower-index", f"run_dir={run}"])
    reindex.main()
    return json.loads(capsys.readouterr().out)


def test_added_items_merge_with_the_index_by_exact_score(retriever: Retriever) -> None:
    query = user_vector(retriever, "u1")
    before, before_scores = retriever.recommend("u1", k=10)
    # Two items where the user points (one at another length: a cosine run keeps unit vectors), one opposite.
    retriever.add_items([1, 3, 8], [4 * query, query, -query], titles=["Best", None, "Worst"])
    ids, scores = retriever.recommend("u1", k=10)
    assert ids[0] == 1 and scores[0] == pytest.approx(1.0, abs=1e-5)
    assert 8 not in ids and list(scores) == sorted(scores, reverse=True)
    unit = retriever.catalogue.vectors_of(retriever.catalogue.rows([1, 3, 8]))
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
    assert retriever.catalogue.n_added == 1 and retriever.catalogue.n_removed == 2
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
    assert retriever.catalogue.n_added == 0


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
    expected = retriever.embed("item", features)  # unit parts, as the run's item vectors are
    added = retriever.catalogue.vectors_of(retriever.catalogue.rows([1000, 1001]))
    width = retriever.catalogue.model_dim  # the towers' space; a prior's coordinate, where the run has one, is 0
    assert np.allclose(added[:, :width], expected, atol=1e-6) and not added[:, width:].any()
    ids, scores = retriever.search(added[:1], k=1)[0]
    assert ids.tolist() == [1000] and scores[0] == pytest.approx(1.0, abs=1e-5)  # its cosine with itself


def test_saved_changes_load_again(own_run: Path) -> None:
    untouched = Retriever.load(own_run)  # loaded before anything was saved: its buffer stays empty
    retriever = Retriever.load(own_run)
    users = retriever.run.user_vocab.ids.to_list()
    query = user_vector(retriever, "u1")
    top, _ = retriever.recommend("u1", k=3)
    retriever.add_items([1, 3, 8], [query, -query, -query], titles=["Best", None, "Worst"])
    retriever.remove_items([3, top[0], top[1]])
    # Removed ids come back as new rows: 3 (an added one) near the user, top[1] (the run's) opposite it.
    retriever.add_items([3, top[1]], [query + 0.3 * user_vector(retriever, "u2"), -query], titles=["Again", None])
    expected = retriever.recommend(users, k=10)
    similar = retriever.similar_items(["Best", "Again"], k=5)
    assert retriever.save_catalogue() == {"added_items": 4, "removed_items": 2, "saved_rows": 5, "indexed_rows": 0}
    vouched = json.loads((own_run / "run.json").read_text())["fingerprints"]
    assert {"catalogue/added.parquet", "catalogue/removed.parquet"} <= set(vouched)

    again = Retriever.load(own_run)
    assert_same(again.recommend(users, k=10), expected)
    assert_same(again.similar_items(["Best", "Again"], k=5), similar)
    assert (again.catalogue.n_added, again.catalogue.n_removed) == (4, 2)
    assert again.recommend("u1", k=2)[0].tolist() == [1, 3]
    assert again.describe_items([1, 3, 8]) == ["Best", "Again", "Worst"]
    answered = {item for ids, _ in again.recommend(users, k=50) for item in ids.tolist()}
    assert top[0] not in answered and 8 not in answered
    with pytest.raises(TwoTowerError, match="was removed"):
        again.similar_items(top[0])

    # An empty buffer saved takes the files and their fingerprints away: the run is as exported again.
    assert untouched.save_catalogue()["saved_rows"] == 0
    assert not (own_run / "catalogue" / "added.parquet").exists()
    assert not any(name.startswith("catalogue/") for name in json.loads((own_run / "run.json").read_text())[
        "fingerprints"])
    assert Retriever.load(own_run).catalogue.n_added == 0


def test_a_changed_catalogue_is_refused(own_run: Path) -> None:
    retriever = Retriever.load(own_run)
    add_near_users(retriever, [1, 3, 5], seed=1)
    retriever.save_catalogue()
    added = own_run / "catalogue" / "added.parquet"
    frame = pl.read_parquet(added)
    frame.with_columns(pl.col("vector").reverse()).write_parquet(added)  # other vectors, same ids and shape
    for load in (Retriever.load, lambda run: rebuild_index(run, AnnoyIndex())):
        with pytest.raises(TwoTowerError, match=r"added\.parquet does not match this run"):
            load(own_run)
    # A run directory trained again since the retriever loaded it does not get the old model's items.
    manifest = json.loads((own_run / "run.json").read_text())
    manifest["fingerprints"]["embeddings/items.parquet"] = "0" * 16
    (own_run / "run.json").write_text(json.dumps(manifest))
    with pytest.raises(TwoTowerError, match="another run than the one loaded"):
        retriever.save_catalogue()


def test_a_rebuild_folds_saved_items_into_the_index(own_run: Path) -> None:
    retriever = Retriever.load(own_run)
    users = retriever.run.user_vocab.ids.to_list()
    new = list(range(100_001, 100_061))  # not multiples of 7, so not the run's ids
    add_near_users(retriever, new, seed=2)
    first, _ = retriever.recommend("u1", k=1)
    retriever.remove_items([first[0], new[-1]])  # masked before and after the fold, in the index or not
    retriever.save_catalogue()
    expected = retriever.recommend(users, k=10)
    similar = retriever.similar_items(new[:5], k=5)
    assert sum(bool(set(new) & set(ids.tolist())) for ids, _ in expected) >= 20  # the new items matter

    report = rebuild_index(own_run, AnnoyIndex(exact_when_faster=False))  # the trees, even where slower
    assert report["recall@10_vs_exact"] >= 0.95
    assert json.loads((own_run / "index" / "report.json").read_text()) == report
    assert read_meta(own_run / "index")["n_items"] == N_ITEMS + len(new)

    folded = Retriever.load(own_run)
    assert folded.catalogue.indexed == len(folded.catalogue.added_ids) == len(new)  # nothing left to search exactly
    assert not folded.catalogue.index.searches_exactly(20)  # and the index searches through its trees
    assert_same(folded.recommend(users, k=10), expected)
    assert_same(folded.similar_items(new[:5], k=5), similar)
    found = folded.catalogue.index.search(folded.run.user_vectors, 10)
    assert (found >= N_ITEMS).any()  # the added items come from the index
    answered = {item for ids, _ in folded.recommend(users, k=30) for item in ids.tolist()}
    assert not {first[0], new[-1]} & answered


def test_items_added_after_a_fold_merge_and_fold_again(own_run: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    retriever = Retriever.load(own_run)
    users = retriever.run.user_vocab.ids.to_list()
    add_near_users(retriever, list(range(100_001, 100_031)), seed=3)
    retriever.save_catalogue()
    assert fold_with_the_command(own_run, monkeypatch, capsys)["recall@10_vs_exact"] >= 0.95

    folded = Retriever.load(own_run)
    exact = Retriever.load(own_run, index="exact")  # brute force, every added item from the buffer
    later = list(range(200_001, 200_021))
    for each in (folded, exact):
        add_near_users(each, later, seed=4)
        each.remove_items([100_001])
    merged = folded.recommend(users, k=10)
    assert (folded.catalogue.indexed, len(folded.catalogue.added_ids)) == (30, 50)
    assert_same(merged, exact.recommend(users, k=10))
    assert any(set(later) & set(ids.tolist()) for ids, _ in merged)  # from the buffer
    assert any(set(range(100_002, 100_031)) & set(ids.tolist()) for ids, _ in merged)  # from the index
    assert folded.save_catalogue() == {"added_items": 49, "removed_items": 0, "saved_rows": 50, "indexed_rows": 30}

    assert Retriever.load(own_run).catalogue.indexed == 30  # saved, not yet folded: the old index still loads
    fold_with_the_command(own_run, monkeypatch, capsys)
    again = Retriever.load(own_run)
    assert (again.catalogue.indexed, len(again.catalogue.added_ids), again.catalogue.n_added) == (50, 50, 49)
    assert_same(again.recommend(users, k=10), merged)
