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

from twotower.data.ids import normalise_id_column
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
    """Id columns read by the one rule of ``twotower.data.ids``: ``Int64`` or stripped ``String``."""
    return frame.with_columns(normalise_id_column(frame[column], source, column).alias(column) for column in columns)


def positives(log_: InteractionLog) -> pl.DataFrame:
    """The interactions that count as positives: ``user_id``, ``item_id`` and, when present, ``timestamp``
    and ``split``.

    A row is positive when its ``label`` is > 0 (if there is a label) and its ``rating`` is at least the
    log's ``min_rating`` (if a threshold is set). Repeated pairs stay; ``deduplicate`` removes them once
    the ids are indices.
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
    return frame.select(c for c in ("user_id", "item_id", "timestamp", "split") if c in frame.columns)


def non_positives(log_: InteractionLog) -> pl.DataFrame | None:
    """``user_id`` and ``item_id`` of the rows that are not positives (a label <= 0, a rating below
    ``min_rating``, or missing where one is needed): not trained on, but the user has the item all the same,
    so retrieval does not offer it again. ``None`` when every row counts as positive."""
    frame = log_.interactions
    conditions = []
    if "label" in frame.columns:
        conditions.append(pl.col("label") > 0)
    if log_.min_rating is not None and "rating" in frame.columns:
        conditions.append(pl.col("rating") >= log_.min_rating)
    if not conditions:
        return None
    return frame.filter(~pl.all_horizontal(conditions).fill_null(False)).select("user_id", "item_id")


# Which split keeps a pair found in several: train first (a held-out copy of a training pair would be a
# target the model was trained on), then test, then valid.
SPLIT_PRIORITY = {"train": 0, "test": 1, "valid": 2}


def deduplicate(frame: pl.DataFrame, source: str = "interactions") -> pl.DataFrame:
    """One row per (user, item) pair, sorted by user then item; a repeated pair keeps its latest timestamp.

    ``frame`` has integer ``user`` and ``item`` columns. In a pre-split log a pair that is in train is
    dropped from valid and test, and one in both valid and test stays in test only.
    """
    keys = ["user", "item"]
    order = [*keys]
    descending = [False, False]
    if "split" in frame.columns:
        frame = frame.with_columns(_priority=pl.col("split").replace_strict(SPLIT_PRIORITY, return_dtype=pl.UInt8))
        order.append("_priority")
        descending.append(False)
    if "timestamp" in frame.columns:
        order.append("timestamp")
        descending.append(True)
    frame = frame.sort(order, descending=descending)
    first = (pl.col("user") != pl.col("user").shift(1)) | (pl.col("item") != pl.col("item").shift(1))
    frame = frame.with_columns(_first=first.fill_null(True))
    if "split" in frame.columns:
        kept_split = pl.when(pl.col("_first")).then(pl.col("split")).forward_fill()
        moved = frame.select((~pl.col("_first") & (pl.col("split") != kept_split)).sum()).item()
        if moved:
            log.warning("%s: dropped %d valid/test interaction(s) whose (user, item) pair is also in train "
                        "(or in test, for valid)", source, moved)
    else:
        moved = 0
    repeats = int(frame.height - frame["_first"].sum()) - moved
    if repeats:
        log.info("%s: %d repeated (user, item) interaction(s) counted once", source, repeats)
    return frame.filter(pl.col("_first")).drop("_first", "_priority", strict=False)


def with_split_tag(frames: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Stack pre-split frames into one frame with a ``split`` column."""
    return pl.concat(
        [frame.with_columns(pl.lit(name).alias("split")) for name, frame in frames.items()],
        how="diagonal_relaxed",
    )
