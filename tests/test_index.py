from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from twotower.data.synthetic import clustered_unit_vectors
from twotower.errors import TwoTowerError
from twotower.index import (
    AnnoyIndex,
    Backend,
    ExactIndex,
    HnswIndex,
    Probe,
    build_index,
    exact_top,
    load_index,
    recall_against_exact,
)


def clustered(n: int, dim: int, seed: int, spread: float = 0.3) -> np.ndarray:
    """Vectors around 50 centres with varied norms, like trained embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dim))
    vectors = centres[rng.integers(50, size=n)] + spread * rng.normal(size=(n, dim))
    return (vectors * rng.uniform(0.5, 2.0, size=(n, 1))).astype(np.float32)


def test_exact_top_matches_a_full_sort() -> None:
    items = clustered(300, 8, seed=0)
    queries = clustered(20, 8, seed=1)
    indices, scores = exact_top(queries, items, 5, batch_size=7)
    full = np.argsort(-(queries @ items.T), axis=1)[:, :5]
    assert np.array_equal(indices, full)
    assert np.allclose(scores, np.take_along_axis(queries @ items.T, full, axis=1))


@pytest.mark.parametrize("score", ["dot", "cosine"])
def test_annoy_recall_against_exact_search(tmp_path: Path, score: str) -> None:
    items = clustered(20_000, 32, seed=2)
    queries = clustered(300, 32, seed=3)
    if score == "cosine":
        items /= np.linalg.norm(items, axis=1, keepdims=True)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    index = AnnoyIndex()  # the defaults: 50 trees, search_k 5,000 for 10 results, below the 20,000 items
    index, meta = build_index(index, items, score, tmp_path)
    assert meta["metric"] == "angular"
    assert meta["transform"] == ("dot_to_angular" if score == "dot" else "unit_vectors")
    recall = recall_against_exact(index, queries, items, k=10)
    assert 0.95 <= recall < 1.0  # approximate, and good
    loaded, _ = load_index(tmp_path, items, score)
    assert np.array_equal(loaded.search(queries[:20], 10), index.search(queries[:20], 10))


def test_annoy_answers_exactly_when_it_would_visit_the_whole_catalogue(tmp_path: Path) -> None:
    items = clustered(800, 8, seed=6)
    index = AnnoyIndex(n_trees=2, search_k=800)
    index, _ = build_index(index, items, "dot", tmp_path)
    assert np.array_equal(index.search(items[:30], 10), exact_top(items[:30], items, 10)[0])


def test_loading_refuses_an_index_built_for_other_vectors_or_score(tmp_path: Path) -> None:
    items = clustered(500, 8, seed=4)
    build_index(AnnoyIndex(n_trees=5), items, "dot", tmp_path)
    with pytest.raises(TwoTowerError, match="score 'dot' but the model scores by 'cosine'"):
        load_index(tmp_path, items, "cosine")
    with pytest.raises(TwoTowerError, match="built from other item vectors"):
        load_index(tmp_path, items * 2, "dot")
    with pytest.raises(TwoTowerError, match="500 items of dimension 8"):
        load_index(tmp_path, items[:100], "dot")
    (tmp_path / "meta.json").unlink()
    with pytest.raises(TwoTowerError, match=r"meta\.json missing"):
        load_index(tmp_path, items, "dot")


def test_exact_backend_is_ground_truth(tmp_path: Path) -> None:
    items = clustered(400, 8, seed=5)
    index = ExactIndex()
    index, _ = build_index(index, items, "dot", tmp_path)
    assert recall_against_exact(index, items[:50], items, k=10) == 1.0


def hard_probe(n_items: int = 20_000, dim: int = 32, spread: float = 1.5) -> tuple[np.ndarray, Probe]:
    """Widely spread clusters: a random-projection forest or a graph at its default budget misses the target."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(200, dim))
    items = clustered_unit_vectors(n_items, centres, spread, rng)
    users = clustered_unit_vectors(300, centres, spread, rng)
    return items, Probe(users, [rng.choice(n_items, 5, replace=False) for _ in users])


@pytest.mark.parametrize("make", [lambda: AnnoyIndex(n_trees=10, exact_when_faster=False),
                                  lambda: HnswIndex(m=8, ef=16, exact_when_faster=False)],
                         ids=["annoy", "hnsw"])
def test_a_build_raises_its_budget_until_the_target_is_met(make: Callable[[], Backend], tmp_path: Path) -> None:
    index, (items, probe) = make(), hard_probe()
    index, meta = build_index(index, items, "cosine", tmp_path, probe=probe)
    steps = meta["measured"]["tuning"]
    assert steps[0]["recall@10"] < 0.9 and steps[-1]["recall@10"] >= 0.95 and len(steps) >= 3
    assert not index.exact and steps[-1]["setting"] == index.describe()
    # the budget chosen is saved with the index and searched with after a load, without any tuning
    loaded, saved = load_index(tmp_path, items, "cosine")
    assert saved["params"] == index.params() != type(index)().params()
    assert recall_against_exact(loaded, probe.queries, items, 10, probe.exclude) >= 0.95


@pytest.mark.parametrize("make", [lambda: AnnoyIndex(n_trees=2, target_recall=1.0),
                                  lambda: HnswIndex(m=4, ef=4, target_recall=1.0)], ids=["annoy", "hnsw"])
def test_a_target_out_of_reach_serves_exactly(make: Callable[[], Backend], tmp_path: Path) -> None:
    index, (items, probe) = make(), hard_probe(n_items=3_000, spread=2.0)
    index, meta = build_index(index, items, "cosine", tmp_path, probe=probe)
    assert index.exact and meta["params"]["exact"] and meta["measured"]["tuning"][-1]["setting"] == "exact search"
    loaded, _ = load_index(tmp_path, items, "cosine")
    assert loaded.searches_exactly(10)
    assert np.array_equal(loaded.search(probe.queries, 10), exact_top(probe.queries, items, 10)[0])


def test_an_index_slower_than_exact_search_at_its_target_serves_exactly(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Where brute force answers more queries per second than the setting that meets the target, the build
    serves exactly (both faster and exact) and says why; the clock is faked here, the rule is not."""
    from twotower.index import tuning

    monkeypatch.setattr(tuning, "queries_per_second",
                        lambda index, *args: 1000.0 if index.searches_exactly(10) else 100.0)
    items, probe = hard_probe(n_items=5_000, spread=1.0)
    index = AnnoyIndex(n_trees=10)
    index, meta = build_index(index, items, "cosine", tmp_path, probe=probe)
    measured = meta["measured"]
    assert index.exact and meta["params"]["exact"] and measured["qps"] == measured["exact_qps"] == 1000
    assert "fewer than exact search's 1000" in measured["why_exact"]
    kept = AnnoyIndex(n_trees=10, exact_when_faster=False)
    kept, _ = build_index(kept, items, "cosine", tmp_path / "kept", probe=probe)
    assert not kept.exact  # a build that keeps its index whatever the clock says
