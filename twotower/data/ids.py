"""How an id is read, in one place: training logs, item metadata, users files, the command line and the
Python API all follow the same rule, so an id means the same thing wherever it is typed.

- Surrounding whitespace is not part of an id: " 5" is "5" (and a blank id is refused).
- A column of ids is numeric when every id in it is a whole number: integers, or whole numbers written
  with a decimal point ("5.0", as spreadsheets and pandas write them). Such ids become ``Int64``.
- Any other column keeps its ids as text exactly as written: "007" stays "007", distinct from "7".
  Two spellings of one number in a text column ("5" and "5.0") are refused: they would be two users.
- A query (a users file, ``user=...``, ``recommend(...)``) is read against the vocabulary's kind: for
  numeric ids, text must spell a whole number ("196", "196.0"; "007" is no numeric id); for text ids,
  numbers become their decimal text.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from twotower.errors import TwoTowerError

INTEGER = r"^-?(0|[1-9][0-9]*)$"
WHOLE_DECIMAL = r"^-?(0|[1-9][0-9]*)\.0*$"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _whole_number_text(values: pl.Series) -> pl.Series:
    """Text spelling a whole number without leading zeros ("12", "-3", "12.0"), as that number; null
    elsewhere (and where the number overflows ``Int64``)."""
    text = pl.col("id")
    whole = text.str.contains(INTEGER) | text.str.contains(WHOLE_DECIMAL)
    number = text.str.replace(r"\.0*$", "").cast(pl.Int64, strict=False)
    return values.to_frame("id").select(pl.when(whole).then(number)).to_series()


def normalise_id_column(values: pl.Series, source: str, column: str) -> pl.Series:
    """One id column of a log by the rule above: ``Int64`` or stripped ``String``, never both kinds."""
    dtype = values.dtype
    if dtype.is_integer():
        return values.cast(pl.Int64)
    if dtype.is_float():
        present = values.drop_nulls()
        if (present != present.round(0)).any() or present.is_nan().any():
            raise TwoTowerError(f"{source}: column '{column}' holds non-integer numbers; ids must be integers "
                                "or strings")
        return values.cast(pl.Int64)
    if dtype != pl.String:
        values = values.cast(pl.String)
    values = values.str.strip_chars()
    blank = int((values == "").sum())
    if blank:
        raise TwoTowerError(f"{source}: column '{column}' has {blank} blank id(s); every interaction needs a "
                            "user and an item id")
    numbers = _whole_number_text(values)
    if values.null_count() < len(values) and numbers.null_count() == values.null_count():
        return numbers
    check_one_spelling_per_number(values, source, column)
    return values


def check_one_spelling_per_number(ids: pl.Series, source: str, column: str) -> None:
    """Refuse text ids that spell one number two ways ("5" and "5.0"): they would be two users."""
    ids = ids.unique()
    spelled = ids.to_frame("id").with_columns(number=_whole_number_text(ids)).drop_nulls("number")
    clashes = spelled.filter(pl.col("number").is_duplicated()).sort("number", "id")
    if clashes.height:
        first = clashes.filter(pl.col("number") == clashes["number"][0])["id"].to_list()
        raise TwoTowerError(f"{source}: column '{column}' writes one number as several ids, e.g. {first}; "
                            "write each id one way (ids that are not all whole numbers are read as text)")


def _query_key(value: object, numeric: bool) -> int | str | None:
    """A query value as a key of the vocabulary's kind; text for numeric ids is left to ``query_ids``."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (float, np.floating)) and numeric and np.isfinite(value) and float(value).is_integer():
        value = int(value)
    if isinstance(value, (int, np.integer)):
        if not numeric:
            return str(int(value))
        return int(value) if INT64_MIN <= value <= INT64_MAX else None  # larger is no id of a log
    return value if isinstance(value, str) else None


def as_kind(values: pl.Series, numeric: bool) -> pl.Series:
    """Ids as the readers leave them (``Int64``, or stripped text) read as a vocabulary's kind: numeric
    (``Int64``) or text; null where text cannot be a numeric id."""
    if values.dtype == pl.String:
        return _whole_number_text(values) if numeric else values
    return values.cast(pl.Int64) if numeric else values.cast(pl.String)


def query_ids(ids: Sequence[object], numeric: bool) -> pl.Series:
    """Ids asked for (any mix of Python values), read against a vocabulary of numeric or text ids; null
    where a value cannot be an id of the vocabulary's kind (it is then unknown)."""
    keys = [_query_key(value, numeric) for value in ids]
    if not numeric:
        return pl.Series("id", [key.strip() if isinstance(key, str) else key for key in keys], dtype=pl.String)
    numbers = pl.Series("id", [key if isinstance(key, int) else None for key in keys], dtype=pl.Int64)
    if not any(isinstance(key, str) for key in keys):  # no text to parse: the common case, kept fast
        return numbers
    text = pl.Series("id", [key.strip() if isinstance(key, str) else None for key in keys], dtype=pl.String)
    return numbers.fill_null(as_kind(text, numeric))


def numeric_ids(lazy: pl.LazyFrame, column: str, source: str) -> bool:
    """Whether ``column`` of a lazy log holds numeric ids by the rule above, decided in one streaming pass over
    the whole column (no one piece of a log read out of core may decide its kind), with the rule's refusals:
    numbers that are not whole, blank ids."""
    dtype = lazy.collect_schema()[column]
    if dtype.is_integer():
        return True
    if dtype.is_float():
        values = pl.col(column).drop_nulls()
        whole = lazy.select(((values == values.round(0)) & values.is_not_nan()).all())
        if not whole.collect(engine="streaming").item():
            raise TwoTowerError(f"{source}: column '{column}' holds non-integer numbers; ids must be integers or "
                                "strings")
        return True
    text = pl.col(column).cast(pl.String).str.strip_chars()
    whole, blank = lazy.select((text.str.contains(INTEGER) | text.str.contains(WHOLE_DECIMAL)).all().alias("whole"),
                               (text == "").sum().alias("blank")).collect(engine="streaming").row(0)
    if blank:
        raise TwoTowerError(f"{source}: column '{column}' has {blank} blank id(s); every interaction needs a user and "
                            "an item id")
    return bool(whole)


def id_expression(column: str, numeric: bool, dtype: pl.DataType) -> pl.Expr:
    """``column`` read as ids of the kind ``numeric_ids`` decided: ``Int64``, or stripped text."""
    if numeric and (dtype.is_integer() or dtype.is_float()):
        return pl.col(column).cast(pl.Int64)
    text = pl.col(column).cast(pl.String).str.strip_chars()
    return text.str.replace(r"\.0*$", "").cast(pl.Int64, strict=False) if numeric else text
