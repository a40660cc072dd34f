"""Readers of interaction files: a table per log (``InteractionFileReader``) or a line per user
(``UserLinesReader``), each turning files into the canonical ``InteractionLog``.

Every reader has a ``read()`` method and plain constructor arguments, so Hydra builds it from
``conf/data/*.yaml`` and Python users call it directly. MovieLens folders and the Wikipedia books have
readers of their own (``twotower.data.movielens``, ``twotower.data.books``).
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Mapping
from pathlib import Path

import polars as pl

from twotower.data.columns import DUPLICATED_NAME, SAMPLE_ROWS, header_looks_like_data, unused_column_hint
from twotower.data.interactions import (
    InteractionLog,
    normalise_ids,
    with_split_tag,
)
from twotower.data.tables import (
    check_no_repeated_header,
    checked_min_rating,
    clean_value_columns,
    collect,
    detect_format,
    existing_path,
    reading,
    scan_table,
    side_names,
)
from twotower.errors import TwoTowerError

log = logging.getLogger(__name__)


class InteractionFileReader:
    """A generic interaction log: CSV, TSV, Parquet or NDJSON, one interaction per row.

    ``user_col`` and ``item_col`` are required; ``timestamp_col``, ``position_col`` (each interaction's place in
    its user's sequence), ``rating_col`` and ``label_col`` are used when the file has them. ``valid_path`` and
    ``test_path`` make the log pre-split (use ``split=presplit``). ``item_info_path`` names an optional table
    of item metadata keyed by ``item_col`` (a ``title`` column there lets retrieval look items up by title),
    in ``item_info_encoding``. Rows with a ``rating`` below ``min_rating`` (when set) or a ``label`` <= 0 are
    not positives. ``names`` renames the two sides in messages and labels.
    """

    def __init__(
        self,
        path: str,
        valid_path: str | None = None,
        test_path: str | None = None,
        user_col: str = "user_id",
        item_col: str = "item_id",
        timestamp_col: str | None = "timestamp",
        position_col: str | None = "position",
        rating_col: str | None = "rating",
        label_col: str | None = "label",
        format: str | None = None,
        separator: str | None = None,
        has_header: bool = True,
        item_info_path: str | None = None,
        item_info_encoding: str = "utf8",
        min_rating: float | None = None,
        names: Mapping[str, str] | None = None,
    ) -> None:
        self.paths = {"train": path, "valid": valid_path, "test": test_path}
        self.columns = {"user_id": user_col, "item_id": item_col}
        self.optional = {"timestamp": timestamp_col, "position": position_col, "rating": rating_col,
                         "label": label_col}
        self.format = format
        self.separator = separator
        self.has_header = has_header
        self.item_info_path = item_info_path
        self.item_info_encoding = item_info_encoding
        self.min_rating = checked_min_rating(min_rating)
        self.names = side_names(names)

    def read(self) -> InteractionLog:
        given = {name: path for name, path in self.paths.items() if path}
        # Valid and test files come with the train file's columns: its unused ones are named once, for train.
        frames = {name: self._read_one(existing_path(path, "interaction file"), describe_unused=name == "train")
                  for name, path in given.items()}
        frame = with_split_tag(frames) if len(frames) > 1 else frames["train"]
        source = str(self.paths["train"])
        return InteractionLog(normalise_ids(frame, source), item_info=self.item_info(), source=source,
                              names=self.names, min_rating=self.min_rating)

    @property
    def source(self) -> str:
        return str(self.paths["train"])

    def scan(self) -> pl.LazyFrame:
        """The log as one lazy frame of its canonical columns (ids as written), for reading out of core
        (``twotower-prepare``): a file, or a directory or glob pattern of Parquet files."""
        if self.paths["valid"] or self.paths["test"]:
            raise TwoTowerError("a pre-split log (data.valid_path, data.test_path) is trained on directly, not "
                                "prepared: leave them unset")
        pattern = str(self.paths["train"])
        if any(character in pattern for character in "*?[") and not Path(pattern).exists():
            if not glob.glob(pattern, recursive=True):
                raise TwoTowerError(f"interaction files not found: nothing matches {pattern}")
            return self._selected(pl.scan_parquet(pattern), Path(pattern), "parquet", describe_unused=True)
        path = existing_path(pattern, "interaction file")
        if path.is_dir():
            parts = sorted(path.rglob("*.parquet"))
            if not parts:
                raise TwoTowerError(f"{path} holds no .parquet files; give a file, a folder of Parquet files, or a "
                                    "glob pattern")
            return self._selected(pl.scan_parquet(parts), path, "parquet", describe_unused=True)
        return self._scan_one(path, describe_unused=True)

    def repeatable_header(self) -> list[str] | None:
        """The header line a scanned CSV or TSV log could repeat among its rows (None: another format, or none)."""
        path = Path(str(self.paths["train"]))
        if not self.has_header or not path.is_file() or detect_format(path, self.format) not in ("csv", "tsv"):
            return None
        return list(self.columns.values())

    def _scan_one(self, path: Path, describe_unused: bool) -> pl.LazyFrame:
        format = detect_format(path, self.format)
        with reading(path, format):
            lazy = scan_table(path, format, self.separator, self.has_header)
        if format in ("csv", "tsv"):
            self._selected(lazy, path, format, describe_unused)  # checks the columns on the file's own schema
            lazy = scan_table(path, format, self.separator, self.has_header, text_columns=self.columns.values())
            describe_unused = False
        return self._selected(lazy, path, format, describe_unused)

    def _selected(self, lazy: pl.LazyFrame, path: Path, format: str, describe_unused: bool) -> pl.LazyFrame:
        """The canonical columns of ``lazy`` after checking that its id columns are there."""
        with reading(path, format):
            schema = lazy.collect_schema()
        self._check_id_columns(schema, path, format)
        if describe_unused:
            self._report_unused_columns(lazy, schema, path, format)
        selected = [pl.col(column).alias(name) for name, column in self.columns.items()]
        selected += [pl.col(column).alias(name) for name, column in self.optional.items() if column in schema]
        return lazy.select(selected)

    def _read_one(self, path: Path, describe_unused: bool) -> pl.DataFrame:
        format = detect_format(path, self.format)
        frame = collect(self._scan_one(path, describe_unused), path, format)
        if frame.height == 0:
            raise TwoTowerError(f"{path}: the interaction log has a header but no rows")
        if format in ("csv", "tsv") and self.has_header:
            check_no_repeated_header(frame, list(self.columns.values()), path)
        return clean_value_columns(frame, path)

    def _check_id_columns(self, schema: pl.Schema, path: Path, format: str) -> None:
        missing = [column for column in self.columns.values() if column not in schema]
        if not missing:
            return
        header = schema.names()
        if format in ("csv", "tsv") and self.has_header and header_looks_like_data(header):
            first_row = [DUPLICATED_NAME.sub("", name) for name in header[:20]]
            advice = (f"the file seems to have no header line (it starts {first_row}): "
                      f"{self._no_header_fix(path, format)}")
        else:
            advice = f"the file has {header[:20]}. Name the id columns with data.user_col=... and data.item_col=..."
        raise TwoTowerError(f"{path}: missing column(s) {missing}; {advice}")

    def _no_header_fix(self, path: Path, format: str) -> str:
        """The settings for a file without a header line, with the names Polars then gives its columns."""
        with reading(path, format):
            names = scan_table(path, format, self.separator, has_header=False).collect_schema().names()
        shown = ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")
        return f"set data.has_header=false (and data.user_col / data.item_col to {shown})"

    def _report_unused_columns(self, lazy: pl.LazyFrame, schema: pl.Schema, path: Path, format: str) -> None:
        """Name the file's columns that are not read, in one line, with a hint where one looks like a label,
        rating or timestamp column the settings missed (a ``clicked`` column would otherwise go unnoticed
        while every row trains as a positive)."""
        used = {*self.columns.values(), *(column for column in self.optional.values() if column in schema)}
        unused = [column for column in schema.names() if column not in used]
        if not unused:
            return
        with reading(path, format):
            sample = lazy.select(unused).head(SAMPLE_ROWS).collect()
        # A role is free when its setting names no column of the file; one set to null was switched off.
        free = {role for role, column in self.optional.items() if column is not None and column not in schema}
        notes = [(column, unused_column_hint(column, sample[column], free)) for column in unused]
        hinted = any(hint for _, hint in notes)
        log.log(logging.WARNING if hinted else logging.INFO, "%s: column(s) not used: %s", path,
                ", ".join(f"{column} ({hint})" if hint else column for column, hint in notes))

    def item_info(self) -> pl.DataFrame | None:
        """The item metadata table (``item_info_path``), keyed by ``item_id``; None without one."""
        if not self.item_info_path:
            return None
        path = existing_path(self.item_info_path, "item info file")
        format = detect_format(path, None)
        item_col = self.columns["item_id"]
        encoding = self.item_info_encoding
        with reading(path, format):
            lazy = scan_table(path, format, encoding=encoding)
            if item_col not in lazy.collect_schema():
                raise TwoTowerError(f"{path}: item info needs the item id column '{item_col}'")
            frame = collect(scan_table(path, format, text_columns=[item_col], encoding=encoding), path, format)
        frame = normalise_ids(frame.rename({item_col: "item_id"}), str(path), columns=("item_id",))
        return frame.unique("item_id", keep="first", maintain_order=True)


class UserLinesReader:
    """One line per user: ``user item item ...`` separated by spaces (the LightGCN benchmark format, and the
    next-item benchmarks' sequence files, oldest item first): each item's place in its line is its
    ``position``, the order of the user's sequence."""

    def __init__(self, path: str, valid_path: str | None = None, test_path: str | None = None,
                 names: Mapping[str, str] | None = None) -> None:
        self.paths = {"train": path, "valid": valid_path, "test": test_path}
        self.names = side_names(names)

    def read(self) -> InteractionLog:
        frames = {name: self._read_one(existing_path(path, "interaction file"))
                  for name, path in self.paths.items() if path}
        frame = with_split_tag(frames) if len(frames) > 1 else frames["train"]
        return InteractionLog(frame, source=str(self.paths["train"]), names=self.names)

    @staticmethod
    def _read_one(path: Path) -> pl.DataFrame:
        lines = collect(
            pl.scan_csv(path, has_header=False, separator="\x1f", quote_char=None, new_columns=["line"],
                        schema_overrides={"line": pl.String}),
            path, "user lines",
        )
        tokens = lines.select(pl.col("line").str.strip_chars().str.split(" ").alias("tokens"))
        frame = tokens.select(
            pl.col("tokens").list.first().alias("user_id"),
            pl.col("tokens").list.slice(1).alias("item_id"),
        ).explode("item_id").filter(pl.col("item_id").is_not_null() & (pl.col("item_id") != ""))
        frame = frame.with_columns(position=pl.int_range(pl.len()).over("user_id").cast(pl.Int64))
        try:
            return frame.with_columns(pl.col("user_id", "item_id").cast(pl.Int64))
        except pl.exceptions.InvalidOperationError as error:
            raise TwoTowerError(f"{path}: every token must be an integer id ('user item item ...')") from error
