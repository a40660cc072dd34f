"""Splitting positives into train / valid / test per user, without leaking held-out pairs into train.

Each strategy takes deduplicated positives (``user``, ``item`` indices sorted by user then item, with
``timestamp`` and ``split`` when the log has them) and returns three frames of ``user`` and ``item``.
Every user keeps at least one training interaction; a pair is in exactly one split. The per-user work is
done on sorted numpy arrays, so memory stays a few integers per interaction.
"""

from __future__ import annotations

import logging

import numpy as np
import polars as pl

from twotower.errors import TwoTowerError

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "valid", "test")
Splits = dict[str, pl.DataFrame]


def positions_in_groups(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows sorted by ``groups``: each row's position within its group, and each row's group size
    (int32: a user has fewer than 2**31 interactions)."""
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]]).astype(np.int32)
    sizes = np.diff(np.r_[starts, np.int32(len(groups))])
    positions = np.arange(len(groups), dtype=np.int32)
    positions -= np.repeat(starts, sizes)
    return positions, np.repeat(sizes, sizes)


def hold_out(frame: pl.DataFrame, rank: np.ndarray, n_test: np.ndarray, n_valid: np.ndarray,
             size: np.ndarray) -> Splits:
    """Rows with ``rank`` (0 = first held out) below the user's test count go to test, the next ones to
    valid, the rest to train; the counts are capped so that every user keeps one training row."""
    test = np.minimum(n_test, size - 1)
    valid = np.minimum(n_valid, size - 1 - test)
    labels = np.zeros(len(rank), dtype=np.uint8)
    labels[rank < test + valid] = 1
    labels[rank < test] = 2
    return partition(frame, labels)


def partition(frame: pl.DataFrame, labels: np.ndarray) -> Splits:
    """Frames of the rows labelled 0 (train), 1 (valid) and 2 (test), with each interaction's ``order`` where
    the frame has one."""
    pairs = frame.select("user", "item", *(["order"] if "order" in frame.columns else []))
    return {name: pairs.filter(pl.Series(labels == code)) for code, name in enumerate(SPLIT_NAMES)}


def is_sorted_by_user_and_item(frame: pl.DataFrame) -> bool:
    step_user, step_item = pl.col("user").diff(), pl.col("item").diff()
    return bool(frame.select(((step_user > 0) | ((step_user == 0) & (step_item > 0))).fill_null(True).all()).item())


class RandomSplit:
    """Hold out a random ``test_fraction`` and ``valid_fraction`` of each user's interactions (rounded)."""

    columns: tuple[str, ...] = ()  # what it needs besides user and item
    test_given: bool = False  # the test split came as a file of its own (see PresplitSplit)

    def __init__(self, valid_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0) -> None:
        if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1 and valid_fraction + test_fraction < 1):
            raise TwoTowerError("split fractions must be in [0, 1) and sum to less than 1, got "
                                f"valid={valid_fraction}, test={test_fraction}")
        self.valid_fraction = valid_fraction
        self.test_fraction = test_fraction
        self.seed = seed

    def split(self, frame: pl.DataFrame) -> Splits:
        # Sorted first, the split depends on the data, not on the order of the rows in the file.
        if not is_sorted_by_user_and_item(frame):
            frame = frame.sort("user", "item")
        users = frame["user"].to_numpy()
        key = users.astype(np.int64)
        key <<= 31  # in place, as below: at 10M rows every temporary copy is 80 MB
        key |= np.random.default_rng(self.seed).integers(0, 1 << 31, size=len(users), dtype=np.int32)
        order = np.argsort(key)  # by user, then in a random order within the user
        del key
        position, group_size = positions_in_groups(users[order])
        rank, size = np.empty_like(position), np.empty_like(group_size)
        rank[order], size[order] = position, group_size
        del order, position, group_size
        return hold_out(frame, rank, np.floor(size * self.test_fraction + 0.5).astype(np.int32),
                        np.floor(size * self.valid_fraction + 0.5).astype(np.int32), size)


class TemporalSplit:
    """Leave-last-k: each user's ``test_last`` latest interactions are test, the ``valid_last`` before valid.

    A user with too few interactions keeps them in train (a user with one interaction is train only).
    """

    columns: tuple[str, ...] = ("order",)
    test_given: bool = False

    def __init__(self, valid_last: int = 1, test_last: int = 1) -> None:
        if valid_last < 0 or test_last < 0 or valid_last + test_last == 0:
            raise TwoTowerError(f"valid_last and test_last must be >= 0 and not both 0, got {valid_last}, "
                                f"{test_last}")
        self.valid_last = valid_last
        self.test_last = test_last

    def split(self, frame: pl.DataFrame) -> Splits:
        frame = frame.sort("user", "order")
        position, size = positions_in_groups(frame["user"].to_numpy())
        single = int(np.sum(size == 1))
        if single:
            log.info("temporal split: %d user(s) with a single interaction stay in train only", single)
        return hold_out(frame, size - 1 - position, np.full_like(size, self.test_last),
                        np.full_like(size, self.valid_last), size)


class PresplitSplit:
    """Use the split a pre-split source came with (``train``/``valid``/``test`` files)."""

    columns: tuple[str, ...] = ("split",)
    # A test file given beside train and valid is a benchmark's test: the final fit leaves it unseen.
    test_given: bool = True

    def split(self, frame: pl.DataFrame) -> Splits:
        if "split" not in frame.columns:
            raise TwoTowerError("split=presplit needs separate files: set data.valid_path and data.test_path")
        codes = {name: code for code, name in enumerate(SPLIT_NAMES)}
        return partition(frame, frame["split"].replace_strict(codes, return_dtype=pl.UInt8).to_numpy())


def cover_holdouts(splits: Splits, test_given: bool) -> Splits:
    """Held-out pairs whose user or item has no training pair, moved or dropped: an ID tower learns nothing
    for such an id, and its untrained vector would be scored and served as if it meant something.

    They move into train (valid pairs, and test pairs cut from one log), or are dropped (a test file given
    on its own, which must stay unseen); the counts are logged.
    """
    train = splits["train"]
    covered = dict(splits)
    for name in ("valid", "test"):
        held = splits[name]
        known = held["user"].is_in(train["user"].unique().implode()) & \
            held["item"].is_in(train["item"].unique().implode())
        if known.all():
            continue
        covered[name] = held.filter(known)
        if name == "test" and test_given:
            log.warning("dropped %d test pair(s) whose user or item has no training pair: a model trained "
                        "on train has learnt nothing to rank them with", int((~known).sum()))
        else:
            train = pl.concat([train, held.filter(~known)]).sort("user", "item")
            log.info("moved %d %s pair(s) whose user or item has no training pair into train: a model "
                     "learns nothing for an id it never trains on", int((~known).sum()), name)
    covered["train"] = train
    return covered


def check_splits(splits: Splits) -> None:
    """Training needs positives and validation needs targets; say so before anything is trained."""
    if splits["train"].height == 0:
        raise TwoTowerError("the training split is empty")
    if splits["valid"].height == 0:
        raise TwoTowerError(
            "the validation split is empty: no user has enough interactions to hold one out. "
            "Use more data, a larger valid fraction, or pre-split files"
        )
