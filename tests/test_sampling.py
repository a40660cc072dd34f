import torch

from twotower.data.sampling import NegativeSampler


def test_no_known_positive_is_a_valid_negative() -> None:
    generator = torch.Generator().manual_seed(0)
    users = torch.randint(50, (2000,), generator=generator)
    items = torch.randint(40, (2000,), generator=generator)  # dense: many collisions to reject
    sampler = NegativeSampler(n_negatives=8).fit(users, items, n_items=40)
    negatives, valid = sampler.sample(users, torch.Generator().manual_seed(1))
    known = set(zip(users.tolist(), items.tolist(), strict=True))
    pairs = zip(users.repeat_interleave(8).tolist(), negatives.reshape(-1).tolist(), strict=True)
    labelled_negative = [pair for pair, ok in zip(pairs, valid.reshape(-1).tolist(), strict=True) if ok]
    assert labelled_negative and not any(pair in known for pair in labelled_negative)


def test_user_who_has_seen_everything_gets_no_valid_negative() -> None:
    users = torch.zeros(5, dtype=torch.long)
    items = torch.arange(5)
    sampler = NegativeSampler(n_negatives=3, max_rounds=5).fit(users, items, n_items=5)
    _, valid = sampler.sample(torch.zeros(2, dtype=torch.long), torch.Generator().manual_seed(0))
    assert not valid.any()


def test_popularity_sampler_follows_counts_to_the_power_alpha() -> None:
    items = torch.tensor([0] * 900 + [1] * 100)
    users = torch.arange(1000)
    sampler = NegativeSampler(n_negatives=1, distribution="popularity", alpha=0.5).fit(users, items, n_items=3)
    draws = sampler.draw((200_000,), torch.Generator().manual_seed(0))
    share = torch.bincount(draws, minlength=3).double() / len(draws)
    expected = torch.tensor([30.0, 10.0, 0.0]) / 40.0  # sqrt(900) : sqrt(100) : 0
    assert torch.allclose(share, expected.double(), atol=0.01)
    assert torch.allclose(sampler.log_prob(torch.tensor([0, 1])).exp(), expected[:2], atol=1e-6)


def test_sampling_is_reproducible() -> None:
    users, items = torch.arange(100), torch.arange(100) % 30
    sampler = NegativeSampler().fit(users, items, n_items=30)
    first = sampler.sample(users, torch.Generator().manual_seed(5))[0]
    second = sampler.sample(users, torch.Generator().manual_seed(5))[0]
    assert torch.equal(first, second)
