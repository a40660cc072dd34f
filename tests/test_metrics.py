import math

import numpy as np
import pytest
import torch

from twotower.data.batches import RankingBatch, RankingBatches
from twotower.data.user_items import UserItems
from twotower.model.metrics import PriorTrials, RankingMetrics, Trial, exclude_and_rank, ranking_metrics
from twotower.training.evaluation import popularity_metrics
from twotower.training.prior import choose


def test_metrics_on_a_hand_ranked_list() -> None:
    hits = torch.tensor([[False, True, False, True]])  # hits at ranks 2 and 4, three held-out items
    results = ranking_metrics(hits, torch.tensor([3]), ks=[2, 4])
    assert results["recall@2"].item() == pytest.approx(1 / 3)
    assert results["recall@4"].item() == pytest.approx(2 / 3)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert results["ndcg@4"].item() == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / ideal)
    assert results["ndcg@2"].item() == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert results["mrr@4"].item() == pytest.approx(0.5)
    assert results["hitrate@2"].item() == 1.0


def test_seen_items_are_excluded_and_coverage_counts_distinct_items() -> None:
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0], [5.0, 4.0, 3.0, 2.0]])
    batch = RankingBatch(users=torch.tensor([0, 1]),
                         seen_rows=torch.tensor([0]), seen_items=torch.tensor([0]),  # user 0 has seen item 0
                         target_rows=torch.tensor([0, 1]), target_items=torch.tensor([1, 3]))
    metrics = RankingMetrics(n_items=4, ks=[1])
    metrics.update(scores, batch)
    results = metrics.compute()
    assert results["recall@1"].item() == pytest.approx(0.5)  # user 0 finds item 1 first; user 1 misses
    assert results["coverage@1"].item() == pytest.approx(0.5)  # items 1 and 0 were recommended


def evaluate(chunk_size: int, users: torch.Tensor, items: torch.Tensor, seen: UserItems, targets: UserItems) -> dict:
    chunks = RankingBatches(seen, targets, chunk_size)
    metrics = RankingMetrics(len(items), ks=[5, 10])
    for index in range(len(chunks)):
        batch = chunks[index]
        metrics.update(users[batch.users] @ items.T, batch)
    return {name: value.item() for name, value in metrics.compute().items()}


def test_metrics_do_not_depend_on_the_chunk_size() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items = 97, 60
    users = torch.from_numpy(rng.normal(size=(n_users, 8))).float()
    items = torch.from_numpy(rng.normal(size=(n_items, 8))).float()
    pairs = np.unique(rng.integers(0, [n_users, n_items], size=(1500, 2)), axis=0)
    held_out = rng.random(len(pairs)) < 0.2
    seen = UserItems.from_pairs(pairs[~held_out, 0], pairs[~held_out, 1], n_users)
    targets = UserItems.from_pairs(pairs[held_out, 0], pairs[held_out, 1], n_users)
    reference = evaluate(1, users, items, seen, targets)
    for chunk_size in (7, 32, 1000):
        assert evaluate(chunk_size, users, items, seen, targets) == reference


@pytest.mark.parametrize("n_items", [20, 400])
def test_the_popularity_pass_ranks_as_the_whole_catalogue_would(n_items: int) -> None:
    # It ranks only the head of the popularity order each user's top k can come from: the metrics must be those
    # of ranking every item (a catalogue scored by count, ties to the lower index), coverage included. At 20
    # items some users have seen so many that the head is the whole catalogue; at 400 it is a tenth of it.
    rng = np.random.default_rng(1)
    n_users = 150
    counts = rng.poisson(3.0, size=n_items)  # many ties
    pairs = np.unique(np.stack([rng.integers(0, n_users, 4000), rng.zipf(1.3, 4000) % n_items], 1), axis=0)
    held_out = rng.random(len(pairs)) < 0.2
    seen = UserItems.from_pairs(pairs[~held_out, 0], pairs[~held_out, 1], n_users)
    targets = UserItems.from_pairs(pairs[held_out, 0], pairs[held_out, 1], n_users)
    by_count = np.lexsort((np.arange(n_items), -counts))  # every item's place in the order
    score = np.empty(n_items, dtype=np.float32)
    score[by_count] = np.arange(n_items, 0, -1)
    ranked_all = evaluate(5, torch.ones(n_users, 1), torch.from_numpy(score)[:, None], seen, targets)
    fast = popularity_metrics(counts, seen, targets, ks=[5, 10])
    assert fast.pop("users") == np.count_nonzero(np.diff(targets.indptr))
    assert fast == pytest.approx(ranked_all, abs=1e-6)
    assert fast["recall@10"] > 0


def test_prior_trials_rank_each_weight_as_its_own_scores_and_pair_the_users() -> None:
    rng = np.random.default_rng(3)
    n_users, n_items, weights = 120, 50, (0.0, 0.5, 2.0)
    users = torch.from_numpy(rng.normal(size=(n_users, 6))).float()
    items = torch.from_numpy(rng.normal(size=(n_items, 6))).float()
    prior = torch.from_numpy(rng.exponential(size=n_items)).float()
    pairs = np.unique(rng.integers(0, [n_users, n_items], size=(1200, 2)), axis=0)
    held_out = rng.random(len(pairs)) < 0.3
    seen = UserItems.from_pairs(pairs[~held_out, 0], pairs[~held_out, 1], n_users)
    targets = UserItems.from_pairs(pairs[held_out, 0], pairs[held_out, 1], n_users)
    chunks = RankingBatches(seen, targets, 32)
    trials = PriorTrials(n_items, [5, 10], weights, "ndcg@10")
    alone = {weight: RankingMetrics(n_items, [5, 10]) for weight in weights}
    per_user = {weight: [] for weight in weights}
    for index in range(len(chunks)):
        batch = chunks[index]
        scores = users[batch.users] @ items.T
        trials.update(scores, prior, batch)
        for weight in weights:
            alone[weight].update(scores + weight * prior, batch)
            _, hits = exclude_and_rank(scores + weight * prior, batch, 10)
            n_targets = torch.bincount(batch.target_rows, minlength=len(batch.users))
            per_user[weight].append(ranking_metrics(hits, n_targets, [10])["ndcg@10"].double())
    results = trials.compute()
    baseline = torch.cat(per_user[0.0]).numpy()
    for weight in weights:
        expected = {name: value.item() for name, value in alone[weight].compute().items()}
        assert {name: results[weight].metrics[name] for name in expected} == pytest.approx(expected, rel=1e-6)
        differences = torch.cat(per_user[weight]).numpy() - baseline
        assert results[weight].gain == pytest.approx(differences.mean(), abs=1e-9)
        standard_error = differences.std(ddof=1) / math.sqrt(len(differences))  # users with a held-out item
        assert results[weight].gain_se == pytest.approx(standard_error, rel=1e-6)
    assert results[2.0].gain_se > 0 and results[0.0].gain == results[0.0].gain_se == 0


def test_a_prior_weight_is_chosen_only_on_evidence() -> None:
    def trial(ndcg: float, gain: float, se: float) -> Trial:
        return Trial({"ndcg@20": ndcg}, gain, se)

    results = {0.0: trial(0.100, 0, 0), 0.5: trial(0.103, 0.003, 0.001), 1.0: trial(0.104, 0.004, 0.0025)}
    best, ratios = choose(results, "ndcg@20", evidence=2)
    assert best == 0.5 and ratios == pytest.approx({0.5: 3.0, 1.0: 1.6})  # 1.0 scores best, within its noise
    assert choose(results, "ndcg@20", evidence=1)[0] == 1.0
    assert choose(results, "ndcg@20", evidence=4)[0] == 0.0  # no weight shows enough: the towers alone
    assert choose(results, "ndcg@20", evidence=0)[0] == 1.0
    worse = {0.0: trial(0.100, 0, 0), 0.5: trial(0.099, -0.001, 0.0001)}
    assert choose(worse, "ndcg@20", evidence=0)[0] == 0.0
