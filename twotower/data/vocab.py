"""Vocabularies: original ids <-> contiguous indices, with optional metadata, saved with the run."""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl

from twotower.data.ids import as_kind, query_ids
from twotower.errors import DataError, UnknownIdError
from twotower.files import read_parquet, write_parquet


def integer_chunks(ids: pl.Series) -> Iterator[np.ndarray]:
    """``ids`` (integers, no nulls) chunk by chunk as numpy views: numpy temporaries stay a chunk's size
    (a Parquet row group, say) at any log size, and results built per chunk line up with the frame's other
    columns, which spares Polars a copy of the whole frame to realign them."""
    start = 0
    for length in ids.chunk_lengths():
        yield ids.slice(start, length).to_numpy()
        start += length


def plain_integers(ids: pl.Series) -> bool:
    return ids.dtype.is_integer() and ids.null_count() == 0


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
        if plain_integers(ids) and len(ids):
            unique = np.unique(np.concatenate([np.unique(values) for values in integer_chunks(ids)]))
            frame = pl.DataFrame({"index": np.arange(len(unique), dtype=np.int64),
                                  "id": pl.Series(unique, dtype=ids.dtype)})
        else:
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
    def numeric(self) -> bool:
        """Whether the ids are numbers (``Int64``) rather than text."""
        return self.frame.schema["id"] != pl.String

    @property
    def has_titles(self) -> bool:
        return "title" in self.frame.columns

    def encode(self, frame: pl.DataFrame, column: str, alias: str) -> pl.DataFrame:
        """Replace ``column`` (original ids) with ``alias`` (Int32 indices) by a join; every id must be known.

        Row order is not kept (the pipeline sorts afterwards)."""
        ids = frame[column]
        if plain_integers(ids) and self.ids.dtype.is_integer():
            # Integer ids: a binary search in the sorted vocabulary, chunk by chunk; no hash table.
            vocabulary = self.ids.to_numpy()
            parts, unknown = [], False
            for values in integer_chunks(ids):
                found = np.searchsorted(vocabulary, values).clip(max=len(vocabulary) - 1)
                unknown = unknown or bool((vocabulary[found] != values).any())
                parts.append(pl.Series(alias, found.astype(np.int32)))
            encoded = frame.with_columns(pl.concat(parts, rechunk=False) if parts else pl.Series(alias, [], pl.Int32))
            unknown = ~ids.is_in(self.ids.implode()) if unknown else pl.Series([False])
        else:
            mapping = self.frame.select(pl.col("id").alias(column), pl.col("index").cast(pl.Int32).alias(alias))
            encoded = frame.join(mapping, on=column, how="left")
            unknown = encoded[alias].is_null()
        if unknown.any():
            examples = encoded.filter(unknown)[column].unique().sort().head(5).to_list()
            raise DataError(f"{int(unknown.sum())} interaction(s) have a {self.name} id outside the "
                                f"vocabulary, e.g. {examples}")
        return encoded.drop(column)

    def encode_known(self, frame: pl.DataFrame, column: str, alias: str) -> pl.DataFrame:
        """Like ``encode``, but rows whose id is outside the vocabulary (or cannot be read as the
        vocabulary's id type) are dropped."""
        mapping = self.frame.select(pl.col("id").alias(column), pl.col("index").cast(pl.Int32).alias(alias))
        frame = frame.with_columns(as_kind(frame[column], self.numeric).alias(column))
        return frame.join(mapping, on=column).drop(column)

    @cached_property
    def _id_array(self) -> np.ndarray:
        """The ids as one numpy array, in index order (object for strings)."""
        return self.ids.to_numpy()

    @cached_property
    def _searchable(self) -> bool:
        """Whether ids are sorted and index ``i`` is row ``i`` (as every vocabulary built here is): then a
        lookup is a binary search, microseconds for the few ids a query asks for."""
        ids = self._id_array
        in_order = len(ids) < 2 or bool(np.all(ids[1:] > ids[:-1]))
        return in_order and np.array_equal(self.frame["index"].to_numpy(), np.arange(len(ids)))

    def lookup(self, ids: Sequence[object], missing: int | None = None) -> np.ndarray:
        """Indices of ``ids``; unknown ids raise one error that lists them, or map to ``missing`` if given."""
        query = query_ids(ids, self.numeric)
        if self._searchable and len(self):
            absent = query.is_null().to_numpy()
            keys = query.fill_null(self.ids[0]).to_numpy()
            positions = np.searchsorted(self._id_array, keys).clip(max=len(self) - 1)
            unknown = absent | (self._id_array[positions] != keys)
            indices = positions.astype(np.int64)
        else:
            found = query.to_frame().with_row_index("position").join(
                self.frame.select("id", "index"), on="id", how="left").sort("position")
            unknown = found["index"].is_null().to_numpy()
            indices = found["index"].fill_null(-1).to_numpy().astype(np.int64)
        if unknown.any() and missing is not None:
            return np.where(unknown, missing, indices)
        if unknown.any():
            bad = [ids[i] for i in np.flatnonzero(unknown)[:5]]
            raise UnknownIdError(f"unknown {self.name} id(s) {bad}: not in the vocabulary of {len(self)} "
                                f"{self.name}s (e.g. {self.ids.head(3).to_list()})")
        return indices

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Original ids for ``indices`` (a numpy array of the id dtype, object for strings)."""
        return self._id_array[np.asarray(indices, dtype=np.int64)]

    def column(self, name: str, indices: np.ndarray) -> list:
        """Metadata values (e.g. titles) for ``indices``; ``None`` where the column is absent."""
        if name not in self.frame.columns:
            return [None] * len(indices)
        return self.frame[name].gather(np.asarray(indices, dtype=np.int64)).to_list()

    def resolve(self, key: object) -> int:
        """The index of an id or, when the vocabulary has titles, of a title (exact, any case, or unique part)."""
        try:
            return int(self.lookup([key])[0])
        except UnknownIdError:
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
                shown = ", ".join(f"{title!r} [{id_}]" for title, id_ in zip(
                    matches["title"].head(5).to_list(), self.decode(matches["index"].head(5).to_numpy()), strict=True))
                raise UnknownIdError(f"'{text}' matches {matches.height} {self.name}s: {shown}; give the id of the "
                                    "one you mean")
        close = difflib.get_close_matches(text, titles["title"].to_list(), n=3, cutoff=0.5)
        hint = f"; did you mean {close}?" if close else ""
        raise UnknownIdError(f"unknown {self.name} '{text}': neither an id nor a title{hint}")

    def keep(self, indices: np.ndarray) -> tuple[Vocabulary, np.ndarray]:
        """A vocabulary of the sorted ``indices`` only, and the map from each old index to its new one
        (-1 where dropped)."""
        remap = np.full(len(self), -1, dtype=np.int64)
        remap[indices] = np.arange(len(indices))
        frame = self.frame[indices].with_columns(index=pl.arange(0, len(indices), dtype=pl.Int64))
        return Vocabulary(frame, self.name), remap

    def save(self, path: Path) -> None:
        write_parquet(self.frame, path)

    @classmethod
    def load(cls, path: Path, name: str) -> Vocabulary:
        return cls(read_parquet(path), name)
