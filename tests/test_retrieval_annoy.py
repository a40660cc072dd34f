"""The retrieval API through a real Annoy search: a catalogue larger than the default search budget, so
nothing here falls back to exact search, checked against exact search under seen-item filtering."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from twotower.data.vocab import Vocabulary
from twotower.files import write_parquet
from twotower.index import AnnoyIndex, Probe, build_for_run, build_index
from twotower.run import Manifest, RunPaths, seen_items, write_vectors
from twotower.serving.retrieval import Retriever

N_ITEMS, N_USERS, DIM, K = 30_000, 300, 16, 10


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run directory written with the library's own writers: clustered unit item vectors, users
    near a cluster, each user having seen 2-10 of their own exact top-30 items, spread over the splits."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(300, DIM))
    items = centres[rng.integers(0, len(centres), N_ITEMS)] + 0.5 * rng.normal(size=(N_ITEMS, DIM))
    items = (items / np.linalg.norm(items, axis=1, keepdims=True)).astype(np.float32)
    users = centres[rng.integers(0, len(centres), N_USERS)] + 0.3 * rng.normal(size=(N_USERS, DIM))
    users = (users / np.linalg.norm(users, axis=1, keepdims=True)).astype(np.float32)
    paths = RunPaths(tmp_path_factory.mktemp("annoy-run"))
    user_ids = pl.Series([f"u{i}" for i in range(N_USERS)]).sort()  # in the order a vocabulary gives them
    item_ids = pl.Series(np.arange(N_ITEMS, dtype=np.int64) * 7)
    Vocabulary.build(user_ids, "user").save(paths.vocab("users"))
    Vocabulary.build(item_ids, "item").save(paths.vocab("items"))
    write_vectors(user_ids, users, paths.embeddings("users"))
    write_vectors(item_ids, items, paths.embeddings("items"))
    top = np.argsort(-(users @ items.T), axis=1)[:, :30]
    pairs = [(user, int(item)) for user in range(N_USERS)
             for item in rng.choice(top[user], size=rng.integers(2, 11), replace=False)]
    frame = pl.DataFrame(pairs, schema={"user": pl.Int32, "item": pl.Int32}, orient="row")
    labels = rng.integers(0, 3, frame.height)
    for code, name in enumerate(("train", "valid", "test")):
        write_parquet(frame.filter(pl.Series(labels == code)).sort("user", "item"), paths.split(name))
    build_index(AnnoyIndex(), items, "cosine", paths.index)
    Manifest(names={"user": "user", "item": "item"}, score="cosine", dim=DIM, n_users=N_USERS, n_items=N_ITEMS,
             min_rating=None, checkpoint=None, trained_on=["train", "valid", "test"],
             fingerprints=paths.fingerprints()).write(paths)
    return paths.root


@pytest.fixture(scope="module")
def annoy(run_dir: Path) -> Retriever:
    retriever = Retriever.load(run_dir)
    assert isinstance(retriever.catalogue.index, AnnoyIndex)
    return retriever


@pytest.fixture(scope="module")
def exact(run_dir: Path) -> Retriever:
    return Retriever.load(run_dir, index="exact")


def seen_ids(retriever: Retriever, row: int) -> set:
    return set(retriever.run.item_vocab.decode(retriever.run.seen.row(row)).tolist())


def recall(found: list, truth: list) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth, strict=True)]))


def test_the_catalogue_is_beyond_the_search_budget(annoy: Retriever) -> None:
    longest = int(np.diff(annoy.run.seen.indptr).max())
    assert not annoy.catalogue.index.searches_exactly(K + longest)  # every query below goes through the trees


def test_recommend_through_annoy_matches_exact_search_without_seen_items(annoy: Retriever, exact: Retriever) -> None:
    users = annoy.run.user_vocab.ids.to_list()
    found, truth = annoy.recommend(users, k=K), exact.recommend(users, k=K)
    for row, (ids, scores) in enumerate(found):
        assert len(ids) == K and len(set(ids.tolist())) == K
        assert not set(ids.tolist()) & seen_ids(annoy, row)
        assert list(scores) == sorted(scores, reverse=True)
    assert recall([ids.tolist() for ids, _ in found], [ids.tolist() for ids, _ in truth]) >= 0.9
    # Without filtering, each user's seen items are among their best: the filter is what removed them.
    unfiltered = annoy.recommend(users[:50], k=30, exclude_seen=False)
    assert all(seen_ids(annoy, row) & set(ids.tolist()) for row, (ids, _) in enumerate(unfiltered))


def test_batches_searched_on_threads_equal_single_queries(annoy: Retriever) -> None:
    users = annoy.run.user_vocab.ids.to_list()[:100]  # >= 64 queries: the index searches them on a thread pool
    batch = annoy.recommend(users, k=K)
    for user, (ids, scores) in list(zip(users, batch, strict=True))[::10]:
        single_ids, single_scores = annoy.recommend(user, k=K)
        assert ids.tolist() == single_ids.tolist() and np.allclose(scores, single_scores)


def test_similar_items_allow_and_deny_through_annoy(annoy: Retriever, exact: Retriever) -> None:
    anchors = annoy.run.item_vocab.ids.to_list()[:200]
    found, truth = annoy.similar_items(anchors, k=K), exact.similar_items(anchors, k=K)
    assert all(len(ids) == K and anchor not in ids.tolist() for anchor, (ids, _) in zip(anchors, found, strict=True))
    assert recall([ids.tolist() for ids, _ in found], [ids.tolist() for ids, _ in truth]) >= 0.9
    user = annoy.run.user_vocab.ids[0]
    top, _ = annoy.recommend(user, k=K)
    denied, _ = annoy.recommend(user, k=K, deny=top[:3].tolist())
    assert len(denied) == K and not set(denied.tolist()) & set(top[:3].tolist())
    assert set(top[3:].tolist()) <= set(denied.tolist())  # the rest stays
    pool = annoy.run.item_vocab.ids.to_list()[:500]
    allowed, _ = annoy.recommend(user, k=K, allow=pool)
    assert len(allowed) == K and set(allowed.tolist()) <= set(pool) - seen_ids(annoy, 0)


def test_index_report_measures_the_filtered_task(run_dir: Path, annoy: Retriever, tmp_path: Path) -> None:
    seen = seen_items(RunPaths(run_dir), len(annoy.run.user_vocab))
    probe = Probe.sample(annoy.run.user_vectors, seen.row, 200)
    report = build_for_run(AnnoyIndex(), annoy.catalogue.vectors, "cosine", tmp_path / "index", probe)
    assert report["seen_filtered"] and report["queries"] == 200
    assert report["target_recall"] <= report["recall@10_vs_exact"] <= 1.0
    # What the run serves beats brute force at the target recall, or is brute force, saying why.
    approximate = [step for step in report["tuning"] if step["setting"] != "exact search"]
    if report["chosen"] == "exact search":
        assert report["why_exact"] and approximate[-1]["qps"] < report["exact_qps"]
    else:
        assert report["why_exact"] is None and report["qps"] >= report["exact_qps"]
    assert (tmp_path / "index" / "report.json").exists()


def test_a_probe_reads_only_its_users_seen_items(run_dir: Path, annoy: Retriever) -> None:
    """The run's index is tuned on a probe whose seen items are read for its users alone (every user's would
    hold the whole log), and it is the probe ``sample`` draws from every user's."""
    n_users = len(annoy.run.user_vocab)
    every = seen_items(RunPaths(run_dir), n_users)
    rows = Probe.draw(n_users, 50, seed=3)
    only = seen_items(RunPaths(run_dir), n_users, users=rows)
    assert len(only.items) == sum(len(every.row(row)) for row in rows) > 0
    probe, sampled = Probe.of(annoy.run.user_vectors, rows, only.row), Probe.sample(annoy.run.user_vectors,
                                                                                     every.row, 50, seed=3)
    assert np.array_equal(probe.queries, sampled.queries)
    assert all(np.array_equal(a, b) for a, b in zip(probe.exclude, sampled.exclude, strict=True))
