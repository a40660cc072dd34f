"""model=sparse: sparse embedding gradients with SparseAdam touch only a batch's rows, and still learn."""

from pathlib import Path

import pytest
import torch

from tests.conftest import compose_train
from twotower.commands.train import train
from twotower.errors import TwoTowerError
from twotower.module import TwoTowerModel
from twotower.synthetic import planted_interactions


def sparse_model(optimizer: type[torch.optim.Optimizer] = torch.optim.SparseAdam) -> TwoTowerModel:
    torch.manual_seed(0)
    return TwoTowerModel(50, 40, dim=8, loss={"_target_": "twotower.losses.BPRLoss"},
                         user_tower={"kind": "id", "sparse": True}, item_tower={"kind": "id", "sparse": True},
                         optimizer=lambda params: optimizer(params, lr=0.01))


def test_a_step_updates_only_the_rows_in_the_batch() -> None:
    model = sparse_model()
    optimizer = model.configure_optimizers()
    batch = {"users": torch.tensor([3, 7]), "items": torch.tensor([1, 2]), "negatives": torch.tensor([[5], [6]]),
             "negatives_valid": torch.ones(2, 1, dtype=torch.bool)}
    users_before, items_before = model.user_tower.all().detach().clone(), model.item_tower.all().detach().clone()
    model.loss(batch).backward()
    optimizer.step()
    users_changed = (model.user_tower.all() != users_before).any(dim=1).nonzero().flatten().tolist()
    items_changed = (model.item_tower.all() != items_before).any(dim=1).nonzero().flatten().tolist()
    assert users_changed == [3, 7]
    assert items_changed == [1, 2, 5, 6]


def test_sparse_embeddings_with_a_dense_only_optimizer_is_a_clear_error() -> None:
    with pytest.raises(TwoTowerError, match=r"sparse embeddings .* need an optimizer that takes sparse gradients"):
        sparse_model(torch.optim.Adam).configure_optimizers()


def test_model_sparse_recovers_planted_structure(tmp_path: Path) -> None:
    log = planted_interactions(n_users=600, n_items=300, n_clusters=15, interactions_per_user=20, seed=0)
    log.write_parquet(tmp_path / "log.parquet")
    cfg = compose_train(tmp_path / "run", "data=interactions", f"data.path={tmp_path / 'log.parquet'}",
                        "model=sparse", "trainer.max_epochs=15", "datamodule.batch_size=256", "index=exact")
    metrics = train(cfg)
    # Random ranking would give recall@10 of about 10 / 300 = 0.03 (see test_end_to_end for the dense model).
    assert metrics["test/recall@10"] >= 0.5, metrics


@pytest.mark.parametrize(("overrides", "switched"), [
    ([], True),  # the defaults: plain ID towers, Adam, no weight decay
    (["model.weight_decay=0.001"], False),  # SparseAdam has no weight decay: the configured Adam stays
    (["+model.item_tower.sparse=false"], False),  # a tower configured explicitly is left as configured
    (["model.sparse_above=null"], False),
])
def test_vocabularies_beyond_sparse_above_train_sparse(overrides: list[str], switched: bool, tmp_path: Path) -> None:
    from hydra.utils import instantiate

    from twotower.commands.train import build_model
    from twotower.data.datamodule import InteractionDataModule

    planted_interactions(n_users=60, n_items=40, n_clusters=4, seed=0).write_csv(tmp_path / "log.csv")
    cfg = compose_train(tmp_path / "run", "data=interactions", f"data.path={tmp_path / 'log.csv'}",
                        "model.sparse_above=50", *overrides)
    datamodule: InteractionDataModule = instantiate(cfg.datamodule)
    datamodule.setup("fit")
    model = build_model(cfg.model, datamodule)
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SparseAdam) is switched
    assert model.user_tower.embedding.sparse is switched
    if switched:
        assert optimizer.defaults["lr"] == cfg.model.optimizer.lr
