"""Splitting positives into train / valid / test per user, without leaking held-out pairs into train.

Each strategy takes the deduplicated positives (``user``, ``item`` indices, optional ``timestamp`` and
``split``) and returns three frames of ``user`` and ``item``. Every user keeps at least one training
interaction; a pair is in exactly one split.
"""

from __future__ import annotations

import logging

import numpy as np
import polars as pl

from twotower.artifacts import SPLIT_NAMES
from twotower.errors import TwoTowerError

log = logging.getLogger(__name__)

Splits = dict[str, pl.DataFrame]


def _by_rank(frame: pl.DataFrame, rank: pl.Expr, n_test: pl.Expr, n_valid: pl.Expr) -> Splits:
    """Assign each user's rows by ``rank`` (0 = first held out): test first, then valid, the rest train.

    Held-out counts are capped so that every user keeps at least one training row.
    """
    size = pl.len().over("user")
    test = pl.min_horizontal(n_test, size - 1)
    valid = pl.min_horizontal(n_valid, size - 1 - test)
    tagged = frame.with_columns(_rank=rank).with_columns(
        split=pl.when(pl.col("_rank") < test).then(pl.lit("test"))
        .when(pl.col("_rank") < test + valid).then(pl.lit("valid"))
        .otherwise(pl.lit("train"))
    )
    return _partition(tagged)


def _partition(tagged: pl.DataFrame) -> Splits:
    return {name: tagged.filter(pl.col("split") == name).select("user", "item") for name in SPLIT_NAMES}


class RandomSplit:
    """Hold out a random ``test_fraction`` and ``valid_fraction`` of each user's interactions (rounded)."""

    def __init__(self, valid_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0) -> None:
        if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1 and valid_fraction + test_fraction < 1):
            raise TwoTowerError("split fractions must be in [0, 1) and sum to less than 1, got "
                                f"valid={valid_fraction}, test={test_fraction}")
        self.valid_fraction = valid_fraction
        self.test_fraction = test_fraction
        self.seed = seed

    def split(self, frame: pl.DataFrame) -> Splits:
        # Sorting first makes the split depend on the data, not on the order of the rows in the file.
        frame = frame.sort("user", "item")
        noise = np.random.default_rng(self.seed).random(frame.height)
        frame = frame.with_columns(_noise=pl.Series(noise))
        size = pl.len().over("user").cast(pl.Float64)
        return _by_rank(
            frame,
            rank=pl.col("_noise").rank("ordinal").over("user") - 1,
            n_test=(size * self.test_fraction).round().cast(pl.Int64),
            n_valid=(size * self.valid_fraction).round().cast(pl.Int64),
        )


class TemporalSplit:
    """Leave-last-k: each user's ``test_last`` latest interactions are test, the ``valid_last`` before valid.

    A user with too few interactions keeps them in train (a user with one interaction is train only).
    """

    def __init__(self, valid_last: int = 1, test_last: int = 1) -> None:
        if valid_last < 0 or test_last < 0 or valid_last + test_last == 0:
            raise TwoTowerError(f"valid_last and test_last must be >= 0 and not both 0, got {valid_last}, "
                                f"{test_last}")
        self.valid_last = valid_last
        self.test_last = test_last

    def split(self, frame: pl.DataFrame) -> Splits:
        if "timestamp" not in frame.columns:
            raise TwoTowerError("split=temporal needs timestamps, but the log has no timestamp column "
                                "(name it with data.timestamp_col=...)")
        frame = frame.sort("user", "timestamp", "item")
        splits = _by_rank(
            frame,
            rank=pl.int_range(pl.len()).reverse().over("user"),
            n_test=pl.lit(self.test_last),
            n_valid=pl.lit(self.valid_last),
        )
        single = frame.group_by("user").len().filter(pl.col("len") == 1).height
        if single:
            log.info("temporal split: %d user(s) with a single interaction stay in train only", single)
        return splits


class PresplitSplit:
    """Use the split a pre-split source came with (``train``/``valid``/``test`` files)."""

    def split(self, frame: pl.DataFrame) -> Splits:
        if "split" not in frame.columns:
            raise TwoTowerError("split=presplit needs separate files: set data.valid_path and data.test_path")
        return _partition(frame)


def check_splits(splits: Splits) -> None:
    """Training needs positives and validation needs targets; say so before anything is trained."""
    if splits["train"].height == 0:
        raise TwoTowerError("the training split is empty")
    if splits["valid"].height == 0:
        raise TwoTowerError(
            "the validation split is empty: no user has enough interactions to hold one out. "
            "Use more data, a larger valid fraction, or pre-split files"
        )
