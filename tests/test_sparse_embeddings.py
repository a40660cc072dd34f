"""model=sparse: sparse embedding gradients with row-wise Adagrad (or LazyAdam) touch only a batch's rows, follow
their reference math, and still learn."""

from pathlib import Path

import pytest
import torch

from tests.conftest import compose_train
from twotower.data.batches import PairBatch
from twotower.data.synthetic import planted_interactions
from twotower.errors import TwoTowerError
from twotower.model.module import TwoTowerModel
from twotower.model.optim import LazyAdam, RowWiseAdagrad
from twotower.training.train import train


def sparse_model(optimizer: type[torch.optim.Optimizer] = RowWiseAdagrad) -> TwoTowerModel:
    torch.manual_seed(0)
    return TwoTowerModel(50, 40, dim=8, loss={"_target_": "twotower.model.losses.BPRLoss"},
                         user_tower={"_target_": "twotower.model.towers.IdTower", "sparse": True},
                         item_tower={"_target_": "twotower.model.towers.IdTower", "sparse": True},
                         optimizer=lambda params: optimizer(params, lr=0.01))


@pytest.mark.parametrize("optimizer", [RowWiseAdagrad, LazyAdam, torch.optim.SparseAdam])
def test_a_step_updates_only_the_rows_in_the_batch(optimizer: type[torch.optim.Optimizer]) -> None:
    model = sparse_model(optimizer)
    optimizer = model.configure_optimizers()
    batch = PairBatch(users=torch.tensor([3, 7]), items=torch.tensor([1, 2]), negatives=torch.tensor([[5], [6]]),
                      negatives_valid=torch.ones(2, 1, dtype=torch.bool), items_log_q=torch.zeros(2),
                      negatives_log_q=torch.zeros(2, 1))
    users_before, items_before = model.user_tower.all().detach().clone(), model.item_tower.all().detach().clone()
    model.loss(batch).backward()
    optimizer.step()
    users_changed = (model.user_tower.all() != users_before).any(dim=1).nonzero().flatten().tolist()
    items_changed = (model.item_tower.all() != items_before).any(dim=1).nonzero().flatten().tolist()
    assert users_changed == [3, 7]
    assert items_changed == [1, 2, 5, 6]


def sparse_gradients(n_rows: int, steps: int, seed: int) -> list[torch.Tensor]:
    """Uncoalesced sparse gradients with repeated rows (as an embedding's backward gives them), and one step
    that touches no row at all."""
    generator = torch.Generator().manual_seed(seed)
    grads = []
    for step in range(steps):
        rows = torch.randint(0, n_rows, (0 if step == 2 else 12,), generator=generator)
        grads.append(torch.sparse_coo_tensor(rows[None], torch.randn(len(rows), 4, generator=generator), (n_rows, 4)))
    return grads


def test_lazy_adam_matches_sparse_adam_row_for_row() -> None:
    start = torch.randn(30, 4, generator=torch.Generator().manual_seed(1))
    lazy, reference = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    optimizers = LazyAdam([lazy], lr=0.05), torch.optim.SparseAdam([reference], lr=0.05)
    for grad in sparse_gradients(30, steps=8, seed=0):
        for param, optimizer in zip((lazy, reference), optimizers, strict=True):
            param.grad = grad.clone()
            optimizer.step()
    assert not torch.equal(lazy.detach(), start)
    # Float32 tolerances: the two order their arithmetic differently, and SparseAdam adds its eps to the
    # root before the bias correction, Adam and LazyAdam after (a 1e-8 apart).
    torch.testing.assert_close(lazy.detach(), reference.detach())
    torch.testing.assert_close(optimizers[0].state[lazy]["exp_avg_sq"], optimizers[1].state[reference]["exp_avg_sq"])


def test_lazy_adam_on_dense_gradients_is_adam() -> None:
    start = torch.randn(6, 3, generator=torch.Generator().manual_seed(2))
    lazy, reference = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    optimizers = LazyAdam([lazy], lr=0.05), torch.optim.Adam([reference], lr=0.05)
    generator = torch.Generator().manual_seed(3)
    for _ in range(5):
        grad = torch.randn(6, 3, generator=generator)
        for param, optimizer in zip((lazy, reference), optimizers, strict=True):
            param.grad = grad.clone()
            optimizer.step()
    torch.testing.assert_close(lazy.detach(), reference.detach())


def test_row_wise_adagrad_follows_its_formula_row_for_row() -> None:
    """Each row's accumulator adds the mean square of that row's summed gradient; the row moves by
    -lr * gradient / (sqrt(accumulator) + eps); rows without a gradient do not move."""
    start = torch.randn(30, 4, generator=torch.Generator().manual_seed(1))
    param = torch.nn.Parameter(start.clone())
    optimizer = RowWiseAdagrad([param], lr=0.05)
    expected, accumulator = start.clone(), torch.zeros(30)
    for grad in sparse_gradients(30, steps=8, seed=0):
        param.grad = grad.clone()
        optimizer.step()
        summed = grad.to_dense()
        touched = torch.zeros(30, dtype=torch.bool).index_fill_(0, grad._indices()[0], True)
        accumulator += torch.where(touched, summed.square().mean(1), 0.0)
        expected -= torch.where(touched[:, None], 0.05 * summed / (accumulator.sqrt()[:, None] + 1e-8), 0.0)
    assert not torch.equal(param.detach(), start)
    torch.testing.assert_close(param.detach(), expected)
    torch.testing.assert_close(optimizer.state[param]["sum"], accumulator)


def test_row_wise_adagrad_on_a_dense_gradient_is_its_sparse_step_on_every_row() -> None:
    start = torch.randn(6, 3, generator=torch.Generator().manual_seed(2))
    dense, sparse = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    optimizers = RowWiseAdagrad([dense], lr=0.05), RowWiseAdagrad([sparse], lr=0.05)
    generator = torch.Generator().manual_seed(3)
    for _ in range(5):
        grad = torch.randn(6, 3, generator=generator)
        dense.grad, sparse.grad = grad.clone(), grad.to_sparse(1)
        for optimizer in optimizers:
            optimizer.step()
    torch.testing.assert_close(dense.detach(), sparse.detach())


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
    (["model.weight_decay=0.001"], False),  # the sparse optimizer has no weight decay: the configured Adam stays
    (["+model.item_tower.sparse=false"], False),  # a tower configured explicitly is left as configured
    (["model.sparse_above=null"], False),
    (["model.sparse_optimizer=null"], False),
    (["model.sparse_optimizer.lr=0.3"], True),
])
def test_vocabularies_beyond_sparse_above_train_sparse(overrides: list[str], switched: bool, tmp_path: Path) -> None:
    from twotower.training.build import build_datamodule, build_model

    planted_interactions(n_users=60, n_items=40, n_clusters=4, seed=0).write_csv(tmp_path / "log.csv")
    cfg = compose_train(tmp_path / "run", "data=interactions", f"data.path={tmp_path / 'log.csv'}",
                        "model.sparse_above=50", *overrides)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    model = build_model(cfg, datamodule)
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, RowWiseAdagrad) is switched
    assert model.user_tower.embedding.sparse is switched
    if switched:
        assert optimizer.defaults["lr"] == cfg.model.sparse_optimizer.lr


def built_model(tmp_path: Path, *overrides: str) -> TwoTowerModel:
    from twotower.training.build import build_datamodule, build_model

    planted_interactions(n_users=60, n_items=40, n_clusters=4, seed=0).write_csv(tmp_path / "log.csv")
    cfg = compose_train(tmp_path / "run", "data=interactions", f"data.path={tmp_path / 'log.csv'}", *overrides)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    return build_model(cfg, datamodule)


def test_model_sparse_switches_at_any_size(tmp_path: Path) -> None:
    model = built_model(tmp_path, "model=sparse")  # 100 ids, far below the default limit
    assert model.user_tower.embedding.sparse and model.item_tower.embedding.sparse
    assert isinstance(model.configure_optimizers(), RowWiseAdagrad)


@pytest.mark.parametrize("override", ["model.weight_decay=0.001", "model.optimizer._target_=torch.optim.SGD"])
def test_model_sparse_refuses_what_it_cannot_switch_from(override: str, tmp_path: Path) -> None:
    with pytest.raises(TwoTowerError, match="model=sparse needs plain ID towers, Adam and no weight decay"):
        built_model(tmp_path, "model=sparse", override)


def test_a_default_run_past_sparse_above_exports_a_checkpoint_that_loads_as_trained(tmp_path: Path) -> None:
    from twotower.serving.retrieval import Retriever

    planted_interactions(n_users=60, n_items=40, n_clusters=4, seed=0).write_csv(tmp_path / "log.csv")
    train(compose_train(tmp_path / "run", "data=interactions", f"data.path={tmp_path / 'log.csv'}",
                        "model.sparse_above=50", "trainer.max_epochs=2", "model.temperature=0.15", "index=exact"))
    # The default history tower became a sparse ID tower; loading the checkpoint, without an optimizer, too.
    model = TwoTowerModel.load_from_checkpoint(tmp_path / "run" / "checkpoints" / "final.ckpt", map_location="cpu")
    assert type(model.user_tower).__name__ == "IdTower" and model.user_tower.embedding.sparse
    assert len(Retriever.load(tmp_path / "run").recommend(0, k=3).records()) == 3
