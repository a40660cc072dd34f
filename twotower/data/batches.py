"""Typed batches, built by slicing tensors: training pairs with sampled negatives (``PairBatch``), training users
with all their positives (``UserBatch``), users' item sequences with the next item at every position
(``SequenceBatch``), and ranking-evaluation chunks (``RankingBatch``); and the ``BatchPlan`` that says which
kind a model trains on.

The data loaders run with ``batch_size=None``: each dataset item *is* a batch, so there is no per-row
Python work and no collation. ``EpochBatchSampler`` hands out ``(epoch, batch)`` keys; the dataset derives
everything random from ``(seed, epoch, batch)``, which makes an epoch reproducible on its own (a run resumed
from an end-of-epoch checkpoint continues exactly as an uninterrupted one) and lets several processes each
take their own share of batches without talking to each other.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from twotower.data.sampling import NegativeSampler
from twotower.data.user_items import UserItems

T = TypeVar("T", bound="Tensors")


class Tensors:
    """A dataclass of tensors (and of such dataclasses) that moves to a device as a whole: Lightning calls
    ``to`` on a batch that has it."""

    def to(self: T, device: torch.device | str, non_blocking: bool = False) -> T:
        def moved(value: object) -> object:
            if isinstance(value, (torch.Tensor, Tensors)):
                return value.to(device, non_blocking=non_blocking)
            return value

        return dataclasses.replace(self, **{field.name: moved(getattr(self, field.name))
                                            for field in dataclasses.fields(self)})


@dataclass(frozen=True)
class PairBatch(Tensors):
    """(user, positive item) pairs with sampled negatives: the examples of the losses over pairs.

    ``items_log_q`` and ``negatives_log_q`` are the log of the expected number of times each item appears
    among the batch's candidates (in-batch positives follow item frequency, sampled negatives the sampler's
    distribution): a sampled softmax subtracts them (logQ correction).
    """

    users: torch.Tensor  # (B,)
    items: torch.Tensor  # (B,) each pair's positive
    negatives: torch.Tensor  # (B, n)
    negatives_valid: torch.Tensor  # (B, n) bool: False where redrawing kept hitting a known positive
    items_log_q: torch.Tensor  # (B,)
    negatives_log_q: torch.Tensor  # (B, n)

    @property
    def positives(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class SampledCatalogue(Tensors):
    """The items that stand for a large catalogue in one batch: distinct items drawn uniformly."""

    items: torch.Tensor  # (C,)
    log_q: torch.Tensor  # (): the log of every candidate's chance of being drawn (the draw is uniform)
    has_positive: torch.Tensor  # (P,) bool: whether each of the batch's positives is among them


@dataclass(frozen=True)
class UserBatch(Tensors):
    """Users, each with every one of its training positives: the examples of the losses over users. The
    positives are ``(rows, items)`` pairs, ``rows`` the position of their user in ``users``, ascending."""

    users: torch.Tensor  # (U,)
    rows: torch.Tensor  # (P,)
    items: torch.Tensor  # (P,)
    # (P,) uniform numbers a history tower's dropout reads: part of the batch, so that a resumed run draws
    # what an uninterrupted one does
    draws: torch.Tensor
    candidates: SampledCatalogue | None = None  # None: the whole catalogue is scored

    @property
    def positives(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class SequenceBatch(Tensors):
    """Users' training items in order, oldest first, each position's next item a positive: the examples of a
    user tower that reads order. ``inputs`` holds each user's last items right-aligned (``-1`` pads the start);
    a query is one position of one sequence, whose next item is its positive, so that a loss over users reads
    the queries as users with one positive each (``rows`` is ``arange(P)``)."""

    users: torch.Tensor  # (U,)
    inputs: torch.Tensor  # (U, L) item ids, -1 before a sequence's first
    query_rows: torch.Tensor  # (P,) the sequence of each query
    query_positions: torch.Tensor  # (P,) its position in ``inputs``
    rows: torch.Tensor  # (P,) arange(P)
    items: torch.Tensor  # (P,) the item that follows each query's position
    candidates: SampledCatalogue | None = None  # None: the whole catalogue is scored

    @property
    def positives(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class RankingBatch(Tensors):
    """Users to rank against the whole catalogue, with their ``seen`` items (left out of the ranking) and their
    ``target`` items (the held-out positives to find), both as (row in ``users``, item) pairs."""

    users: torch.Tensor  # (U,)
    seen_rows: torch.Tensor
    seen_items: torch.Tensor
    target_rows: torch.Tensor
    target_items: torch.Tensor


@dataclass(frozen=True)
class BatchPlan:
    """What one training batch holds, as the loss needs it. A loss makes it (``plan``) once the catalogue's size
    is known; the datamodule makes its batches by it, and the sizing of ``auto`` options reads its cost.

    ``examples``: the batch type the loss trains on; ``candidates``: for losses over users, the items that
    stand for the catalogue in each batch (None: all of them).
    """

    examples: type[PairBatch] | type[UserBatch] | type[SequenceBatch]
    candidates: int | None = None
    length: int | None = None  # the items of a sequence a batch holds (SequenceBatch)

    @classmethod
    def users(cls, n_items: int, max_candidates: int | None, sample_above: int) -> BatchPlan:
        """Batches of users, scoring a shared uniform sample of ``max_candidates`` items where the catalogue
        has more than both ``max_candidates`` and ``sample_above`` items (below that, a sample of most of the
        catalogue would cost about as much and lose the exact objective), else the whole catalogue."""
        sampled = max_candidates is not None and n_items > max(max_candidates, sample_above)
        return cls(UserBatch, max_candidates if sampled else None)

    def scored_per_user(self, n_items: int) -> int:
        """Items each training user is scored against in an epoch (losses over users)."""
        return self.candidates or n_items

    def in_sequences(self, length: int, candidates: int | None) -> BatchPlan:
        """The same loss over users, its users read in order (each user's last ``length`` items a sequence, each
        position a query), against ``candidates`` sampled items (None: the whole catalogue)."""
        return dataclasses.replace(self, examples=SequenceBatch, length=length, candidates=candidates)


def process_share() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def planned_process(devices: int = 1, nodes: int = 1) -> tuple[int, int]:
    """(rank, world size) this process will have once training starts, known before the process group is: from
    a launcher's environment (torchrun's ``RANK`` and ``WORLD_SIZE``; SLURM's ``SLURM_PROCID`` and
    ``SLURM_NTASKS`` where it starts the processes; Lightning's ``NODE_RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``
    in the processes it starts, ``devices`` per node), else this is the first of the ``devices`` x ``nodes``
    processes the trainer will start."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
    world = int(os.environ.get("WORLD_SIZE", devices * nodes))
    return int(os.environ.get("NODE_RANK", "0")) * devices + int(os.environ.get("LOCAL_RANK", "0")), world


def across_processes(count: int, op: str = "min") -> int:
    """``count`` reduced over the processes (``min``, ``max`` or ``sum``); ``count`` itself when not distributed.
    Every process must call it at the same point."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return count
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor(count, dtype=torch.long, device=device)
    dist.all_reduce(value, op={"min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX, "sum": dist.ReduceOp.SUM}[op])
    return int(value)


class EpochBatchSampler(Sampler):
    """Yields ``(epoch, batch_index)`` for this process's share of the batches.

    Lightning calls ``set_epoch`` before each epoch. Under DDP every process takes every world-size-th
    batch, and all take the same number so no process waits on another at the gradient sync. With
    ``own_data`` each process's dataset is its own share of the log (a prepared log's shards): every process
    takes as many of its own batches as the process with the fewest has (uneven shards would hang the sync),
    and since the batches reshuffle every epoch, what a process leaves out differs from epoch to epoch.
    """

    def __init__(self, n_batches: int, own_data: bool = False) -> None:
        self.n_batches = n_batches
        self.own_data = own_data
        self.epoch = 0
        self._equal_share: int | None = None  # agreed once, by every process at the same call

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _mine(self) -> range:
        if self.own_data:
            if self._equal_share is None:
                self._equal_share = across_processes(self.n_batches, "min")
            return range(self._equal_share)
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


class PairBatches(Dataset):
    """``PairBatch``es: shuffled training positives, with negatives drawn by the sampler."""

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

    def __getitem__(self, key: tuple[int, int]) -> PairBatch:
        epoch, batch = key
        rows = self.order(epoch)[batch * self.batch_size:(batch + 1) * self.batch_size]
        users, items = self.users[rows].long(), self.items[rows].long()
        negatives, valid = self.sampler.sample(users, batch_generator(self.seed, epoch, batch))
        return PairBatch(users, items, negatives, valid,
                         items_log_q=self.log_expected_count(items, len(rows), negatives.numel()),
                         negatives_log_q=self.log_expected_count(negatives, len(rows), negatives.numel()))

    def log_expected_count(self, items: torch.Tensor, in_batch: int, sampled: int) -> torch.Tensor:
        """log E[times each item is a candidate] = log(in_batch * frequency + sampled * sampler prob)."""
        return (in_batch * self.sampler.frequency[items] + sampled * self.sampler.probs[items]).log().float()


class UserBatches(Dataset):
    """``UserBatch``es: shuffled training users, each with all of its positives, and, where ``candidates`` is
    given (``BatchPlan.candidates``), that many distinct items drawn uniformly without replacement to stand for
    the catalogue, shared by the batch.

    A batch's candidates are a window of a random permutation of the catalogue drawn once per epoch, at a
    random offset, wrapping around: any fixed window of a uniform permutation is a uniform sample without
    replacement, and the batch pays O(candidates) rather than a permutation of the whole catalogue.
    """

    def __init__(self, positives: UserItems, n_items: int, batch_size: int, seed: int,
                 candidates: int | None = None) -> None:
        self.positives = positives
        self.users = torch.from_numpy(positives.users())
        self.n_items = n_items
        self.batch_size = batch_size
        self.seed = seed
        self.n_candidates = candidates
        self.order = EpochOrder(len(self.users), seed)
        self.catalogue_order = EpochOrder(n_items, seed + 1)  # not the users' order when as many

    def __len__(self) -> int:
        return math.ceil(len(self.users) / self.batch_size)

    def __getitem__(self, key: tuple[int, int]) -> UserBatch:
        epoch, batch = key
        users = self.users[self.order(epoch)[batch * self.batch_size:(batch + 1) * self.batch_size]].numpy()
        rows, items = self.positives.gather(users)
        items = torch.from_numpy(items)
        generator = batch_generator(self.seed, epoch, batch)
        candidates = None if self.n_candidates is None else self.candidates(epoch, items, generator)
        return UserBatch(torch.from_numpy(users), torch.from_numpy(rows), items,
                         draws=torch.rand(len(items), generator=generator), candidates=candidates)

    def candidates(self, epoch: int, positives: torch.Tensor, generator: torch.Generator) -> SampledCatalogue:
        """The batch's sampled candidates: a window of the epoch's catalogue order."""
        start = int(torch.randint(self.n_items, (1,), generator=generator))
        candidates = self.catalogue_order(epoch)[(torch.arange(self.n_candidates) + start) % self.n_items]
        drawn = torch.zeros(self.n_items, dtype=torch.bool).index_fill_(0, candidates, True)
        return SampledCatalogue(candidates, torch.tensor(math.log(self.n_candidates / self.n_items)),
                                drawn[positives])


class SequenceBatches(UserBatches):
    """``SequenceBatch``es: training users with at least two items, each with its last ``length + 1`` items in
    order (the ``positives`` are ordered), and, as ``UserBatches`` draws them, sampled candidates where planned.

    A batch is as long as its longest sequence, and its users have sequences of about the same length: each
    epoch shuffles the users, sorts every window of ``BUCKET`` batches' users by length, and shuffles the order
    of the batches, so that short sequences (most of a log) are not padded to the longest ones.
    """

    BUCKET = 32  # batches whose users are sorted by length together

    def __init__(self, positives: UserItems, n_items: int, batch_size: int, seed: int, length: int,
                 candidates: int | None = None) -> None:
        super().__init__(positives, n_items, batch_size, seed, candidates)
        lengths = np.diff(positives.indptr)
        self.users = torch.from_numpy(np.flatnonzero(lengths > 1))  # one item has no next one to learn
        self.lengths = np.minimum(lengths[self.users.numpy()], length + 1)
        self.length = length
        self.order = EpochOrder(len(self.users), seed)
        self._buckets: tuple[int, list[np.ndarray]] | None = None

    def batch_users(self, epoch: int, batch: int) -> np.ndarray:
        """The users of one batch of an epoch, a function of (seed, epoch) only (the latest epoch is kept)."""
        if self._buckets is None or self._buckets[0] != epoch:
            shuffled = self.order(epoch).numpy()
            window = self.batch_size * self.BUCKET
            ordered = np.concatenate([chunk[np.argsort(self.lengths[chunk], kind="stable")]
                                      for chunk in np.split(shuffled, range(window, len(shuffled), window))])
            batches = np.array_split(ordered, range(self.batch_size, len(ordered), self.batch_size))
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 7)
            order = torch.randperm(len(batches), generator=generator).numpy()
            self._buckets = (epoch, [batches[i] for i in order])
        return self.users.numpy()[self._buckets[1][batch]]

    def __len__(self) -> int:
        return math.ceil(len(self.users) / self.batch_size)

    def __getitem__(self, key: tuple[int, int]) -> SequenceBatch:
        epoch, batch = key
        users = self.batch_users(epoch, batch)
        longest = int(np.diff(self.positives.indptr)[users].max(initial=2))
        inputs = last_items(self.positives, users, min(longest, self.length + 1))  # (U, L + 1)
        valid = (inputs[:, :-1] >= 0) & (inputs[:, 1:] >= 0)  # a position with an item and a next one
        query_rows, query_positions = np.nonzero(valid)
        items = torch.from_numpy(inputs[query_rows, query_positions + 1])
        generator = batch_generator(self.seed, epoch, batch)
        candidates = None if self.n_candidates is None else self.candidates(epoch, items, generator)
        return SequenceBatch(torch.from_numpy(users), torch.from_numpy(inputs[:, :-1]),
                             torch.from_numpy(query_rows), torch.from_numpy(query_positions),
                             torch.arange(len(items)), items, candidates)


def last_items(sequences: UserItems, users: np.ndarray, length: int) -> np.ndarray:
    """(users, length): each user's last ``length`` items, in order, right-aligned, ``-1`` before the first."""
    starts, ends = sequences.indptr[users], sequences.indptr[users + 1]
    take = np.minimum(ends - starts, length)
    out = np.full((len(users), length), -1, dtype=np.int64)
    rows = np.repeat(np.arange(len(users)), take)
    offsets = np.arange(int(take.sum())) - np.repeat(np.cumsum(take) - take, take)  # 0.. within each user
    columns = length - np.repeat(take, take) + offsets
    out[rows, columns] = sequences.items[np.repeat(ends - take, take) + offsets]
    return out


def eval_chunk_size(n_items: int, budget: int = 1 << 24) -> int:
    """Users per evaluation chunk so that a chunk's (users x items) score matrix stays near ``budget``."""
    return int(min(4096, max(1, budget // max(n_items, 1))))


class RankingBatches(Dataset):
    """``RankingBatch``es: chunks of the users with targets, with what to leave out and what to find."""

    def __init__(self, seen: UserItems, targets: UserItems, chunk_size: int) -> None:
        self.seen = seen
        self.targets = targets
        self.users = targets.users()
        self.chunk_size = chunk_size

    def __len__(self) -> int:
        return math.ceil(len(self.users) / self.chunk_size)

    def __getitem__(self, chunk: int) -> RankingBatch:
        users = self.users[chunk * self.chunk_size:(chunk + 1) * self.chunk_size]
        arrays = (users, *self.seen.gather(users), *self.targets.gather(users))
        return RankingBatch(*(torch.from_numpy(array) for array in arrays))


class ShardedChunks(Sampler):
    """This process's share of evaluation chunks (all of them when not distributed, or when the process's data
    is its own share of the users, ``own_data``)."""

    def __init__(self, n_chunks: int, own_data: bool = False) -> None:
        self.n_chunks = n_chunks
        self.own_data = own_data

    def _mine(self) -> range:
        rank, world = (0, 1) if self.own_data else process_share()
        return range(rank, self.n_chunks, world)

    def __iter__(self) -> Iterator[int]:
        return iter(self._mine())

    def __len__(self) -> int:
        return len(self._mine())
