from pathlib import Path

import numpy as np
import polars as pl
import pytest

from twotower.data.vocab import Vocabulary
from twotower.errors import TwoTowerError


def test_round_trip_through_indices_and_disk(tmp_path: Path) -> None:
    ids = pl.Series(["b", "a", "c", "a"])
    vocab = Vocabulary.build(ids, "item")
    assert len(vocab) == 3
    indices = vocab.lookup(["c", "a", "b"])
    assert indices.tolist() == [2, 0, 1]  # sorted ids: the order of the log does not matter
    assert vocab.decode(indices).tolist() == ["c", "a", "b"]
    vocab.save(tmp_path / "items.parquet")
    loaded = Vocabulary.load(tmp_path / "items.parquet", "item")
    assert loaded.decode(np.arange(3)).tolist() == ["a", "b", "c"]


def test_integer_ids_keep_their_dtype_and_accept_strings() -> None:
    vocab = Vocabulary.build(pl.Series([30, 10, 20]), "user")
    assert vocab.decode(np.array([0, 2])).tolist() == [10, 30]
    assert vocab.lookup(["20"]).tolist() == [1]  # command-line values may arrive as text


def test_unknown_ids_are_named() -> None:
    vocab = Vocabulary.build(pl.Series([1, 2]), "user")
    with pytest.raises(TwoTowerError, match=r"unknown user id\(s\) \[7\]"):
        vocab.lookup([1, 7])


def test_encode_joins_and_refuses_unknown() -> None:
    vocab = Vocabulary.build(pl.Series(["x", "y"]), "item")
    frame = vocab.encode(pl.DataFrame({"item_id": ["y", "x", "y"]}), "item_id", "item")
    assert frame["item"].to_list() == [1, 0, 1]
    with pytest.raises(TwoTowerError, match="outside the vocabulary"):
        vocab.encode(pl.DataFrame({"item_id": ["z"]}), "item_id", "item")


def test_encode_integer_ids_across_chunks_and_refuses_unknown() -> None:
    # Integer ids take the binary-search path, chunk by chunk: a two-chunk frame exercises the alignment.
    vocab = Vocabulary.build(pl.concat([pl.Series([50, 30]), pl.Series([30, 90])], rechunk=False), "item")
    assert vocab.ids.to_list() == [30, 50, 90]
    frame = pl.concat([pl.DataFrame({"item_id": [90, 30], "user": [0, 1]}),
                       pl.DataFrame({"item_id": [50], "user": [2]})], rechunk=False)
    encoded = vocab.encode(frame, "item_id", "item")
    assert encoded.to_dict(as_series=False) == {"user": [0, 1, 2], "item": [2, 0, 1]}
    assert encoded.schema["item"] == pl.Int32
    with pytest.raises(TwoTowerError, match=r"2 interaction\(s\) .* outside the vocabulary, e.g. \[40, 95\]"):
        vocab.encode(pl.DataFrame({"item_id": [30, 40, 95]}), "item_id", "item")


def test_resolve_by_title() -> None:
    info = pl.DataFrame({"item_id": [1, 2, 3], "title": ["Toy Story (1995)", "Heat (1995)", "Toy Soldiers"]})
    vocab = Vocabulary.build(pl.Series([1, 2, 3]), "movie", info, "item_id")
    assert vocab.resolve(2) == 1
    assert vocab.resolve("heat (1995)") == 1
    assert vocab.resolve("Story") == 0
    with pytest.raises(TwoTowerError, match=r"matches 2 movies: .*give the id"):
        vocab.resolve("Toy")
    with pytest.raises(TwoTowerError, match="did you mean"):
        vocab.resolve("Toy Stories")


def test_queries_are_read_by_the_rule_logs_are_read_by() -> None:
    numeric = Vocabulary.build(pl.Series([7, 186, 196]), "user")
    assert numeric.lookup(["196", 186, " 7 ", 7.0, "196.0", np.int32(7)]).tolist() == [2, 1, 0, 0, 2, 0]
    for stranger in ("007", "7.5", 7.5, True, None, 2**64, "abc"):
        with pytest.raises(TwoTowerError, match="unknown user id"):
            numeric.lookup([stranger])
    text = Vocabulary.build(pl.Series(["007", "7", "a"]), "item")
    assert text.lookup(["007", 7, " a"]).tolist() == [0, 1, 2]
    with pytest.raises(TwoTowerError, match=r"unknown item id\(s\) \[7\.0\]"):
        text.lookup([7.0])
