"""``model.popularity_prior``: each item's log-popularity added to its logit when ranking, chosen on validation,
exported as one more coordinate, and served as the model ranks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import compose_train
from twotower import Retriever
from twotower.data.synthetic import planted_interactions
from twotower.errors import DataError, TwoTowerError
from twotower.model.module import TwoTowerModel
from twotower.training.evaluation import evaluate_run
from twotower.training.train import train

WEIGHTS = [0, 0.5, 1.0, 2.0]


@pytest.fixture(scope="module")
def log_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Users who take popular items half the time: a model of their tastes alone under-ranks those."""
    folder = tmp_path_factory.mktemp("prior")
    planted_interactions(n_users=400, n_items=200, n_clusters=8, interactions_per_user=15, affinity=0.5,
                         popularity_exponent=1.2, seed=5).write_csv(folder / "log.csv")
    return folder / "log.csv"


def trained(folder: Path, log_file: Path, *overrides: str) -> Path:
    train(compose_train(folder, "data=interactions", f"data.path={log_file}", "model.dim=16",
                        "model.temperature=0.1", "trainer.max_epochs=4", "show_similar_to=null",
                        f"prior.weights=[{','.join(map(str, WEIGHTS))}]", *overrides))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, log_file: Path) -> tuple[Path, Path]:
    """The same model (the prior never changes training) ranked with the weight chosen and with none."""
    folder = tmp_path_factory.mktemp("runs")
    return (trained(folder / "auto", log_file, "model.popularity_prior=auto"),
            trained(folder / "none", log_file, "model.popularity_prior=0"))


def manifest(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def test_the_weight_is_chosen_on_validation_and_ranks_the_held_out_test_split_better(runs: tuple[Path, Path]
                                                                                      ) -> None:
    auto, none = (manifest(run) for run in runs)
    chosen = auto["chosen"]["model.popularity_prior"]
    scores = chosen["candidates"]
    assert sorted(scores) == sorted(f"{weight:g}" for weight in WEIGHTS)
    assert chosen["value"] > 0 and scores[f"{chosen['value']:g}"] == max(scores.values())
    assert chosen["evidence"][f"{chosen['value']:g}"] > 2  # its gain over 0, in standard errors
    assert auto["metrics"]["val/ndcg@20"] == pytest.approx(max(scores.values()), abs=1e-4)
    assert none["chosen"]["model.popularity_prior"] == {"value": 0.0, "why": "given", "candidates": {}}
    assert auto["metrics"]["val/ndcg@20"] > none["metrics"]["val/ndcg@20"]
    # the test split took no part in the choice: it gains too
    assert auto["metrics"]["test/ndcg@20"] > 1.05 * none["metrics"]["test/ndcg@20"]
    assert auto["metrics"]["test/recall@20"] > none["metrics"]["test/recall@20"]
    assert auto["prior"] == pytest.approx(chosen["value"] * 0.1) and none["prior"] == 0.0
    assert auto["dim"] == none["dim"] + 1  # the prior's coordinate
    assert "popularity_prior: " + str(chosen["value"]) in (runs[0] / "config.yaml").read_text()


def test_the_exported_vectors_rank_as_the_model_does(runs: tuple[Path, Path]) -> None:
    run = Retriever.load(runs[0], index="exact")
    model = TwoTowerModel.load_from_checkpoint(runs[0] / run.run.manifest.checkpoint, map_location="cpu")
    assert model.hparams.popularity_prior == manifest(runs[0])["chosen"]["model.popularity_prior"]["value"]
    with torch.no_grad():
        logits = model.all_user_vectors() @ model.all_item_vectors().T + model.prior_weight * model.item_prior
    exported = run.run.user_vectors @ run.run.item_vectors.T
    np.testing.assert_allclose(exported, logits.numpy(), atol=1e-5)
    counts = np.bincount(run.run.seen.items, minlength=len(run.run.item_vocab))
    np.testing.assert_allclose(run.run.item_vectors[:, -1], np.log1p(counts), rtol=1e-6)  # trained on every split
    user = run.run.user_vocab.decode(np.arange(1))[0]
    ids, _ = run.recommend(user, k=10)
    ranked = np.argsort(-np.where(np.isin(np.arange(exported.shape[1]), run.run.seen.row(0)), -np.inf, exported[0]))
    assert list(ids) == list(run.run.item_vocab.decode(ranked[:10]))
    served = Retriever.load(runs[0])  # the run's own index, built for the dot product the prior makes
    assert list(served.recommend(user, k=10)[0]) == list(ids)


def test_similar_items_and_users_and_new_items_leave_the_prior_out(runs: tuple[Path, Path]) -> None:
    auto = Retriever.load(runs[0], index="exact")
    plain = Retriever.load(runs[1], index="exact")
    item = auto.run.item_vocab.decode(np.arange(1))[0]
    towers = auto.run.item_vectors[:, :-1]  # the same vectors as the plain run's: training is the same
    np.testing.assert_allclose(towers, plain.run.item_vectors, atol=1e-6)
    ids, scores = auto.similar_items(item, k=5)
    plain_ids, plain_scores = plain.similar_items(item, k=5)
    assert list(ids) == list(plain_ids)
    np.testing.assert_allclose(scores, plain_scores, atol=1e-5)
    assert list(auto.similar_users(auto.run.user_vocab.decode(np.arange(1))[0], k=5)[0]) == \
        list(plain.similar_users(plain.run.user_vocab.decode(np.arange(1))[0], k=5)[0])
    assert auto.about()["dim"] == plain.about()["dim"] and auto.about()["popularity_prior"] > 0
    auto.add_items([10_000], towers[:1])  # in the towers' space; a new item has no popularity yet
    assert auto.catalogue.added_vectors[0, -1] == 0.0
    with pytest.raises(DataError, match=f"dimension {towers.shape[1]}"):
        auto.add_items([10_001], auto.run.item_vectors[:1])


def test_a_given_weight_is_kept_and_a_bad_one_refused(tmp_path: Path, log_file: Path) -> None:
    given = manifest(trained(tmp_path / "given", log_file, "model.popularity_prior=0.4", "trainer.max_epochs=1",
                             "final_fit=false"))
    assert given["chosen"]["model.popularity_prior"] == {"value": 0.4, "why": "given", "candidates": {}}
    assert given["prior"] == pytest.approx(0.04)
    with_prior = evaluate_run(tmp_path / "given", "test", ks=[20])  # the exported model is the selected one
    assert with_prior["ndcg@20"] == pytest.approx(given["metrics"]["test/ndcg@20"], abs=1e-5)
    towers = evaluate_run(tmp_path / "given", "test", ks=[20], prior=False)
    assert towers["ndcg@20"] != pytest.approx(with_prior["ndcg@20"], abs=1e-4)
    with pytest.raises(TwoTowerError, match=r"model\.popularity_prior must be"):
        trained(tmp_path / "bad", log_file, "model.popularity_prior=-1")
    with pytest.raises(TwoTowerError, match=r"prior\.weights"):
        trained(tmp_path / "bad", log_file, "prior.weights=[]")


def test_a_checkpoint_from_before_the_prior_loads_and_ranks_without_one(runs: tuple[Path, Path],
                                                                      tmp_path: Path) -> None:
    saved = torch.load(runs[1] / manifest(runs[1])["checkpoint"], map_location="cpu", weights_only=False)
    del saved["state_dict"]["item_prior"]
    del saved["hyper_parameters"]["popularity_prior"]
    torch.save(saved, tmp_path / "old.ckpt")
    model = TwoTowerModel.load_from_checkpoint(tmp_path / "old.ckpt", map_location="cpu")
    assert model.prior_weight == 0.0 and not model.item_prior.any()

