"""Batches built by slicing tensors: training positives with sampled negatives, training users with all their
positives, and ranking-evaluation chunks.

The data loaders run with ``batch_size=None``: each dataset item *is* a batch, so there is no per-row
Python work and no collation. ``EpochBatchSampler`` hands out ``(epoch, batch)`` keys; the dataset derives
everything random from ``(seed, epoch, batch)``, which makes an epoch reproducible on its own (a run resumed
from an end-of-epoch checkpoint continues exactly as an uninterrupted one) and lets several processes each
take their own share of batches without talking to each other.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from twotower.data.sampling import NegativeSampler
from twotower.data.user_items import UserItems

Batch = dict[str, torch.Tensor]


def process_share() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpochBatchSampler(Sampler):
    """Yields ``(epoch, batch_index)`` for this process's share of the batches.

    Lightning calls ``set_epoch`` before each epoch. Under DDP every process takes every world-size-th
    batch, and all take the same number so no process waits on another at the gradient sync.
    """

    def __init__(self, n_batches: int) -> None:
        self.n_batches = n_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _mine(self) -> range:
        rank, world = process_share()
        per_process = self.n_batches // world if world > 1 else self.n_batches
        return range(rank, rank + per_process * world, world)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, batch) for batch in self._mine())

    def __len__(self) -> int:
        return len(self._mine())


class EpochOrder:
    """The shuffled order of ``n`` rows in an epoch, a function of (seed, epoch) only (the latest is kept)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self._latest: tuple[int, torch.Tensor] | None = None

    def __call__(self, epoch: int) -> torch.Tensor:
        if self._latest is None or self._latest[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._latest = (epoch, torch.randperm(self.n, generator=generator))
        return self._latest[1]


def batch_generator(seed: int, epoch: int, batch: int) -> torch.Generator:
    """The random stream of one batch: a function of (seed, epoch, batch) only."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_033 + batch)


class TrainBatches(Dataset):
    """Training batches of positives ``(users, items)`` with ``negatives`` drawn by the sampler.

    Each batch also carries ``log_q`` of its positives and negatives: the log of the expected number of
    times the item appears among that batch's candidates (in-batch positives follow item frequency,
    sampled negatives the sampler's distribution). Sampled-softmax losses subtract it (logQ correction).
    """

    def __init__(self, users: torch.Tensor, items: torch.Tensor, batch_size: int, sampler: NegativeSampler,
                 seed: int) -> None:
        self.users = users
        self.items = items
        self.batch_size = batch_size
        self.sampler = sampler
        self.seed = seed
        self.order = EpochOrder(len(users), seed)

    def __len__(self) -> int:
        return math.ceil(len(self.users) / self.batch_size)

    def __getitem__(self, key: tuple[int, int]) -> Batch:
        epoch, batch = key
        rows = self.order(epoch)[batch * self.batch_size:(batch + 1) * self.batch_size]
        users, items = self.users[rows].long(), self.items[rows].long()
        negatives, valid = self.sampler.sample(users, batch_generator(self.seed, epoch, batch))
        return {
            "users": users,
            "items": items,
            "negatives": negatives,
            "negatives_valid": valid,
            "items_log_q": self.log_expected_count(items, len(rows), negatives.numel()),
            "negatives_log_q": self.log_expected_count(negatives, len(rows), negatives.numel()),
        }

    def log_expected_count(self, items: torch.Tensor, in_batch: int, sampled: int) -> torch.Tensor:
        """log E[times each item is a candidate] = log(in_batch * frequency + sampled * sampler prob)."""
        return (in_batch * self.sampler.frequency[items] + sampled * self.sampler.probs[items]).log().float()


class UserBatches(Dataset):
    """Training batches of users, each with every one of its training positives, for losses whose example
    is a user (``loss=catalogue``): ``users`` (B,), and the positives as ``rows`` (position in ``users``) and
    ``items``, both (P,).

    A catalogue larger than ``sample_above`` and ``max_candidates`` is represented in each batch by
    ``candidates``, ``max_candidates`` distinct items drawn uniformly without replacement (shared by the
    batch), with ``candidates_log_q``, the log of every candidate's chance of being drawn (a scalar: the draw
    is uniform), and ``positives_sampled`` (P,), whether each positive is among them; a smaller catalogue is
    scored whole and the batch carries no candidates. ``draws`` (P,) are uniform numbers a history tower's
    dropout reads, so that everything random in a step comes from (seed, epoch, batch).

    A batch's candidates are a window of a random permutation of the catalogue drawn once per epoch, at a
    random offset, wrapping around: any fixed window of a uniform permutation is a uniform sample without
    replacement, and the batch pays O(candidates) rather than a permutation of the whole catalogue.
    """

    def __init__(self, positives: UserItems, n_items: int, batch_size: int, seed: int,
                 max_candidates: int | None = None, sample_above: int = 0) -> None:
        self.positives = positives
        self.users = torch.from_numpy(np.flatnonzero(np.diff(positives.indptr) > 0))
        self.n_items = n_items
        self.batch_size = batch_size
        self.seed = seed
        sampled = max_candidates is not None and n_items > max(max_candidates, sample_above)
        self.n_candidates = max_candidates if sampled else None
        self.order = EpochOrder(len(self.users), seed)
        self.catalogue_order = EpochOrder(n_items, seed + 1)  # not the users' order when as many

    def __len__(self) -> int:
        return math.ceil(len(self.users) / self.batch_size)

    def __getitem__(self, key: tuple[int, int]) -> Batch:
        epoch, batch = key
        users = self.users[self.order(epoch)[batch * self.batch_size:(batch + 1) * self.batch_size]].numpy()
        rows, items = self.positives.gather(users)
        out = {"users": torch.from_numpy(users), "rows": torch.from_numpy(rows), "items": torch.from_numpy(items)}
        generator = batch_generator(self.seed, epoch, batch)
        if self.n_candidates is not None:
            out |= self.candidates(epoch, out["items"], generator)
        # A uniform draw per positive, for a history tower's dropout: part of the batch, so that a resumed run
        # draws what an uninterrupted one does.
        out["draws"] = torch.rand(len(items), generator=generator)
        return out

    def candidates(self, epoch: int, positives: torch.Tensor, generator: torch.Generator) -> Batch:
        """The batch's sampled candidates (a window of the epoch's catalogue order), their log q, and which
        of the batch's positives they hold."""
        start = int(torch.randint(self.n_items, (1,), generator=generator))
        candidates = self.catalogue_order(epoch)[(torch.arange(self.n_candidates) + start) % self.n_items]
        drawn = torch.zeros(self.n_items, dtype=torch.bool).index_fill_(0, candidates, True)
        return {"candidates": candidates,
                "candidates_log_q": torch.tensor(math.log(self.n_candidates / self.n_items)),
                "positives_sampled": drawn[positives]}


def eval_chunk_size(n_items: int, budget: int = 1 << 24) -> int:
    """Users per evaluation chunk so that a chunk's (users x items) score matrix stays near ``budget``."""
    return int(min(4096, max(1, budget // max(n_items, 1))))


class RankingBatches(Dataset):
    """Chunks of users to rank against the whole catalogue, with what to exclude and what to find.

    Chunk ``c`` holds ``users`` and, as (row in chunk, item) pairs, their ``seen`` items (excluded from
    the ranking) and their ``target`` items (the held-out positives).
    """

    def __init__(self, seen: UserItems, targets: UserItems, chunk_size: int) -> None:
        self.seen = seen
        self.targets = targets
        self.users = np.flatnonzero(np.diff(targets.indptr) > 0)
        self.chunk_size = chunk_size

    def __len__(self) -> int:
        return math.ceil(len(self.users) / self.chunk_size)

    def __getitem__(self, chunk: int) -> Batch:
        users = self.users[chunk * self.chunk_size:(chunk + 1) * self.chunk_size]
        seen_rows, seen_items = self.seen.gather(users)
        target_rows, target_items = self.targets.gather(users)
        return {name: torch.from_numpy(array) for name, array in {
            "users": users, "seen_rows": seen_rows, "seen_items": seen_items,
            "target_rows": target_rows, "target_items": target_items}.items()}


class ShardedChunks(Sampler):
    """This process's share of evaluation chunks (all of them when not distributed)."""

    def __init__(self, n_chunks: int) -> None:
        self.n_chunks = n_chunks

    def __iter__(self) -> Iterator[int]:
        rank, world = process_share()
        return iter(range(rank, self.n_chunks, world))

    def __len__(self) -> int:
        rank, world = process_share()
        return len(range(rank, self.n_chunks, world))
