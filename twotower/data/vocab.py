"""Vocabularies: original ids <-> contiguous indices, with optional metadata, saved with the run."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from twotower.artifacts import read_parquet, write_parquet
from twotower.errors import TwoTowerError


class Vocabulary:
    """Index ``i`` stands for ``ids[i]``; ``frame`` has ``index``, ``id`` and any metadata columns.

    Ids are sorted, so the same set of ids always gets the same indices whatever the row order.
    """

    def __init__(self, frame: pl.DataFrame, name: str) -> None:
        self.frame = frame
        self.name = name

    @classmethod
    def build(cls, ids: pl.Series, name: str, info: pl.DataFrame | None = None, info_key: str = "") -> Vocabulary:
        """From every id seen in the log; ``info`` (keyed by ``info_key``) adds metadata columns."""
        frame = ids.unique().sort().alias("id").to_frame().with_row_index("index")
        frame = frame.with_columns(pl.col("index").cast(pl.Int64))
        if info is not None:
            info = info.rename({info_key: "id"}).with_columns(pl.col("id").cast(frame.schema["id"], strict=False))
            extra = [c for c in info.columns if c not in ("id", "index")]
            frame = frame.join(info.select("id", *extra).unique("id", keep="first"), on="id", how="left",
                               maintain_order="left")
        return cls(frame, name)

    def __len__(self) -> int:
        return self.frame.height

    @property
    def ids(self) -> pl.Series:
        return self.frame["id"]

    @property
    def has_titles(self) -> bool:
        return "title" in self.frame.columns

    def encode(self, frame: pl.DataFrame, column: str, alias: str) -> pl.DataFrame:
        """Replace ``column`` (original ids) with ``alias`` (indices) by a join; every id must be known."""
        mapping = self.frame.select(pl.col("id").alias(column), pl.col("index").alias(alias))
        encoded = frame.join(mapping, on=column, how="left", maintain_order="left")
        unknown = encoded[alias].null_count()
        if unknown:
            examples = encoded.filter(pl.col(alias).is_null())[column].unique().head(5).to_list()
            raise TwoTowerError(f"{unknown} interaction(s) have a {self.name} id outside the vocabulary, "
                                f"e.g. {examples}")
        return encoded.drop(column)

    def lookup(self, ids: Sequence[object], missing: int | None = None) -> np.ndarray:
        """Indices of ``ids``; unknown ids raise one error that lists them, or map to ``missing`` if given."""
        query = pl.Series("id", list(ids))
        target = self.frame.schema["id"]
        if query.dtype != target:
            query = query.cast(pl.String).cast(target, strict=False) if target != pl.String else query.cast(pl.String)
        found = query.to_frame().with_row_index("position").join(
            self.frame.select("id", "index"), on="id", how="left").sort("position")
        unknown = found["index"].is_null()
        if unknown.any() and missing is not None:
            return found["index"].fill_null(missing).to_numpy().astype(np.int64)
        if unknown.any():
            bad = [ids[i] for i in np.flatnonzero(unknown.to_numpy())[:5]]
            raise TwoTowerError(f"unknown {self.name} id(s) {bad}: not in the vocabulary of {len(self)} "
                                f"{self.name}s (e.g. {self.ids.head(3).to_list()})")
        return found["index"].to_numpy().astype(np.int64)

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Original ids for ``indices`` (a numpy array of the id dtype, object for strings)."""
        return self.ids.gather(np.asarray(indices, dtype=np.int64).ravel()).to_numpy().reshape(np.shape(indices))

    def column(self, name: str, indices: np.ndarray) -> list:
        """Metadata values (e.g. titles) for ``indices``; ``None`` where the column is absent."""
        if name not in self.frame.columns:
            return [None] * len(indices)
        return self.frame[name].gather(np.asarray(indices, dtype=np.int64)).to_list()

    def resolve(self, key: object) -> int:
        """The index of an id or, when the vocabulary has titles, of a title (exact, any case, or unique part)."""
        try:
            return int(self.lookup([key])[0])
        except TwoTowerError:
            if not self.has_titles:
                raise
        titles = self.frame.select("index", "title").drop_nulls()
        text = str(key)
        for condition in (
            pl.col("title") == text,
            pl.col("title").str.to_lowercase() == text.lower(),
            pl.col("title").str.to_lowercase().str.contains(text.lower(), literal=True),
        ):
            matches = titles.filter(condition)
            if matches.height == 1:
                return int(matches["index"][0])
            if matches.height > 1:
                shown = matches["title"].head(5).to_list()
                raise TwoTowerError(f"'{text}' matches {matches.height} {self.name} titles, e.g. {shown}; "
                                    "give the exact title or the id")
        close = difflib.get_close_matches(text, titles["title"].to_list(), n=3, cutoff=0.5)
        hint = f"; did you mean {close}?" if close else ""
        raise TwoTowerError(f"unknown {self.name} '{text}': neither an id nor a title{hint}")

    def save(self, path: Path) -> None:
        write_parquet(self.frame, path)

    @classmethod
    def load(cls, path: Path, name: str) -> Vocabulary:
        return cls(read_parquet(path), name)
