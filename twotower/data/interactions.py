"""The canonical interaction log every reader produces, and the clean-up that turns it into positives.

Columns of ``InteractionLog.interactions``:

- ``user_id``, ``item_id``: the original ids, ``Int64`` or ``String``, never null;
- ``timestamp`` (``Int64``), ``position`` (``Int64``, a place in the user's sequence), ``rating``
  (``Float64``), ``label`` (``Float64``): optional;
- ``split`` (``String``: ``train``/``valid``/``test``): present only for pre-split sources.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from twotower.data.ids import normalise_id_column
from twotower.errors import DataError, TwoTowerError

log = logging.getLogger(__name__)

ID_COLUMNS = ("user_id", "item_id")
DEFAULT_NAMES = {"user": "user", "item": "item"}
# Users and items of the source that a filter removed, kept so that retrieval can say why an id is unknown.
DROPPED_SCHEMA = {"side": pl.String, "id": pl.String, "reason": pl.String}
EXAMPLES = 5  # ids shown in a log line


def no_dropped_ids() -> pl.DataFrame:
    return pl.DataFrame(schema=DROPPED_SCHEMA)


def dropped_ids(side: str, ids: pl.Series, reason: str) -> pl.DataFrame:
    """Rows of the dropped-ids table: ``side`` (``user``/``item``), ``id`` (as text), ``reason``."""
    return ids.sort().cast(pl.String).alias("id").to_frame().select(
        pl.lit(side).alias("side"), "id", pl.lit(reason).alias("reason"))


@dataclass(frozen=True)
class InteractionLog:
    """Interactions plus optional per-item and per-user metadata keyed by ``item_id`` / ``user_id``.

    ``names`` says what the two sides are called (``link``/``book`` for Wikipedia books); ``min_rating``,
    when set, is the rating from which an interaction counts as positive; ``example_item`` is a well-known
    item (an id or title) to show neighbours of after training; ``dropped`` lists the users and items the
    reader left out (see ``dropped_ids``).
    """

    interactions: pl.DataFrame
    item_info: pl.DataFrame | None = None
    user_info: pl.DataFrame | None = None
    source: str = "interactions"
    names: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_NAMES))
    min_rating: float | None = None
    example_item: str | None = None
    dropped: pl.DataFrame = field(default_factory=no_dropped_ids)  # ids the reader filtered out, and why

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
    """The interactions that count as positives: ``user_id``, ``item_id`` and, when present, ``timestamp``,
    ``position`` and ``split``.

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
    return frame.select(c for c in ("user_id", "item_id", "timestamp", "position", "split") if c in frame.columns)


def positive_tests(log_: InteractionLog) -> list[tuple[str, pl.Expr]]:
    """What a row must pass to be a positive, in the order ``positives`` applies it, each with the reason
    a row failing it is not one (a missing label or rating fails)."""
    columns = log_.interactions.columns
    tests = []
    if "label" in columns:
        tests.append(("labels <= 0", (pl.col("label") > 0).fill_null(False)))
    if log_.min_rating is not None and "rating" in columns:
        tests.append((f"ratings below data.min_rating={log_.min_rating:g}",
                       (pl.col("rating") >= log_.min_rating).fill_null(False)))
    return tests


def non_positives(log_: InteractionLog) -> pl.DataFrame | None:
    """``user_id`` and ``item_id`` of the rows that are not positives (a label <= 0, a rating below
    ``min_rating``, or missing where one is needed): not trained on, but the user has the item all the same,
    so retrieval does not offer it again. ``None`` when every row counts as positive."""
    tests = positive_tests(log_)
    if not tests:
        return None
    passed = pl.all_horizontal(condition for _, condition in tests)
    return log_.interactions.filter(~passed).select("user_id", "item_id")


def ids_without_positives(log_: InteractionLog, kept: pl.DataFrame) -> pl.DataFrame:
    """Users and items of the log with no row among the positives ``kept``, as dropped-ids rows whose reason
    says what their rows failed (e.g. "ratings below data.min_rating=4")."""
    tests = positive_tests(log_)
    if not tests:
        return no_dropped_ids()
    reason = pl.lit(None, dtype=pl.String)
    for text, condition in reversed(tests):  # the first test a row fails names it, as in positives()
        reason = pl.when(condition).then(reason).otherwise(pl.lit(text))
    # An id without positives has only failing rows: looking at those alone spares a pass over the whole log.
    failing = log_.interactions.filter(~pl.all_horizontal(condition for _, condition in tests))
    frames = [no_dropped_ids()]
    for side in ("user", "item"):
        column = f"{side}_id"
        lost = failing.select(column).unique().join(kept.select(column).unique(), on=column, how="anti")
        reasons = failing.join(lost, on=column, how="semi").group_by(column).agg(
            reason.unique().sort().str.join(" and ").alias("reason")).sort(column)
        frames.append(reasons.select(pl.lit(side).alias("side"), pl.col(column).cast(pl.String).alias("id"),
                                     "reason"))
    return pl.concat(frames)


def report_non_positives(log_: InteractionLog, lost: pl.DataFrame) -> None:
    """One line: how many rows are not positives and why, and which users and items that leaves with none
    (``lost``, from ``ids_without_positives``)."""
    failing = rows_failing(log_)
    if not any(failing.values()):
        return
    why = ", ".join(f"{count} with {text}" for text, count in failing.items() if count)
    log.info("%s: %d of %d row(s) are not positives (%s) and are not trained on; %s", log_.source,
             sum(failing.values()), log_.interactions.height, why, describe_lost(lost, log_.names))


def rows_failing(log_: InteractionLog) -> dict[str, int]:
    """How many rows each test of ``positive_tests`` is the first to fail."""
    passed = pl.lit(True)
    counts = []
    for text, condition in positive_tests(log_):
        counts.append((passed & ~condition).sum().alias(text))
        passed = passed & condition
    return log_.interactions.select(counts).row(0, named=True) if counts else {}


def describe_lost(lost: pl.DataFrame, names: dict[str, str]) -> str:
    """"1 user(s) and 235 item(s) have no positive left ..., e.g. ..." for ``ids_without_positives``."""
    if lost.height == 0:
        return f"every {names['user']} and {names['item']} keeps a positive"
    ids = {side: lost.filter(pl.col("side") == side)["id"] for side in ("user", "item")}
    examples = "; ".join(f"{names[side]}s {column.head(EXAMPLES).to_list()}" for side, column in ids.items()
                         if column.len())
    return (f"{ids['user'].len()} {names['user']}(s) and {ids['item'].len()} {names['item']}(s) have no positive "
            f"left and are left out, e.g. {examples}")


# Which split keeps a pair found in several: train first (a held-out copy of a training pair would be a
# target the model was trained on), then test, then valid.
SPLIT_PRIORITY = {"train": 0, "test": 1, "valid": 2}


def deduplicate(frame: pl.DataFrame, source: str = "interactions") -> pl.DataFrame:
    """One row per (user, item) pair, sorted by user then item; a repeated pair keeps its latest timestamp (its
    latest ``order``, where the log has one: the most recent place in the user's sequence).

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
    for latest in ("timestamp", "order"):
        if latest in frame.columns:
            order.append(latest)
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


def with_order(frame: pl.DataFrame, source: str, needed_by: str) -> pl.DataFrame:
    """``frame`` with an ``order`` column: each interaction's rank in time, by its ``timestamp``, then its
    ``position``, then its row in the file (ties in time keep file order). ``needed_by`` names what asked for
    it, for the error where the log has neither a timestamp nor a position."""
    keys = [column for column in ("timestamp", "position") if column in frame.columns]
    if not keys:
        raise DataError(f"{needed_by} needs the order of each user's interactions, but {source} has neither a "
                        "timestamp nor a position column: name one with data.timestamp_col=... or "
                        "data.position_col=..., or read a file of sequences with data=user_lines")
    ranked = frame.select(pl.arg_sort_by([*keys, pl.int_range(pl.len())])).to_series().to_numpy()
    order = np.empty(len(ranked), dtype=np.int64)
    order[ranked] = np.arange(len(ranked))
    return frame.with_columns(order=pl.Series(order))


def with_split_tag(frames: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Stack pre-split frames into one frame with a ``split`` column."""
    return pl.concat(
        [frame.with_columns(pl.lit(name).alias("split")) for name, frame in frames.items()],
        how="diagonal_relaxed",
    )
