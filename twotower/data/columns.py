"""What an unused column of a log looks like it holds (a label, a rating, a timestamp), so that the reader
can say which option would use it; and whether a header line looks like data (a file without a header)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import polars as pl

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
