"""The LightningDataModule: read -> positives -> vocabularies -> splits -> tensors -> batches."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import lightning as L
import numpy as np
import polars as pl
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from twotower import checks
from twotower.data.batches import (
    BatchPlan,
    EpochBatchSampler,
    PairBatch,
    PairBatches,
    RankingBatches,
    SequenceBatch,
    SequenceBatches,
    ShardedChunks,
    UserBatch,
    UserBatches,
    across_processes,
    eval_chunk_size,
    planned_process,
    process_share,
)
from twotower.data.features import FeatureSpec, encode_features, feature_specs
from twotower.data.interactions import (
    EXAMPLES,
    InteractionLog,
    deduplicate,
    dropped_ids,
    ids_without_positives,
    no_dropped_ids,
    non_positives,
    positives,
    report_non_positives,
    with_order,
)
from twotower.data.prepared import PreparedShards
from twotower.data.sampling import NegativeSampler
from twotower.data.splits import SPLIT_NAMES, Splits, check_splits, cover_holdouts
from twotower.data.user_items import UserItems
from twotower.data.vocab import Vocabulary
from twotower.errors import ConfigError, DataError, RunError
from twotower.files import write_parquet

log = logging.getLogger(__name__)
TEST_ONLY = "only in pairs of the test file that have no training pair"  # why _drop_ids_without_pairs drops an id


class Reader(Protocol):
    def read(self) -> InteractionLog: ...


class Splitter(Protocol):
    columns: tuple[str, ...]  # what it needs besides user and item (timestamp, split)
    test_given: bool  # whether the test split came as a file of its own, to stay unseen

    def split(self, frame: pl.DataFrame) -> Splits: ...


class InteractionDataModule(L.LightningDataModule):
    """Interaction data for a two-tower model: ``source`` reads the log, ``split`` holds out valid/test
    interactions per user, ``sampler`` draws negatives for each training batch.

    ``val_users`` caps the users that validation ranks (a seeded sample, the same every epoch; None: all of
    them): validation only has to tell epochs apart for early stopping, and ranking every user against
    every item each epoch can cost most of an epoch on large logs. Test always ranks every user.
    """

    def __init__(
        self,
        source: Reader,
        split: Splitter,
        sampler: NegativeSampler,
        batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
        val_users: int | None = 10_000,
        keep_order: bool = False,
        devices: object = 1,
        nodes: object = 1,
    ) -> None:
        super().__init__()
        self.source = source
        self.splitter = split
        self.sampler = sampler
        self.batch_size = checks.integer("datamodule.batch_size", batch_size, 1)
        self.num_workers = checks.integer("datamodule.num_workers", num_workers, 0)
        self.seed = checks.integer("datamodule.seed", seed)
        self.val_users = checks.integer("datamodule.val_users", val_users, 1, optional=True,
                                        meaning_of_null="every user")
        self.plan = BatchPlan(PairBatch)  # until ``use``: pairs, as any loader without a model makes
        # Each interaction's place in time, kept where the split or the model reads it (a sequence tower).
        self.keep_order = checks.flag("datamodule.keep_order", keep_order)
        self.splits: Splits | None = None
        # The processes training will run as (DDP: devices per node x nodes): a prepared log is read a share per
        # process, decided before the processes exist (``planned_process``); checked only for a prepared log.
        self.processes = (devices, nodes)
        self.shards: list[int] | None = None  # a prepared log: the shards this process holds (None: the whole log)
        self.process: tuple[int, int] = (0, 1)  # (rank, world size) the shards were chosen for
        # Users and items of the source left out of the vocabularies, and why (saved as RunPaths.dropped).
        self.dropped = no_dropped_ids()

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:  # Lightning calls setup per stage; the data is the same for all
            return
        if isinstance(self.source, PreparedShards):
            self._setup_shards(self.source)
            return
        interaction_log = self.source.read()
        self.names = interaction_log.names
        self.min_rating = interaction_log.min_rating
        self.example_item = interaction_log.example_item
        frame = positives(interaction_log)
        lost = ids_without_positives(interaction_log, frame)
        report_non_positives(interaction_log, lost)
        self.dropped = pl.concat([interaction_log.dropped, lost])
        if self.keep_order or "order" in self.splitter.columns:
            reader = "split=temporal" if "order" in self.splitter.columns else "a user tower that reads order"
            frame = with_order(frame, interaction_log.source, reader)
        # Only what the split needs travels on: a timestamp costs more memory than a user and an item.
        needed = (*self.splitter.columns, *(["order"] if self.keep_order else []))
        frame = frame.select("user_id", "item_id", *dict.fromkeys(c for c in needed if c in frame.columns))
        self.user_vocab = Vocabulary.build(frame["user_id"], self.names["user"], interaction_log.user_info, "user_id")
        self.item_vocab = Vocabulary.build(frame["item_id"], self.names["item"], interaction_log.item_info, "item_id")
        source = interaction_log.source
        others = non_positives(interaction_log)
        del interaction_log  # from here on only integer indices: the raw log's memory can go
        frame = self.item_vocab.encode(self.user_vocab.encode(frame, "user_id", "user"), "item_id", "item")
        frame = deduplicate(frame, source)
        self.splits = cover_holdouts(self.splitter.split(frame), self.splitter.test_given)
        del frame  # the splits hold what is needed; fit_on below should not have this copy alongside
        self._drop_ids_without_pairs()
        self.non_positive = None if others is None else deduplicate(
            self.item_vocab.encode_known(self.user_vocab.encode_known(others, "user_id", "user"), "item_id", "item"))
        del others
        check_splits(self.splits)
        counts = {name: frame.height for name, frame in self.splits.items()}
        log.info("%d %ss, %d %ss; interactions train/valid/test: %d/%d/%d", self.n_users, self.names["user"],
                 self.n_items, self.names["item"], counts["train"], counts["valid"], counts["test"])

        self.fit_on(("train",))

    def _setup_shards(self, prepared: PreparedShards) -> None:
        """A prepared log: the whole vocabularies, and only this process's shards (each holds whole users), split
        as they were prepared (the split group is the preparation's, ``twotower-prepare split=...``)."""
        if self.keep_order and not prepared.manifest["order"]:
            raise DataError(f"{prepared.source} was prepared without each interaction's order, which this run reads "
                            "(a sequence tower): prepare it again with keep_order=true")
        devices, nodes = self.processes
        if not (checks.is_integer(devices) and devices >= 1):
            raise ConfigError(f"data=prepared shares the shards out before the processes start, so it needs "
                              f"trainer.devices as a number of devices (got {devices!r})")
        rank, world = self.process = planned_process(devices, checks.integer("trainer.num_nodes", nodes, 1))
        self.shards = prepared.shards_of(rank, world)
        self.names, self.min_rating, self.example_item = prepared.names, prepared.manifest["min_rating"], None
        self.user_vocab, self.item_vocab = prepared.vocabularies()
        self.splits = prepared.read(self.shards)
        self.non_positive = None
        check_splits(self.splits)
        counts = {name: frame.height for name, frame in self.splits.items()}
        log.info("%s, process %d of %d: shard(s) %s of %d; %d %ss, %d %ss; its interactions train/valid/test: "
                 "%d/%d/%d", prepared.source, rank, world, self.shards, prepared.shard_count, self.n_users,
                 self.names["user"], self.n_items, self.names["item"], counts["train"], counts["valid"],
                 counts["test"])
        self.fit_on(("train",))

    @property
    def sharded(self) -> bool:
        """Whether this process holds only its share of the log (a prepared log), not all of it."""
        return self.shards is not None

    def item_counts(self) -> np.ndarray:
        """Every item's training interactions in the whole log (the popularity summaries rank by)."""
        if self.sharded:
            return self.source.item_counts()
        return np.bincount(self.splits["train"]["item"].to_numpy(), minlength=self.n_items)

    def write_non_positive(self, path: Path) -> None:
        """The log's rows that are not positives (retrieval leaves them out as seen), where it has any."""
        if self.sharded:
            self.source.copy_non_positive(path)
            return
        path.unlink(missing_ok=True)  # from an earlier run into this directory
        if self.non_positive is not None and self.non_positive.height:
            write_parquet(self.non_positive, path)

    def write_split(self, name: str, path: Path) -> None:
        """The ``name`` split of the whole log into a Parquet file (a prepared log's streamed from its shards)."""
        if self.sharded:
            self.source.sink_split(name, path)
        else:
            write_parquet(self.splits[name], path)

    def whole(self, splits: tuple[str, ...]) -> WholeLog:
        """This data as the exported model reads it: every user's items over ``splits``, whatever share this
        process trains on."""
        return WholeLog(self, splits)

    def _drop_ids_without_pairs(self) -> None:
        """Ids whose only pairs were dropped from a given test file leave the vocabularies: with no vector
        worth serving, they are unknown ids to retrieval, not confident guesses."""
        for column, attribute in (("user", "user_vocab"), ("item", "item_vocab")):
            vocab = getattr(self, attribute)
            used = np.unique(np.concatenate([split[column].to_numpy() for split in self.splits.values()]))
            if len(used) == len(vocab):
                continue
            kept, remap = vocab.keep(used)
            gone = vocab.ids.gather(np.flatnonzero(remap < 0))
            log.info("%d %s(s) %s leave the vocabulary, e.g. %s", len(gone), vocab.name, TEST_ONLY,
                     gone.head(EXAMPLES).to_list())
            self.dropped = pl.concat([self.dropped, dropped_ids(column, gone, TEST_ONLY)])
            setattr(self, attribute, kept)
            self.splits = {name: split.with_columns(pl.Series(column, remap[split[column].to_numpy()], pl.Int32))
                           for name, split in self.splits.items()}

    def stacked(self, names: tuple[str, ...]) -> pl.DataFrame:
        """The named splits as one frame; where they keep each interaction's order, each user's interactions
        in that order."""
        frames = [self.splits[name] for name in names]
        frame = pl.concat(frames) if len(frames) > 1 else frames[0]
        return frame.sort("user", "order") if "order" in frame.columns else frame

    @property
    def final_fit_splits(self) -> tuple[str, ...]:
        """What the final model learns from: every interaction the user gave, except a test split they gave
        as a file of its own (a benchmark's test, which must stay unseen)."""
        return ("train", "valid") if self.splitter.test_given else SPLIT_NAMES

    def fit_on(self, names: tuple[str, ...]) -> None:
        """Train on the named splits: ``final_fit_splits`` for the final model, ``("train",)`` to select."""
        self.fitted_on = names
        train = self.stacked(names)
        # int32 halves the memory of the largest tensors; batches are widened to int64 when sliced.
        self.train_users = torch.from_numpy(train["user"].to_numpy().astype(np.int32))
        self.train_items = torch.from_numpy(train["item"].to_numpy().astype(np.int32))
        self._training_user_items: UserItems | None = None  # built on first use, then shared
        # the whole log's item frequencies, where this process holds a share of its users: logQ is the log's
        self.sampler.fit(self.train_users, self.train_items, self.n_items,
                         self.training_item_counts() if self.sharded else None)

    @property
    def n_users(self) -> int:
        return len(self.user_vocab)

    @property
    def n_items(self) -> int:
        return len(self.item_vocab)

    def vocab(self, side: str) -> Vocabulary:
        return self.user_vocab if side == "user" else self.item_vocab

    def feature_specs(self, side: str, features: Sequence[str] | Mapping[str, str] | None) -> list[FeatureSpec]:
        """Full encodings of the named side features of ``side`` (user or item), from its metadata table."""
        vocab = self.vocab(side)
        return feature_specs(vocab.frame, features or [], vocab.name)

    def side_features(self, side: str, specs: list[FeatureSpec]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Feature tables of one side for a feature tower, and which ids have training interactions."""
        if self.sharded:  # known from the whole log: this process's share trains only some of the ids
            known = torch.ones(self.n_users, dtype=torch.bool) if side == "user" else \
                torch.from_numpy(self.item_counts() > 0)
        else:
            ids = self.train_users if side == "user" else self.train_items
            known = torch.bincount(ids, minlength=len(self.vocab(side))) > 0
        return encode_features(self.vocab(side).frame, specs), known

    def training_user_items(self) -> UserItems:
        """Each user's items in what the model now trains on (``fit_on``): its positives, and a history
        tower's histories; built once per ``fit_on``."""
        if self._training_user_items is None:
            self._training_user_items = UserItems.from_pairs(self.train_users.numpy(), self.train_items.numpy(),
                                                             self.n_users)
        return self._training_user_items

    def training_item_counts(self) -> np.ndarray:
        """Each item's interactions in what the model now trains on (``fit_on``), over the whole log: a prepared
        log's from its preparation, which counts each split."""
        if self.sharded:  # this process holds only its share of the users
            return self.source.item_counts(self.fitted_on)
        return np.bincount(self.train_items.numpy(), minlength=self.n_items)

    def training_positions(self, length: int) -> int:
        """The positions of the training sequences that have a next item, each sequence its last ``length + 1``
        items: the queries an epoch of a sequence tower trains on."""
        lengths = np.diff(self.training_user_items().indptr)
        return int(np.maximum(np.minimum(lengths, length + 1) - 1, 0).sum())

    def user_items(self, *names: str, users: np.ndarray | None = None) -> UserItems:
        """Each user's items over the named splits; only ``users``' where given (the others' rows empty): what an
        evaluation of a sample of users holds, not a copy of the log."""
        frame = self.stacked(names)
        if users is not None and len(users) < self.n_users:
            frame = frame.filter(pl.col("user").is_in(pl.Series(users, dtype=frame.schema["user"])))
        return UserItems.from_frame(frame, self.n_users)

    def use(self, plan: BatchPlan) -> None:
        """Make training batches as ``plan`` says (the loss's, ``loss.plan``)."""
        self.plan = plan

    def train_dataloader(self) -> DataLoader:
        """Training batches of the planned kind: users with all their positives, or positive pairs with
        negatives from the sampler."""
        if self.plan.examples is SequenceBatch:
            dataset = SequenceBatches(self.training_user_items(), self.n_items, self.batch_size, self.seed,
                                      self.plan.length, self.plan.candidates)
        elif self.plan.examples is UserBatch:
            dataset = UserBatches(self.training_user_items(), self.n_items, self.batch_size, self.seed,
                                  self.plan.candidates)
        else:
            dataset = PairBatches(self.train_users, self.train_items, self.batch_size, self.sampler, self.seed)
        self._check_process()
        sampler = EpochBatchSampler(len(dataset), own_data=self.sharded)
        # A resumed fit starts iterating (and dataloader workers fetching) before Lightning sets the epoch: the
        # first batches must already be the resumed epoch's, the number Lightning will set.
        sampler.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed if self.trainer is not None else 0)
        return self._loader(dataset, sampler)

    def _check_process(self) -> None:
        """A process holding a share of a prepared log must be the process its shards were chosen for; every
        process learns whether any is not, so that all stop together rather than wait on one that stopped."""
        if not (self.sharded and dist.is_available() and dist.is_initialized()):
            return
        actual = process_share()
        if across_processes(int(self.process != actual), "max"):
            raise RunError(f"this process read the shards of process {self.process[0]} of {self.process[1]} but "
                           f"runs as {actual[0]} of {actual[1]} (or another process did likewise): set "
                           "trainer.devices and trainer.num_nodes to the processes the launcher starts")

    def val_dataloader(self) -> DataLoader:
        return self._ranking_loader(seen=("train",), target="valid", max_users=self.val_users)

    def test_dataloader(self) -> DataLoader:
        return self._ranking_loader(seen=("train", "valid"), target="test")

    def ranking_targets(self, target: str, max_users: int | None = None) -> UserItems:
        """The ``target`` split's items to find, of at most ``max_users`` of its users (a seeded sample, the
        same at every call: what validation ranks, and the popularity baseline beside it)."""
        frame = self.splits[target]
        users = np.unique(frame["user"].to_numpy())
        if max_users is not None and self.sharded:  # every process ranks its own users: a share of the cap each
            max_users = -(-max_users // self.process[1])
        if max_users is not None and len(users) > max_users:
            users = np.random.default_rng(self.seed).choice(users, max_users, replace=False)
            frame = frame.filter(pl.col("user").is_in(users))
        return UserItems.from_frame(frame, self.n_users)

    def _ranking_loader(self, seen: tuple[str, ...], target: str, max_users: int | None = None) -> DataLoader:
        targets = self.ranking_targets(target, max_users)
        users = len(targets.users())
        # Under DDP every process needs at least one chunk: split the users at least world-size ways.
        shares = 1 if self.sharded else process_share()[1]  # a process holding its own users ranks all of them
        chunk_size = max(1, min(eval_chunk_size(self.n_items), -(-users // shares)))
        dataset = RankingBatches(self.user_items(*seen, users=targets.users()), targets, chunk_size)
        return self._loader(dataset, ShardedChunks(len(dataset), own_data=self.sharded))

    def _loader(self, dataset: torch.utils.data.Dataset, sampler: torch.utils.data.Sampler) -> DataLoader:
        return DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)


class WholeLog:
    """A data module seen whole, as exporting reads it: the towers' side features, the item counts of what the
    model trains on, and every user's items over ``splits`` (a prepared log's read shard by shard, where this
    process holds only its share)."""

    sharded = False  # every user's histories, whatever this process trains on

    def __init__(self, data: InteractionDataModule, splits: tuple[str, ...]) -> None:
        self.data = data
        self.splits = splits
        self._user_items: UserItems | None = None

    def side_features(self, side: str, specs: list[FeatureSpec]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return self.data.side_features(side, specs)

    def training_user_items(self) -> UserItems:
        if not self.data.sharded and self.splits == self.data.fitted_on:
            return self.data.training_user_items()
        if self._user_items is None:  # read once
            self._user_items = (self.data.source.user_items(self.splits, self.data.n_users) if self.data.sharded
                                else self.data.user_items(*self.splits))
        return self._user_items

    def training_item_counts(self) -> np.ndarray:
        return self.data.training_item_counts()  # the whole log's already
