"""The canonical interaction log every reader produces, and the clean-up that turns it into positives.

Columns of ``InteractionLog.interactions``:

- ``user_id``, ``item_id``: the original ids, ``Int64`` or ``String``, never null;
- ``timestamp`` (``Int64``), ``rating`` (``Float64``), ``label`` (``Float64``): optional;
- ``split`` (``String``: ``train``/``valid``/``test``): present only for pre-split sources.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import polars as pl

from twotower.errors import TwoTowerError

log = logging.getLogger(__name__)

ID_COLUMNS = ("user_id", "item_id")
DEFAULT_NAMES = {"user": "user", "item": "item"}
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class InteractionLog:
    """Interactions plus optional per-item and per-user metadata keyed by ``item_id`` / ``user_id``.

    ``names`` says what the two sides are called (``link``/``book`` for Wikipedia books); ``min_rating``,
    when set, is the rating from which an interaction counts as positive; ``example_item`` is a well-known
    item (an id or title) to show neighbours of after training.
    """

    interactions: pl.DataFrame
    item_info: pl.DataFrame | None = None
    user_info: pl.DataFrame | None = None
    source: str = "interactions"
    names: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_NAMES))
    min_rating: float | None = None
    example_item: str | None = None

    def __post_init__(self) -> None:
        frame = self.interactions
        if frame.height == 0:
            raise TwoTowerError(f"{self.source}: the interaction log is empty (no rows)")
        for column in ID_COLUMNS:
            nulls = frame[column].null_count()
            if nulls:
                raise TwoTowerError(
                    f"{self.source}: column '{column}' has {nulls} empty (null) value(s); "
                    "every interaction needs a user and an item id"
                )

    @property
    def has_timestamps(self) -> bool:
        return "timestamp" in self.interactions.columns

    @property
    def is_presplit(self) -> bool:
        return "split" in self.interactions.columns


def normalise_ids(frame: pl.DataFrame, source: str, columns: tuple[str, ...] = ID_COLUMNS) -> pl.DataFrame:
    """Cast id columns to ``Int64`` (integers, or floats holding whole numbers) or keep them ``String``."""
    casts = []
    for column in columns:
        dtype = frame.schema[column]
        if dtype == pl.String:
            continue
        if dtype.is_integer():
            casts.append(pl.col(column).cast(pl.Int64))
        elif dtype.is_float():
            values = frame[column].drop_nulls()
            if (values != values.round(0)).any() or values.is_nan().any():
                raise TwoTowerError(f"{source}: column '{column}' holds non-integer numbers; ids must be "
                                    "integers or strings")
            casts.append(pl.col(column).cast(pl.Int64))
        else:
            casts.append(pl.col(column).cast(pl.String))
    return frame.with_columns(casts) if casts else frame


def positive_interactions(log_: InteractionLog) -> pl.DataFrame:
    """Keep the interactions that count as positives and drop repeated (user, item) pairs.

    A row is positive when its ``label`` is > 0 (if there is a label) and its ``rating`` is at least
    the log's ``min_rating`` (if a threshold is set). Repeats of a pair keep the latest timestamp (or the first row).
    Pre-split logs are deduplicated within each split, and valid/test pairs already in train are dropped
    so that no evaluation target is an item the model was trained on for that user.
    """
    frame = log_.interactions
    source = log_.source
    min_rating = log_.min_rating
    if "label" in frame.columns:
        frame = frame.filter(pl.col("label") > 0)
        if frame.height == 0:
            raise TwoTowerError(f"{source}: no positive interactions: every label is <= 0")
    if min_rating is not None:
        if "rating" not in frame.columns:
            raise TwoTowerError(f"{source}: min_rating={min_rating} is set but the log has no rating column")
        frame = frame.filter(pl.col("rating") >= min_rating)
        if frame.height == 0:
            raise TwoTowerError(f"{source}: no interaction has a rating >= {min_rating}")

    keys = ["user_id", "item_id", *(["split"] if "split" in frame.columns else [])]
    rows = frame.height
    if "timestamp" in frame.columns:
        frame = frame.sort("timestamp", maintain_order=True)
        frame = frame.unique(subset=keys, keep="last", maintain_order=True)
    else:
        frame = frame.unique(subset=keys, keep="first", maintain_order=True)
    if frame.height < rows:
        log.info("%s: %d repeated (user, item) interaction(s) counted once", source, rows - frame.height)

    if "split" in frame.columns:
        train_pairs = frame.filter(pl.col("split") == "train").select(ID_COLUMNS)
        held_out = frame.filter(pl.col("split") != "train")
        leaked = held_out.join(train_pairs, on=list(ID_COLUMNS), how="semi")
        if leaked.height:
            log.warning("%s: dropped %d valid/test interactions whose (user, item) pair is also in train",
                        source, leaked.height)
            frame = pl.concat([
                frame.filter(pl.col("split") == "train"),
                held_out.join(train_pairs, on=list(ID_COLUMNS), how="anti"),
            ])
        # A pair in both valid and test is a target twice; keep it in test only.
        valid_test = frame.filter(pl.col("split") == "test").select(ID_COLUMNS)
        frame = pl.concat([
            frame.filter(pl.col("split") != "valid"),
            frame.filter(pl.col("split") == "valid").join(valid_test, on=list(ID_COLUMNS), how="anti"),
        ])
    return frame


def with_split_tag(frames: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Stack pre-split frames into one frame with a ``split`` column."""
    return pl.concat(
        [frame.with_columns(pl.lit(name).alias("split")) for name, frame in frames.items()],
        how="diagonal_relaxed",
    )
