"""Readers: one class per source format, each turning files into the canonical ``InteractionLog``.

Every reader has a ``read()`` method and plain constructor arguments, so Hydra builds it from
``conf/data/*.yaml`` and Python users call it directly.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import polars as pl

from twotower.data.interactions import (
    DEFAULT_NAMES,
    EXAMPLES,
    InteractionLog,
    dropped_ids,
    normalise_ids,
    with_split_tag,
)
from twotower.errors import TwoTowerError

log = logging.getLogger(__name__)

_FORMATS = {
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "csv",
    ".parquet": "parquet", ".pq": "parquet",
    ".ndjson": "ndjson", ".jsonl": "ndjson", ".json": "ndjson",
}


def side_names(names: Mapping[str, str] | None) -> dict[str, str]:
    """What the two sides are called, e.g. ``{"user": "link", "item": "book"}``."""
    return {**DEFAULT_NAMES, **dict(names or {})}


def existing_path(path: str | Path, what: str = "file") -> Path:
    """The path as a ``Path``, or a clear error when it does not exist."""
    if path is None or str(path) == "":
        raise TwoTowerError(f"no {what} given: set its path (e.g. data.path=FILE)")
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise TwoTowerError(f"{what} not found: {resolved}")
    return resolved


def checked_min_rating(value: object) -> float | None:
    """``data.min_rating``: unset, or a number (a typo would otherwise surface as a baffling filter)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise TwoTowerError(f"data.min_rating must be a number (or null), got {value!r}")
    return value


def detect_format(path: Path, format: str | None) -> str:
    if format:
        if format not in set(_FORMATS.values()):
            raise TwoTowerError(f"unknown format '{format}'; choose one of {sorted(set(_FORMATS.values()))}")
        return format
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    if not suffixes or suffixes[-1] not in _FORMATS:
        raise TwoTowerError(
            f"cannot tell the format of {path} from its name; use one of "
            f"{sorted(_FORMATS)} (optionally .gz) or set the format (csv, tsv, parquet, ndjson)"
        )
    return _FORMATS[suffixes[-1]]


def scan_table(path: Path, format: str, separator: str | None = None, has_header: bool = True,
               text_columns: Sequence[str] = ()) -> pl.LazyFrame:
    """A lazy frame over one tabular file; reading errors surface when it is collected.

    In CSV/TSV, ``text_columns`` are read as text (ids: "007" and "7" must stay two ids). The path is
    always one file, never a pattern: ``log[1].csv`` names that file, not ``log1.csv``.
    """
    if format in ("csv", "tsv"):
        sep = separator or ("\t" if format == "tsv" else ",")
        return pl.scan_csv(path, separator=sep, has_header=has_header, infer_schema_length=10_000,
                           schema_overrides={column: pl.String for column in text_columns}, glob=False)
    if format == "parquet":
        return pl.scan_parquet(path, glob=False)
    # scan_ndjson has no glob switch: escaping the pattern characters makes it match this file only.
    return pl.scan_ndjson(glob.escape(str(path)), infer_schema_length=10_000)


@contextmanager
def reading(path: Path, format: str) -> Iterator[None]:
    """Turn whatever Polars or the OS raise while reading ``path`` into one readable ``TwoTowerError``."""
    try:
        yield
    except pl.exceptions.NoDataError as error:
        raise TwoTowerError(f"{path} is empty") from error
    except (pl.exceptions.PolarsError, OSError, ValueError) as error:
        raise TwoTowerError(f"cannot read {path} as {format}: {gist(error)}") from error


def gist(error: BaseException, limit: int = 300) -> str:
    """An error's first paragraph on one line: Polars follows it with advice on its own API, and a value it
    quotes can itself span lines (an unclosed quote in a CSV)."""
    paragraph = " ".join(str(error).strip().split("\n\n")[0].split())
    if not paragraph:
        return type(error).__name__
    return paragraph if len(paragraph) <= limit else paragraph[:limit] + " ..."


def collect(frame: pl.LazyFrame, path: Path, format: str) -> pl.DataFrame:
    with reading(path, format):
        return frame.collect()


class InteractionFileReader:
    """A generic interaction log: CSV, TSV, Parquet or NDJSON, one interaction per row.

    ``user_col`` and ``item_col`` are required; ``timestamp_col``, ``rating_col`` and ``label_col`` are used
    when the file has them. ``valid_path`` and ``test_path`` make the log pre-split (use ``split=presplit``).
    ``item_info_path`` names an optional table of item metadata keyed by ``item_col`` (a ``title`` column
    there lets retrieval look items up by title). Rows with a ``rating`` below ``min_rating`` (when set)
    or a ``label`` <= 0 are not positives. ``names`` renames the two sides in messages and labels.
    """

    def __init__(
        self,
        path: str,
        valid_path: str | None = None,
        test_path: str | None = None,
        user_col: str = "user_id",
        item_col: str = "item_id",
        timestamp_col: str | None = "timestamp",
        rating_col: str | None = "rating",
        label_col: str | None = "label",
        format: str | None = None,
        separator: str | None = None,
        has_header: bool = True,
        item_info_path: str | None = None,
        min_rating: float | None = None,
        names: Mapping[str, str] | None = None,
    ) -> None:
        self.paths = {"train": path, "valid": valid_path, "test": test_path}
        self.columns = {"user_id": user_col, "item_id": item_col}
        self.optional = {"timestamp": timestamp_col, "rating": rating_col, "label": label_col}
        self.format = format
        self.separator = separator
        self.has_header = has_header
        self.item_info_path = item_info_path
        self.min_rating = checked_min_rating(min_rating)
        self.names = side_names(names)

    def read(self) -> InteractionLog:
        given = {name: path for name, path in self.paths.items() if path}
        # Valid and test files come with the train file's columns: its unused ones are named once, for train.
        frames = {name: self._read_one(existing_path(path, "interaction file"), describe_unused=name == "train")
                  for name, path in given.items()}
        frame = with_split_tag(frames) if len(frames) > 1 else frames["train"]
        source = str(self.paths["train"])
        return InteractionLog(normalise_ids(frame, source), item_info=self._item_info(), source=source,
                              names=self.names, min_rating=self.min_rating)

    def _read_one(self, path: Path, describe_unused: bool) -> pl.DataFrame:
        format = detect_format(path, self.format)
        with reading(path, format):
            lazy = scan_table(path, format, self.separator, self.has_header)
            schema = lazy.collect_schema()
        self._check_id_columns(schema, path, format)
        if describe_unused:
            self._report_unused_columns(lazy, schema, path, format)
        if format in ("csv", "tsv"):
            lazy = scan_table(path, format, self.separator, self.has_header, text_columns=self.columns.values())
        selected = [pl.col(column).alias(name) for name, column in self.columns.items()]
        selected += [pl.col(column).alias(name) for name, column in self.optional.items() if column in schema]
        frame = collect(lazy.select(selected), path, format)
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

    def _item_info(self) -> pl.DataFrame | None:
        if not self.item_info_path:
            return None
        path = existing_path(self.item_info_path, "item info file")
        format = detect_format(path, None)
        item_col = self.columns["item_id"]
        lazy = scan_table(path, format)
        with reading(path, format):
            if item_col not in lazy.collect_schema():
                raise TwoTowerError(f"{path}: item info needs the item id column '{item_col}'")
        frame = collect(scan_table(path, format, text_columns=[item_col]), path, format)
        frame = normalise_ids(frame.rename({item_col: "item_id"}), str(path), columns=("item_id",))
        return frame.unique("item_id", keep="first", maintain_order=True)


SAMPLE_ROWS = 10_000  # rows looked at to guess what an unused column holds: cheap at any log size
DUPLICATED_NAME = re.compile(r"_duplicated_\d+$")  # Polars' suffix for a repeated header name ("5", "5_duplicated_0")


def header_looks_like_data(names: Sequence[str]) -> bool:
    """Whether most header names are numbers: then the header line is most likely the first row of data."""
    def is_number(name: str) -> bool:
        try:
            float(DUPLICATED_NAME.sub("", name))
        except ValueError:
            return False
        return True
    return sum(is_number(name) for name in names) * 2 > len(names)


ROLE_HINTS = {
    "label": "only 0/1 values, like a label: every row counts as a positive now; "
             "set data.label_col={column} to train on its labels",
    "rating": "few distinct numbers, like ratings: set data.rating_col={column}, and data.min_rating=... to "
              "train on the high ones only",
    "timestamp": "looks like timestamps: set data.timestamp_col={column}, which split=temporal needs",
}


def unused_column_hint(column: str, values: pl.Series, free_roles: set[str]) -> str:
    """A hint to use ``column`` (a sample of its values) for a role no column fills yet, or ''."""
    role = guessed_role(values)
    return ROLE_HINTS[role].format(column=column) if role in free_roles else ""


def guessed_role(values: pl.Series) -> str | None:
    """``label``, ``timestamp`` or ``rating`` when a column's values look like one, else None."""
    values = values.drop_nulls()
    if values.dtype.is_float():
        values = values.drop_nans()
    if values.is_empty():
        return None
    if values.dtype == pl.Boolean or (values.dtype.is_numeric() and ((values == 0) | (values == 1)).all()):
        return "label"
    if looks_like_timestamps(values):
        return "timestamp"
    if values.dtype.is_numeric() and looks_like_ratings(values):
        return "rating"
    return None


def looks_like_timestamps(values: pl.Series) -> bool:
    """Dates, text that parses as dates, or numbers in the range of Unix seconds or milliseconds since 1973
    (smaller integers are more likely counts or ids)."""
    if values.dtype.is_temporal():
        return True
    if values.dtype.is_numeric():
        return bool(values.min() >= 1e8 and values.max() < 1e13)
    if values.dtype != pl.String:
        return False
    try:
        return values.str.to_datetime(strict=False).null_count() == 0
    except pl.exceptions.PolarsError:  # no date format fits the text
        return False


def looks_like_ratings(values: pl.Series) -> bool:
    """A few non-negative numbers up to 10 in steps of a half: 1-5 stars, 0.5-5, 1-10."""
    doubled = values.cast(pl.Float64) * 2
    return bool(values.n_unique() <= 21 and values.min() >= 0 and values.max() <= 10
                and (doubled == doubled.round(0)).all())


def check_no_repeated_header(frame: pl.DataFrame, header: list[str], path: Path) -> None:
    """A header line in the middle of a file (two CSVs concatenated) would become a user and an item named
    after the columns; refuse it instead."""
    repeated = frame.with_row_index("row").filter(
        (pl.col("user_id") == header[0]) & (pl.col("item_id") == header[1]))
    if repeated.height:
        line = int(repeated["row"][0]) + 2  # one for the header, one for counting from 1
        raise TwoTowerError(f"{path}: line {line} repeats the header ({header[0]}, {header[1]}); remove "
                            "the repeated header lines (files concatenated with their headers?)")


def clean_value_columns(frame: pl.DataFrame, source: Path | str) -> pl.DataFrame:
    """Cast timestamp/rating/label to numbers, with a clear error for values that are not numbers."""
    casts = []
    if "timestamp" in frame.columns:
        dtype = frame.schema["timestamp"]
        if dtype == pl.String:
            unparseable = TwoTowerError(f"{source}: column 'timestamp' holds values that are neither numbers "
                                        f"nor dates, e.g. {frame['timestamp'].drop_nulls().head(1).to_list()}")
            try:
                parsed = frame["timestamp"].str.to_datetime(strict=False)
            except pl.exceptions.PolarsError as error:
                raise unparseable from error
            if parsed.null_count() > frame["timestamp"].null_count():
                raise unparseable
            frame = frame.with_columns(timestamp=parsed)
            dtype = parsed.dtype
        if dtype.is_temporal():
            casts.append(pl.col("timestamp").dt.epoch("s").cast(pl.Int64))
        elif dtype.is_numeric():
            casts.append(pl.col("timestamp").cast(pl.Int64))
        else:
            raise TwoTowerError(f"{source}: column 'timestamp' must hold numbers or dates, not {dtype}")
    for column in ("rating", "label"):
        if column not in frame.columns:
            continue
        values = frame[column]
        numeric = values.cast(pl.Float64, strict=False)
        bad = numeric.is_null() | numeric.is_nan()
        if bad.any():
            example = values.filter(bad).head(1).to_list()
            raise TwoTowerError(f"{source}: column '{column}' has {int(bad.sum())} missing or non-numeric "
                                f"value(s), e.g. {example}")
        casts.append(numeric.alias(column))
    return frame.with_columns(casts) if casts else frame


class UserLinesReader:
    """One line per user: ``user item item ...`` separated by spaces (the LightGCN benchmark format)."""

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
        try:
            return frame.with_columns(pl.col("user_id", "item_id").cast(pl.Int64))
        except pl.exceptions.InvalidOperationError as error:
            raise TwoTowerError(f"{path}: every token must be an integer id ('user item item ...')") from error


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


DEFAULT_DROPPED_LINKS = (
    "hardcover", "paperback", "hardback", "e-book",
    "wikipedia:wikiproject books", "wikipedia:wikiproject novels",
)
BOOK_INFO_FIELDS = ("author", "genre", "country", "language", "publisher", "series")
# Infobox genres are free text ("Science fiction novel", "Fantasy, horror"...). For colouring maps they are
# folded into a few broad groups: the first group with a keyword in the lower-cased genre wins.
GENRE_GROUPS = (
    ("science fiction", ("science fiction", "sci-fi", "space opera", "cyberpunk", "dystopia")),
    ("fantasy", ("fantasy", "sword and sorcery")),
    ("horror", ("horror", "weird", "supernatural", "ghost", "gothic")),
    ("crime & mystery", ("crime", "mystery", "detective", "thriller", "gong'an", "spy")),
    ("children's & young adult", ("children", "young adult", "picture book", "juvenile")),
    ("romance", ("romance", "regency")),
    ("historical", ("historical",)),
    ("non-fiction", ("non-fiction", "nonfiction", "biography", "memoir", "essay", "philosophy", "politic",
                     "history", "science", "dictionary", "encyclopedia", "reference", "travel")),
    ("poetry", ("poetry", "poem")),
    ("adventure & war", ("adventure", "war")),
)


def genre_group(genre: pl.Expr) -> pl.Expr:
    lowered = genre.str.to_lowercase()
    expression = pl.lit(None, dtype=pl.String)
    for group, keywords in reversed(GENRE_GROUPS):
        matched = pl.any_horizontal([lowered.str.contains(keyword, literal=True) for keyword in keywords])
        expression = pl.when(matched).then(pl.lit(group)).otherwise(expression)
    return expression


# The book reader is the default data: a user's own log given as data.path=... without data=interactions
# lands here.
NOT_BOOKS_HINT = ("for an interaction log (CSV, TSV, Parquet, NDJSON of user/item rows) use data=interactions "
                  "data.path=...")


class WikiBooksReader:
    """Wikipedia book articles and their wikilinks (one JSON array per line, optionally gzipped).

    Each line is ``[title, infobox, wikilinks, external_links, last_edit, length]``. Books become items and
    wikilinks become the other tower ("users"): a (link, book) pair is one interaction. As in the original
    book-embedding project, links are lower-cased, a few that say nothing about content (``hardcover``,
    ``paperback`` ...) are dropped, and only links found in at least ``min_link_count`` books are kept.
    """

    def __init__(self, path: str, min_link_count: int = 4,
                 drop_links: Sequence[str] = DEFAULT_DROPPED_LINKS, lowercase_links: bool = True,
                 names: Mapping[str, str] | None = None, example_item: str | None = "The Beasts of Tarzan"
                 ) -> None:
        self.path = path
        self.names = side_names(names or {"user": "link", "item": "book"})
        self.example_item = example_item
        self.min_link_count = min_link_count
        self.drop_links = tuple(drop_links)
        self.lowercase_links = lowercase_links

    def read(self) -> InteractionLog:
        path = existing_path(self.path, "book file")
        books, pairs = self._parse(path)
        frame = pl.DataFrame(pairs, schema={"item_id": pl.String, "user_id": pl.String}, orient="row")
        if self.lowercase_links:
            frame = frame.with_columns(pl.col("user_id").str.to_lowercase())
        frame, dropped = self._keep_shared_links(frame.unique(maintain_order=True), path)
        if frame.height == 0:
            raise TwoTowerError(f"{path}: no wikilink appears in at least {self.min_link_count} books; "
                                "lower data.min_link_count")
        item_info = pl.DataFrame(books, schema={"item_id": pl.String, "title": pl.String,
                                                **{f: pl.String for f in BOOK_INFO_FIELDS}}, orient="row")
        item_info = item_info.with_columns(genre_group=genre_group(pl.col("genre")))
        dropped = pl.concat([dropped, self._books_without_links(item_info, frame, path)])
        return InteractionLog(frame, item_info=item_info.unique("item_id", maintain_order=True),
                              source=str(path), names=self.names, example_item=self.example_item, dropped=dropped)

    def _keep_shared_links(self, frame: pl.DataFrame, path: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The (link, book) pairs of links in ``drop_links`` and of links in fewer than ``min_link_count``
        books left out; returns the rest and the links left out."""
        listed = pl.col("user_id").is_in(list(self.drop_links))
        books_per_link = frame.filter(~listed).group_by("user_id").len()
        rare = books_per_link.filter(pl.col("len") < self.min_link_count)["user_id"]
        named = frame.filter(listed)["user_id"].unique()
        kept = frame.filter(~listed & ~pl.col("user_id").is_in(rare.implode())).select("user_id", "item_id")
        if kept.height < frame.height:
            log.info("%s: %d %s(s) in fewer than data.min_link_count=%d %ss and %d in drop_links left out "
                     "(%d of %d pairs)", path, rare.len(), self.names["user"], self.min_link_count,
                     self.names["item"], named.len(), frame.height - kept.height, frame.height)
        dropped = pl.concat([
            dropped_ids("user", rare, f"in fewer than data.min_link_count={self.min_link_count} {self.names['item']}s"),
            dropped_ids("user", named, "in drop_links (says nothing about content)"),
        ])
        return kept, dropped

    def _books_without_links(self, item_info: pl.DataFrame, kept: pl.DataFrame, path: Path) -> pl.DataFrame:
        """Books none of whose links is kept: they are in the file but in no interaction."""
        lonely = item_info.join(kept, on="item_id", how="anti")["item_id"].unique()
        if lonely.len():
            log.info("%s: %d %s(s) have no %s left and are left out, e.g. %s", path, lonely.len(),
                     self.names["item"], self.names["user"], lonely.sort().head(EXAMPLES).to_list())
        return dropped_ids("item", lonely, f"no {self.names['user']} found in at least "
                                           f"data.min_link_count={self.min_link_count} {self.names['item']}s")

    @staticmethod
    def _parse(path: Path) -> tuple[list[tuple], list[tuple[str, str]]]:
        opener = gzip.open if path.suffix == ".gz" else open
        books: list[tuple] = []
        pairs: list[tuple[str, str]] = []
        try:
            with opener(path, "rt", encoding="utf-8") as lines:
                for number, line in enumerate(lines, start=1):
                    if not line.strip():
                        continue
                    record = json.loads(line)
                    if not (isinstance(record, list) and len(record) >= 3 and isinstance(record[0], str)
                            and isinstance(record[2], list)):
                        raise TwoTowerError(f"{path}:{number}: expected [title, infobox, [wikilinks], ...]; "
                                            f"{NOT_BOOKS_HINT}")
                    title, infobox, links = record[0], record[1] if isinstance(record[1], dict) else {}, record[2]
                    books.append((title, title, *(_text(infobox.get(f)) for f in BOOK_INFO_FIELDS)))
                    pairs.extend((title, str(link)) for link in links)
        except (json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError) as error:
            raise TwoTowerError(f"cannot read {path} as book/link NDJSON: {error}; {NOT_BOOKS_HINT}") from error
        if not books:
            raise TwoTowerError(f"{path} holds no books; {NOT_BOOKS_HINT}")
        return books, pairs


def _text(value: object) -> str | None:
    """Infobox values are mostly strings; keep them short and single-line for labels and colours."""
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text or None
