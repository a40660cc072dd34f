"""Reading a table of interactions: the file's format, a lazy scan of it, one-line errors for what goes wrong,
and the checks every reader's rows go through (a header repeated mid-file, value columns that are not numbers).
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import polars as pl

from twotower.data.interactions import (
    DEFAULT_NAMES,
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
               text_columns: Sequence[str] = (), encoding: str = "utf8") -> pl.LazyFrame:
    """A lazy frame over one tabular file; reading errors surface when it is collected.

    In CSV/TSV, ``text_columns`` are read as text (ids: "007" and "7" must stay two ids), and text in another
    ``encoding`` than UTF-8 (``latin-1``, ``cp1252`` ...) is decoded first (the file is read whole, as such
    tables are small: item titles). The path is always one file, never a pattern: ``log[1].csv`` names that
    file, not ``log1.csv``.
    """
    if format in ("csv", "tsv"):
        sep = separator or ("\t" if format == "tsv" else ",")
        options = {"separator": sep, "has_header": has_header, "infer_schema_length": 10_000,
                   "schema_overrides": {column: pl.String for column in text_columns}}
        if encoding.lower().replace("-", "") not in ("utf8", "utf8lossy"):
            return pl.read_csv(path, encoding=encoding, **options).lazy()
        return pl.scan_csv(path, glob=False, encoding="utf8-lossy" if "lossy" in encoding else "utf8", **options)
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
    except LookupError as error:  # an encoding Python does not know
        raise TwoTowerError(f"cannot read {path}: {error} (name a Python codec, e.g. latin-1 or cp1252)") from error
    except (pl.exceptions.PolarsError, OSError, ValueError) as error:
        hint = " (if the file is not UTF-8, give its encoding, e.g. data.item_info_encoding=latin-1)" \
            if "utf-8" in str(error).lower() else ""
        raise TwoTowerError(f"cannot read {path} as {format}: {gist(error)}{hint}") from error


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


def repeats_header(header: Sequence[str]) -> pl.Expr:
    """The rows that repeat a file's header line (two CSVs concatenated with their headers), which would become
    a user and an item named after the columns."""
    return (pl.col("user_id") == header[0]) & (pl.col("item_id") == header[1])


def repeated_header_error(path: Path | str, header: Sequence[str], row: int) -> TwoTowerError:
    line = row + 2  # one for the header, one for counting from 1
    return TwoTowerError(f"{path}: line {line} repeats the header ({header[0]}, {header[1]}); remove the "
                         "repeated header lines (files concatenated with their headers?)")


def check_no_repeated_header(frame: pl.DataFrame, header: list[str], path: Path) -> None:
    repeated = frame.with_row_index("row").filter(repeats_header(header))
    if repeated.height:
        raise repeated_header_error(path, header, int(repeated["row"][0]))


def clean_value_columns(frame: pl.DataFrame, source: Path | str) -> pl.DataFrame:
    """Cast timestamp/position/rating/label to numbers, with a clear error for values that are not numbers."""
    casts = []
    if "position" in frame.columns:
        position = frame["position"].cast(pl.Int64, strict=False)
        if position.null_count() > frame["position"].null_count():
            raise TwoTowerError(f"{source}: column 'position' must hold whole numbers (each interaction's place "
                                f"in its user's sequence), e.g. not {frame['position'].drop_nulls().head(1).to_list()}")
        casts.append(pl.col("position").cast(pl.Int64))
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
