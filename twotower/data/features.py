"""Side features: metadata columns of a vocabulary turned into tensors a feature tower can embed.

Three kinds, inferred from the column type or named explicitly:

- ``categorical``: one value per id (strings, booleans, small integer codes) -> an index into a table;
- ``multi_hot``: a list of values per id (e.g. genres) -> padded indices, averaged by an ``EmbeddingBag``;
- ``numeric``: a number per id (e.g. age) -> standardised by the training mean and standard deviation.

Each feature's *spec* is plain values (its categories, mean, std), so it is stored with the model's
hyperparameters and the same encoding applies to new ids at retrieval time (cold start). Unknown or
missing values get a reserved index (categorical, multi-hot) or the mean (numeric).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl
import torch

from twotower.errors import TwoTowerError

KINDS = ("categorical", "multi_hot", "numeric")
FeatureSpec = dict[str, Any]


def infer_kind(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.List):
        return "multi_hot"
    if dtype.is_float():
        return "numeric"
    return "categorical"


def feature_specs(frame: pl.DataFrame, features: Sequence[str] | Mapping[str, str], side: str) -> list[FeatureSpec]:
    """Specs for ``features`` (names, or name -> kind) from the metadata ``frame`` of one side."""
    requested = dict(features) if isinstance(features, Mapping) else {name: None for name in features}
    missing = [name for name in requested if name not in frame.columns]
    if missing:
        available = [c for c in frame.columns if c not in ("index", "id")]
        raise TwoTowerError(f"{side} feature(s) {missing} not in the {side} metadata; available: {available}")
    specs = []
    for name, kind in requested.items():
        kind = kind or infer_kind(frame.schema[name])
        if kind not in KINDS:
            raise TwoTowerError(f"unknown feature kind '{kind}' for '{name}'; choose one of {KINDS}")
        column = frame[name]
        if kind == "numeric":
            values = column.cast(pl.Float64, strict=False).fill_nan(None)  # NaN is missing, as in encoding
            if values.null_count() == len(values):
                raise TwoTowerError(f"{side} feature '{name}' has no numeric values")
            std = values.std() or 1.0
            specs.append({"name": name, "kind": kind, "mean": float(values.mean()), "std": float(std)})
            continue
        values = column.explode() if kind == "multi_hot" else column
        categories = sorted(set(values.drop_nulls().cast(pl.String).to_list()))
        spec = {"name": name, "kind": kind, "categories": categories}
        if kind == "multi_hot":
            spec["width"] = max(1, int(column.list.len().max() or 1))
        specs.append(spec)
    return specs


def encode_features(frame: pl.DataFrame, specs: Sequence[FeatureSpec]) -> dict[str, torch.Tensor]:
    """Tensors for each feature, one row per row of ``frame`` (in order)."""
    return {spec["name"]: _encode(frame, spec) for spec in specs}


def _encode(frame: pl.DataFrame, spec: FeatureSpec) -> torch.Tensor:
    name, kind = spec["name"], spec["kind"]
    column = frame[name] if name in frame.columns else pl.Series(name, [None] * frame.height)
    if kind == "numeric":
        values = column.cast(pl.Float64, strict=False).fill_null(spec["mean"]).fill_nan(spec["mean"])
        return torch.from_numpy(((values.to_numpy() - spec["mean"]) / spec["std"]).astype("float32"))
    lookup = pl.DataFrame({"value": spec["categories"], "code": range(len(spec["categories"]))},
                          schema={"value": pl.String, "code": pl.Int64})
    missing = len(spec["categories"])  # the reserved index for unknown and missing values
    if kind == "categorical":
        codes = column.cast(pl.String).to_frame("value").join(lookup, on="value", how="left", maintain_order="left")
        return torch.from_numpy(codes["code"].fill_null(missing).to_numpy().copy())
    width = spec["width"]
    lists = column.cast(pl.List(pl.String)).list.head(width)
    exploded = lists.to_frame("value").with_row_index("row").explode("value")
    coded = exploded.join(lookup, on="value", how="left", maintain_order="left").drop_nulls("code")
    coded = coded.with_columns(slot=pl.int_range(pl.len()).over("row"))
    table = torch.full((frame.height, width), missing, dtype=torch.long)
    if coded.height:
        rows = torch.from_numpy(coded["row"].cast(pl.Int64).to_numpy().copy())
        slots = torch.from_numpy(coded["slot"].cast(pl.Int64).to_numpy().copy())
        table[rows, slots] = torch.from_numpy(coded["code"].to_numpy().copy())
    return table
