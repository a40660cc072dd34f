"""MovieLens folders: ml-100k (u.data, u.item, u.user) and ml-1m/ml-10m (ratings.dat, movies.dat, users.dat),
with titles and genres for retrieval and plots."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import polars as pl

from twotower.data.interactions import (
    InteractionLog,
)
from twotower.data.tables import checked_min_rating, existing_path, reading, side_names
from twotower.errors import TwoTowerError


class MovieLensReader:
    """A MovieLens folder: ml-100k (``u.data``, ``u.item``, ``u.user``) or ml-1m/10m (``ratings.dat`` ...).

    Titles and genres become item metadata; age, gender and occupation become user metadata. Ratings
    of at least ``min_rating`` count as positives (all ratings when it is None).
    """

    def __init__(self, path: str, min_rating: float | None = None, names: Mapping[str, str] | None = None
                 ) -> None:
        self.path = path
        self.min_rating = checked_min_rating(min_rating)
        self.names = side_names(names)

    def read(self) -> InteractionLog:
        folder = existing_path(self.path, "MovieLens folder")
        if (folder / "u.data").exists():
            log = self._read_100k(folder)
        elif (folder / "ratings.dat").exists():
            log = self._read_dat(folder)
        else:
            raise TwoTowerError(f"{folder} is not a MovieLens folder: it has neither u.data nor ratings.dat")
        return replace(log, names=self.names, min_rating=self.min_rating, example_item="Toy Story (1995)")

    @staticmethod
    def _read_100k(folder: Path) -> InteractionLog:
        with reading(folder / "u.data", "MovieLens ratings"):
            ratings = pl.read_csv(
                folder / "u.data", separator="\t", has_header=False,
                new_columns=["user_id", "item_id", "rating", "timestamp"],
                schema_overrides={"user_id": pl.Int64, "item_id": pl.Int64, "rating": pl.Float64,
                                  "timestamp": pl.Int64},
            )
        item_info = user_info = None
        if (folder / "u.item").exists():
            genres = _latin1_table(folder / "u.genre", ["genre", "index"]).get_column("genre").to_list() \
                if (folder / "u.genre").exists() else [f"genre_{i}" for i in range(19)]
            items = _latin1_table(folder / "u.item",
                                  ["item_id", "title", "release_date", "video_release_date", "url", *genres])
            item_info = _with_genre_lists(items.select("item_id", "title", *genres), genres)
        if (folder / "u.user").exists():
            user_info = _latin1_table(folder / "u.user", ["user_id", "age", "gender", "occupation", "zip"]) \
                .select("user_id", "age", "gender", "occupation")
        return InteractionLog(ratings, item_info=item_info, user_info=user_info, source=str(folder))

    @staticmethod
    def _read_dat(folder: Path) -> InteractionLog:
        ratings = _latin1_table(folder / "ratings.dat", ["user_id", "item_id", "rating", "timestamp"], "::")
        with reading(folder / "ratings.dat", "MovieLens ratings"):
            ratings = ratings.with_columns(pl.col("rating").cast(pl.Float64))
        item_info = user_info = None
        if (folder / "movies.dat").exists():
            movies = _latin1_table(folder / "movies.dat", ["item_id", "title", "genres"], "::")
            item_info = movies.with_columns(pl.col("genres").str.split("|")).with_columns(
                genre=pl.col("genres").list.first())
        if (folder / "users.dat").exists():
            user_info = _latin1_table(folder / "users.dat",
                                      ["user_id", "gender", "age", "occupation", "zip"], "::") \
                .select("user_id", "age", "gender", "occupation")
        return InteractionLog(ratings, item_info=item_info, user_info=user_info, source=str(folder))


def _latin1_table(path: Path, columns: Sequence[str], separator: str = "|") -> pl.DataFrame:
    """MovieLens metadata files are Latin-1 and separated by '|' or '::'; Polars wants UTF-8 and one byte."""
    with reading(path, "a MovieLens table"):
        text = path.read_bytes().decode("latin-1")
        if len(separator) > 1:
            text = text.replace(separator, "\t")
            separator = "\t"
        text = "\n".join(line for line in text.splitlines() if line.strip())
        return pl.read_csv(io.StringIO(text), separator=separator, has_header=False, new_columns=list(columns),
                           quote_char=None, infer_schema_length=None)


def _with_genre_lists(items: pl.DataFrame, genres: Sequence[str]) -> pl.DataFrame:
    """Turn 0/1 genre flag columns into a ``genres`` list and a single display ``genre`` (the first)."""
    flags = pl.concat_list([pl.when(pl.col(g) == 1).then(pl.lit(g)) for g in genres]).list.drop_nulls()
    return items.select("item_id", "title", flags.alias("genres")).with_columns(
        genre=pl.col("genres").list.first())
