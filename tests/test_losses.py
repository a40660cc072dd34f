import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from twotower.data.batches import BatchPlan, PairBatch, SampledCatalogue
from twotower.errors import TwoTowerError
from twotower.model.losses import BPRLoss, PointwiseLoss, SampledSoftmaxLoss, build_loss
from twotower.model.towers import IdTower, build_tower


def batch_of(items: list[int], negatives: list[list[int]], log_q_items=None, log_q_negatives=None,
             valid: list[list[bool]] | None = None) -> PairBatch:
    negatives_t = torch.tensor(negatives)
    return PairBatch(
        users=torch.zeros(len(items), dtype=torch.long),
        items=torch.tensor(items),
        negatives=negatives_t,
        negatives_valid=torch.ones_like(negatives_t, dtype=torch.bool) if valid is None else torch.tensor(valid),
        items_log_q=torch.zeros(len(items)) if log_q_items is None else torch.tensor(log_q_items),
        negatives_log_q=torch.zeros(negatives_t.shape) if log_q_negatives is None else torch.tensor(log_q_negatives),
    )


def one_dim(values: list[float]) -> torch.Tensor:
    return torch.tensor(values).unsqueeze(-1)


def test_bce_on_hand_computed_logits() -> None:
    users, items = one_dim([1.0]), one_dim([2.0])  # positive logit 2
    negatives = torch.tensor([[[-1.0], [0.5]]])  # negative logits -1, 0.5
    loss = PointwiseLoss("bce")(users, items, negatives, batch_of([0], [[1, 2]]))
    expected = (-math.log(torch.sigmoid(torch.tensor(2.0)).item())
                - math.log(1 - torch.sigmoid(torch.tensor(-1.0)).item())
                - math.log(1 - torch.sigmoid(torch.tensor(0.5)).item())) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_mse_uses_plus_minus_one_labels() -> None:
    users, items = one_dim([1.0]), one_dim([0.5])
    negatives = torch.tensor([[[0.25]]])
    loss = PointwiseLoss("mse")(users, items, negatives, batch_of([0], [[1]]))
    assert loss.item() == pytest.approx(((0.5 - 1) ** 2 + (0.25 + 1) ** 2) / 2)


def test_invalid_negatives_do_not_count() -> None:
    users, items = one_dim([1.0]), one_dim([2.0])
    negatives = torch.tensor([[[-1.0], [100.0]]])
    batch = batch_of([0], [[1, 2]], valid=[[True, False]])
    masked = BPRLoss()(users, items, negatives, batch)
    assert masked.item() == pytest.approx(-F.logsigmoid(torch.tensor(3.0)).item(), rel=1e-6)


def test_softmax_removes_accidental_hits() -> None:
    # Row 0's positive item 7 also appears as row 1's positive and as a sampled negative.
    users = one_dim([1.0, 1.0])
    items = one_dim([1.0, 3.0])
    negatives = torch.tensor([[[3.0]], [[0.0]]])
    batch = batch_of([7, 7], [[7], [8]])
    loss = SampledSoftmaxLoss(logq_correction=False)(users, items, negatives, batch)
    # Row 0 keeps only its own positive (logit 1) and item 8 (logit 0); row 1 likewise (3 vs 0).
    expected = (-F.log_softmax(torch.tensor([1.0, 0.0]), 0)[0] - F.log_softmax(torch.tensor([3.0, 0.0]), 0)[0]) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    kept = SampledSoftmaxLoss(logq_correction=False, remove_accidental_hits=False)(users, items, negatives, batch)
    assert kept.item() > loss.item()


def test_logq_correction_pushes_popular_negatives_down_less() -> None:
    """With equal scores, a popular negative (high q) gets a smaller gradient than a rare one."""
    users = one_dim([1.0])
    negatives_vectors = torch.zeros(1, 2, 1, requires_grad=True)
    items = one_dim([0.0])
    popular, rare = math.log(0.5), math.log(0.01)
    batch = batch_of([0], [[1, 2]], log_q_items=[math.log(0.1)], log_q_negatives=[[popular, rare]])
    SampledSoftmaxLoss(logq_correction=True)(users, items, negatives_vectors, batch).backward()
    popular_grad, rare_grad = negatives_vectors.grad.reshape(-1).tolist()
    # The gradient on a negative's vector is softmax probability * user: positive pushes its score down.
    assert 0 < popular_grad < rare_grad
    negatives_vectors.grad = None
    SampledSoftmaxLoss(logq_correction=False)(users, items, negatives_vectors, batch).backward()
    uncorrected = negatives_vectors.grad.reshape(-1).tolist()
    assert uncorrected[0] == pytest.approx(uncorrected[1])
    assert popular_grad < uncorrected[0] < rare_grad


def test_build_loss_and_tower_from_specs() -> None:
    assert isinstance(build_loss({"_target_": "twotower.model.losses.BPRLoss"}), BPRLoss)
    softmax = build_loss({"_target_": "twotower.model.losses.SampledSoftmaxLoss", "logq_correction": False})
    assert softmax.logq_correction is False
    with pytest.raises(TwoTowerError, match="unknown loss"):
        build_loss({"_target_": "torch.nn.HingeEmbeddingLoss"})
    tower = build_tower({"_target_": "twotower.model.towers.IdTower"}, "item", n=10, dim=4, n_items=10)
    assert isinstance(tower, IdTower)
    assert tower(torch.tensor([1, 2])).shape == (2, 4)
    assert tower.all().shape == (10, 4)


def test_a_sample_of_every_item_gives_the_whole_catalogue_loss() -> None:
    """A sample without replacement as large as the catalogue is the catalogue: the sampled estimate, with
    each positive counted once (though every positive was also drawn), must equal the exact softmax."""
    from twotower.data.batches import UserBatches
    from twotower.data.user_items import UserItems
    from twotower.model.losses import CatalogueSoftmaxLoss

    positives = UserItems.from_pairs(np.array([0, 0, 1, 2, 2, 2]), np.array([3, 5, 0, 1, 3, 7]), 3)
    whole = UserBatches(positives, 8, batch_size=3, seed=0)[0, 0]
    candidates = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    sampled = dataclasses.replace(whole, candidates=SampledCatalogue(
        candidates, torch.tensor(0.0), torch.ones(len(whole.items), dtype=torch.bool)))  # log q = log(8 / 8)
    generator = torch.Generator().manual_seed(0)
    users, items = torch.randn(3, 4, generator=generator), torch.randn(8, 4, generator=generator)
    exact = CatalogueSoftmaxLoss()(users, items, whole)
    estimate = CatalogueSoftmaxLoss()(users, items[candidates], sampled, positives=items[whole.items])
    assert torch.allclose(exact, estimate, atol=1e-5)


def test_sampled_candidates_are_distinct_and_say_which_positives_they_hold() -> None:
    from twotower.data.batches import UserBatches
    from twotower.data.user_items import UserItems

    positives = UserItems.from_pairs(np.repeat(np.arange(50), 4), np.arange(200) % 97, 50)
    batch = UserBatches(positives, 97, batch_size=50, seed=0, candidates=30)[0, 0]
    assert len(batch.candidates.items) == len(set(batch.candidates.items.tolist())) == 30
    assert torch.isclose(batch.candidates.log_q, torch.tensor(math.log(30 / 97)))
    # Over many batches, windows that wrap around the end of the epoch's order included.
    batches = UserBatches(positives, 97, batch_size=5, seed=0, candidates=30)
    for epoch, index in itertools.product(range(3), range(len(batches))):
        batch = batches[epoch, index]
        assert len(set(batch.candidates.items.tolist())) == 30
        assert torch.equal(batch.candidates.has_positive, torch.isin(batch.items, batch.candidates.items))


def test_sampled_candidates_are_uniform_over_the_catalogue_and_a_function_of_epoch_and_batch() -> None:
    """Every item is drawn at the rate max_candidates / n_items (within sampling noise over many batches),
    and a batch's draw depends only on (seed, epoch, batch), not on what was drawn before it."""
    from twotower.data.batches import UserBatches
    from twotower.data.user_items import UserItems

    positives = UserItems.from_pairs(np.arange(400), np.arange(400) % 97, 400)
    batches = UserBatches(positives, 97, batch_size=1, seed=0, candidates=30)
    counts = torch.zeros(97)
    for epoch in range(5):
        for index in range(len(batches)):
            counts[batches[epoch, index].candidates.items] += 1
    expected = 5 * len(batches) * 30 / 97  # about 618 draws of each item; binomial sd about 21
    assert (counts - expected).abs().max() < 6 * expected**0.5
    fresh = UserBatches(positives, 97, batch_size=1, seed=0, candidates=30)
    assert torch.equal(fresh[3, 17].candidates.items, batches[3, 17].candidates.items)
    assert not torch.equal(batches[3, 18].candidates.items, batches[3, 17].candidates.items)


@pytest.mark.parametrize(("sample_above", "sampled"), [(0, True), (96, True), (97, False), (500, False)])
def test_catalogues_up_to_sample_above_are_scored_whole(sample_above: int, sampled: bool) -> None:
    from twotower.data.batches import UserBatches
    from twotower.data.user_items import UserItems

    positives = UserItems.from_pairs(np.repeat(np.arange(50), 4), np.arange(200) % 97, 50)
    plan = BatchPlan.users(97, 30, sample_above)
    batch = UserBatches(positives, 97, batch_size=50, seed=0, candidates=plan.candidates)[0, 0]
    assert (batch.candidates is not None) is sampled
    if sampled:
        assert len(batch.candidates.items) == 30


def test_row_logsumexp_matches_torch_in_value_and_gradient() -> None:
    from twotower.model.losses import RowLogSumExp

    logits = (torch.randn(5, 300, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 20)
    logits.requires_grad_()
    assert torch.allclose(RowLogSumExp.apply(logits), torch.logsumexp(logits, dim=1))
    assert torch.autograd.gradcheck(RowLogSumExp.apply, (logits,))


def test_row_logsumexp_of_half_precision_logits_is_float32_with_a_gradient_of_their_dtype() -> None:
    from twotower.model.losses import RowLogSumExp

    logits = (torch.randn(4, 16_384, generator=torch.Generator().manual_seed(0)) * 5).bfloat16().requires_grad_()
    value = RowLogSumExp.apply(logits)
    assert value.dtype == torch.float32
    assert torch.allclose(value, torch.logsumexp(logits.float(), dim=1), atol=1e-4)
    value.sum().backward()
    assert logits.grad.dtype == torch.bfloat16
    assert torch.allclose(logits.grad.float(), torch.softmax(logits.float(), dim=1), atol=1e-3)
