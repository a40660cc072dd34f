"""The history tower: users embedded from their items, trained without copying, served for new users."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from tests.conftest import compose_train
from twotower.commands.retrieve import run as retrieve
from twotower.data.batches import SampledCatalogue, UserBatch
from twotower.data.synthetic import planted_interactions
from twotower.errors import TwoTowerError
from twotower.model.module import TwoTowerModel
from twotower.model.towers import HistoryTower
from twotower.serving.retrieval import Retriever
from twotower.training.train import train

CATALOGUE = {"_target_": "twotower.model.losses.CatalogueSoftmaxLoss"}


def history_model(score: str, use_id: bool = False, dropout: float = 0.0) -> TwoTowerModel:
    torch.manual_seed(0)
    return TwoTowerModel(n_users=3, n_items=7, dim=5, score=score, temperature=0.5, loss=CATALOGUE,
                         user_tower={"_target_": "twotower.model.towers.HistoryTower", "use_id": use_id,
                                     "dropout": dropout})


# Three users' positives (each user's history is exactly its positives, as in training).
USERS = torch.tensor([0, 1, 2])
ROWS = torch.tensor([0, 0, 0, 1, 1, 2])
ITEMS = torch.tensor([1, 4, 6, 0, 4, 3])


def loss_with_explicit_histories(model: TwoTowerModel) -> torch.Tensor:
    """The catalogue softmax written out per positive, with every item of a user's history scored by the
    user's history vector without that item's share: a positive is never predicted from itself. With user
    ids, the ID vector and the history vector are two models side by side, each met by its own half of the
    item vectors, each with its own softmax, and the loss is the sum of the two."""
    tower, dim = model.user_tower, model.hparams.dim
    items = model.all_item_vectors()
    terms = []
    for row, user in enumerate(USERS.tolist()):
        history = ITEMS[ROWS.eq(row)]
        full = tower.history(history).mean(0)
        parts = [(full, items[:, -dim:], True)]  # (user vector, item part, whether it is the history's)
        if tower.embedding is not None:
            parts.append((tower.embedding(torch.tensor(user)), items[:, :dim], False))
        term = {positive: 0 for positive in history.tolist()}
        for vector, item_part, of_history in parts:
            norm = vector.norm() if model.hparams.score == "cosine" else torch.tensor(1.0)
            logits = []
            for candidate in range(item_part.shape[0]):
                own = vector
                if of_history and candidate in history:
                    own = vector - tower.history(torch.tensor(candidate)) / len(history)
                logits.append(own @ item_part[candidate] / norm / model.hparams.temperature)
            logits = torch.stack(logits)
            for positive in term:
                term[positive] = term[positive] + torch.logsumexp(logits, 0) - logits[positive]
        terms += list(term.values())
    return torch.stack(terms).mean()


@pytest.mark.parametrize("score", ["cosine", "dot"])
@pytest.mark.parametrize("use_id", [False, True])
def test_training_never_scores_a_positive_with_itself_in_the_history(score: str, use_id: bool) -> None:
    model = history_model(score, use_id)
    batch = UserBatch(USERS, ROWS, ITEMS, draws=torch.rand(len(ITEMS)))  # no dropout: the draws keep every item
    assert torch.allclose(model.loss(batch), loss_with_explicit_histories(model), atol=1e-5)


def test_a_sampled_catalogue_leaves_the_positive_out_of_its_own_logit() -> None:
    model = history_model("cosine")
    candidates = torch.tensor([2, 5])
    batch = UserBatch(USERS, ROWS, ITEMS, draws=torch.rand(len(ITEMS)), candidates=SampledCatalogue(
        candidates, torch.tensor(0.0), torch.zeros(len(ITEMS), dtype=torch.bool)))
    tower, temperature = model.user_tower, model.hparams.temperature
    terms = []
    for row in range(3):
        history = ITEMS[ROWS.eq(row)]
        full = tower.history(history).mean(0)
        for positive in history.tolist():
            own = (full - tower.history(torch.tensor(positive)) / len(history)) @ model.item_vectors(
                torch.tensor(positive)) / full.norm() / temperature
            sampled = torch.logsumexp(model.item_vectors(candidates) @ full / full.norm() / temperature, 0)
            terms.append(torch.logaddexp(own, sampled) - own)
    assert torch.allclose(model.loss(batch), torch.stack(terms).mean(), atol=1e-5)


def test_dropout_keeps_a_share_of_the_history_and_the_shares_add_up_to_the_vector() -> None:
    model = history_model("dot", dropout=0.5)
    torch.manual_seed(1)  # keeps items 0, 3 and 5: some of each user's
    vectors, kept, weights = model.user_tower.leave_own_out(USERS, ROWS, ITEMS)
    assert 0 < kept.sum() < len(ITEMS)
    assert torch.all(weights[~kept] == 0)
    shares = weights.unsqueeze(-1) * model.user_tower.history(ITEMS)
    for row in range(3):
        in_row = ROWS.eq(row)
        assert torch.allclose(shares[in_row].sum(0), vectors[row], atol=1e-6)
        assert torch.allclose(weights[in_row & kept], 1 / (in_row & kept).sum())  # the mean of the kept items


@pytest.mark.parametrize("use_id", [False, True])
def test_a_loss_over_pairs_scores_each_pair_without_its_item_in_the_history(use_id: bool) -> None:
    """For a (user, item) pair the user's history part is the mean of the user's other items."""
    torch.manual_seed(0)
    model = TwoTowerModel(n_users=3, n_items=7, dim=5, loss={"_target_": "twotower.model.losses.BPRLoss"},
                          user_tower={"_target_": "twotower.model.towers.HistoryTower", "use_id": use_id})
    model.user_tower.load_history(torch.tensor([0, 3, 5, 6]), ITEMS)
    users, items = USERS[ROWS], ITEMS  # every training pair
    vectors = model.user_tower.leave_item_out(users, items)
    for pair, (user, item) in enumerate(zip(users.tolist(), items.tolist(), strict=True)):
        others = [other for other in ITEMS[ROWS.eq(user)].tolist() if other != item]
        expected = model.user_tower.history(torch.tensor(others)).mean(0) if others else torch.zeros(5)
        assert torch.allclose(vectors[pair, -5:], expected, atol=1e-6)
        if use_id:
            assert torch.allclose(vectors[pair, :5], model.user_tower.embedding.weight[user])


def test_a_history_tower_trained_by_a_loss_over_pairs_beats_popularity(tmp_path: Path) -> None:
    log = planted_interactions(n_users=300, n_items=120, n_clusters=6, interactions_per_user=15, seed=4)
    log.write_csv(tmp_path / "log.csv")
    metrics = train(compose_train(tmp_path / "run", "data=interactions", f"data.path={tmp_path / 'log.csv'}",
                                  "loss=bpr", "datamodule.batch_size=512", "model.dim=16", "trainer.max_epochs=15",
                                  "show_similar_to=null", "final_fit=false"))
    assert metrics["val/ndcg@20"] > 1.2 * metrics["val/popularity/ndcg@20"]


def test_histories_travel_with_the_checkpoint(tmp_path: Path) -> None:
    model = history_model("cosine")
    model.user_tower.load_history(torch.tensor([0, 3, 5, 6]), ITEMS)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": "2.5.0"}, tmp_path / "model.ckpt")
    loaded = TwoTowerModel.load_from_checkpoint(tmp_path / "model.ckpt")
    assert isinstance(loaded.user_tower, HistoryTower)
    assert torch.equal(loaded.user_tower.history_items, ITEMS)
    assert torch.allclose(loaded.all_user_vectors(), model.all_user_vectors())


@pytest.fixture(scope="module")
def planted_history_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pl.DataFrame]:
    """A history-tower run on a planted log, and 100 users it never saw (with their items)."""
    folder = tmp_path_factory.mktemp("history")
    log = planted_interactions(n_users=700, n_items=300, n_clusters=10, interactions_per_user=20, seed=3,
                               with_timestamps=False)
    new_users = log.filter(pl.col("user_id") < 100)
    log.filter(pl.col("user_id") >= 100).write_csv(folder / "log.csv")
    train(compose_train(folder / "run", "data=interactions", f"data.path={folder / 'log.csv'}", "model=history",
                        "model.dim=16", "trainer.max_epochs=15", "show_similar_to=null"))
    return folder / "run", new_users


def test_new_users_from_their_history_beat_popularity(planted_history_run: tuple) -> None:
    run_dir, new_users = planted_history_run
    retriever = Retriever.load(run_dir, index="exact")
    found = {"history": [], "popular": []}
    for _, items in new_users.group_by("user_id"):
        given, held_out = items["item_id"].to_list()[:-5], set(items["item_id"].to_list()[-5:])
        ids, _ = retriever.recommend_from_history(given, k=10)
        assert not set(ids.tolist()) & set(given)  # what the user gave is never recommended back
        popular, _ = retriever.popular(10, exclude=retriever.run.item_vocab.lookup(given))
        found["history"].append(len(held_out & set(ids.tolist())) / len(held_out))
        found["popular"].append(len(held_out & set(popular.tolist())) / len(held_out))
    recall = {name: float(np.mean(values)) for name, values in found.items()}
    assert recall["history"] > 0.35, recall  # measured: 0.48 against popularity's 0.13
    assert recall["history"] > 2.5 * recall["popular"], recall


def test_a_known_users_whole_history_gives_their_recommendations(planted_history_run: tuple) -> None:
    run_dir, _ = planted_history_run
    retriever = Retriever.load(run_dir, index="exact")
    trained = pl.concat([pl.read_parquet(run_dir / "splits" / f"{name}.parquet")
                         for name in retriever.run.manifest.trained_on])
    for row in (0, 7, 300):
        user = retriever.run.user_vocab.ids[row]
        history = retriever.run.item_vocab.decode(trained.filter(pl.col("user") == row)["item"].to_numpy())
        expected_ids, expected_scores = retriever.recommend(user, k=10)
        ids, scores = retriever.recommend_from_history(list(history), k=10)
        np.testing.assert_array_equal(ids, expected_ids)
        np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


def test_histories_in_a_batch_and_unknown_items(planted_history_run: tuple) -> None:
    run_dir, _ = planted_history_run
    retriever = Retriever.load(run_dir)
    one = retriever.recommend_from_history([120, 121], k=5)
    batch = retriever.recommend_from_history([[120, 121], [5]], k=5)
    np.testing.assert_array_equal(batch[0][0], one[0])
    with pytest.raises(TwoTowerError, match="unknown item id"):
        retriever.recommend_from_history([120, 99999], k=5)
    skipped, _ = retriever.recommend_from_history([120, 121, 99999], k=5, unknown="skip")
    np.testing.assert_array_equal(skipped, one[0])
    popular, _ = retriever.recommend_from_history([99999], k=5, unknown="skip")
    np.testing.assert_array_equal(popular, retriever.popular(5)[0])


def test_retrieve_command_takes_a_history(planted_history_run: tuple, capsys: pytest.CaptureFixture) -> None:
    run_dir, _ = planted_history_run
    cfg = compose_retrieve(run_dir, "history=[120,121]", "k=3", "output=json")
    retrieve(cfg)
    ids, _ = Retriever.load(run_dir).recommend_from_history([120, 121], k=3)
    assert f'"id": {ids[0]}' in capsys.readouterr().out


def test_the_command_skips_unknown_history_items_as_python_does(planted_history_run: tuple,
                                                               capsys: pytest.CaptureFixture) -> None:
    run_dir, _ = planted_history_run
    retrieve(compose_retrieve(run_dir, "history=[120,121,99999]", "unknown=skip", "k=3"))
    out = capsys.readouterr().out
    assert "with 2 known item(s) of 3:" in out
    ids, _ = Retriever.load(run_dir).recommend_from_history([120, 121, 99999], k=3, unknown="skip")
    assert all(str(id_) in out for id_ in ids.tolist())
    with pytest.raises(TwoTowerError, match=r"unknown item id\(s\) \[99999\]"):
        retrieve(compose_retrieve(run_dir, "history=[120,121,99999]", "k=3"))


def test_a_run_without_history_tower_says_so(tmp_path: Path) -> None:
    from twotower.index import ExactIndex
    from twotower.training.vector_run import write_vector_run

    retriever = Retriever.load(write_vector_run(tmp_path / "run", ExactIndex()))
    with pytest.raises(TwoTowerError, match="trained without a history tower"):
        retriever.recommend_from_history([0, 7])


def compose_retrieve(run_dir: Path, *overrides: str):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="twotower.conf", version_base="1.3"):
        return compose("retrieve", overrides=[f"run_dir={run_dir}", *overrides])


def test_the_service_answers_histories_as_the_python_api(planted_history_run: tuple, tmp_path: Path) -> None:
    from tests.test_serve import Server

    run_dir, _ = planted_history_run
    retriever = Retriever.load(run_dir)
    server = Server(run_dir, tmp_path / "server.log")
    try:
        server.wait_ready()
        answer = server.client.post("/recommend_from_history", json={"histories": [[120, 121], [5, 99999]], "k": 4,
                                                                     "unknown": "skip"})
        assert answer.status_code == 200, answer.text
        expected = retriever.recommend_from_history([[120, 121], [5, 99999]], k=4, unknown="skip")
        assert answer.json()["results"] == [result.records() for result in expected]
        refused = server.client.post("/recommend_from_history", json={"histories": [[120, 99999]]})
        assert refused.status_code == 404 and "99999" in refused.json()["error"]
    finally:
        server.stop()


def test_the_yaml_defaults_are_the_towers(tmp_path: Path) -> None:
    import inspect

    defaults = inspect.signature(HistoryTower).parameters
    spec = compose_train(tmp_path).model.user_tower  # the Python defaults: an ID part beside the history part
    assert spec._target_ == "twotower.model.towers.HistoryTower"
    assert spec.use_id is defaults["use_id"].default is True and spec.dropout == defaults["dropout"].default
    spec = compose_train(tmp_path, "model=history").model.user_tower  # the history alone
    assert spec._target_ == "twotower.model.towers.HistoryTower" and spec.use_id is False


def test_retrieve_refuses_a_history_that_is_not_a_list(planted_history_run: tuple) -> None:
    run_dir, _ = planted_history_run
    with pytest.raises(TwoTowerError, match="list of item ids"):
        retrieve(compose_retrieve(run_dir, "history=120"))


def test_user_ids_sit_beside_the_history_and_new_users_use_the_history_part(tmp_path: Path) -> None:
    log = planted_interactions(n_users=400, n_items=200, n_clusters=8, interactions_per_user=20, seed=5,
                               with_timestamps=False)
    log.write_csv(tmp_path / "log.csv")
    train(compose_train(tmp_path / "run", "data=interactions", f"data.path={tmp_path / 'log.csv'}", "model=history",
                        "model.user_tower.use_id=true", "model.dim=8", "trainer.max_epochs=5", "show_similar_to=null",
                        "model.popularity_prior=0"))  # the towers' parts alone (tests/test_prior.py adds the prior)
    retriever = Retriever.load(tmp_path / "run", index="exact")
    # each part of an item vector is a unit vector of its own: the score is the sum of the parts' cosines
    assert retriever.catalogue.vectors.shape[1] == retriever.run.user_vectors.shape[1] == 16
    np.testing.assert_allclose(np.linalg.norm(retriever.catalogue.vectors.reshape(-1, 2, 8), axis=-1), 1, atol=1e-5)
    given = [3, 17, 42]
    ids, scores = retriever.recommend_from_history(given, k=5)
    # a new user has no ID part: the history part alone ranks, against the items' history-facing part
    query = retriever.run.history_vectors[retriever.run.item_vocab.lookup(given)].mean(0)
    history_scores = retriever.catalogue.vectors[:, 8:] @ (query / np.linalg.norm(query))
    history_scores[retriever.run.item_vocab.lookup(given)] = -np.inf
    expected = np.argsort(-history_scores)[:5]
    np.testing.assert_array_equal(ids, retriever.run.item_vocab.decode(expected))
    np.testing.assert_allclose(scores, history_scores[expected], atol=1e-5)
