"""Property-based tests: whatever ids a log holds, readers keep them and vocabularies round-trip them."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twotower.data.interactions import InteractionLog, deduplicate, positives
from twotower.data.readers import InteractionFileReader
from twotower.data.vocab import Vocabulary

text_ids = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12)
int_ids = st.integers(min_value=-(2**62), max_value=2**62)
id_lists = st.one_of(st.lists(text_ids, min_size=1, max_size=40), st.lists(int_ids, min_size=1, max_size=40))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(users=id_lists, items=id_lists, fmt=st.sampled_from(["csv", "parquet", "ndjson"]))
def test_readers_keep_every_id(users: list, items: list, fmt: str) -> None:
    rows = min(len(users), len(items))
    frame = pl.DataFrame({"user_id": users[:rows], "item_id": items[:rows]})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"log.{fmt}"
        getattr(frame, f"write_{fmt}")(path)
        read = InteractionFileReader(str(path)).read().interactions
    for column in ("user_id", "item_id"):
        if frame.schema[column] == pl.String:  # CSV carries no types: text like "12" comes back as a number
            read = read.with_columns(pl.col(column).cast(pl.String))
    assert read.select("user_id", "item_id").rows() == frame.rows()


@settings(max_examples=100, deadline=None)
@given(ids=id_lists, data=st.data())
def test_vocabulary_round_trip(ids: list, data: st.DataObject) -> None:
    vocab = Vocabulary.build(pl.Series(ids), "item")
    assert len(vocab) == len(set(ids))
    query = data.draw(st.lists(st.sampled_from(ids), min_size=1, max_size=20))
    indices = vocab.lookup(query)
    assert indices.min() >= 0 and indices.max() < len(vocab)
    assert vocab.decode(indices).tolist() == query
    assert np.array_equal(vocab.lookup(vocab.decode(np.arange(len(vocab))).tolist()), np.arange(len(vocab)))


@settings(max_examples=50, deadline=None)
@given(pairs=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=60))
def test_positives_have_each_pair_once(pairs: list[tuple[int, int]]) -> None:
    frame = pl.DataFrame(pairs, schema={"user_id": pl.Int64, "item_id": pl.Int64}, orient="row")
    kept = deduplicate(positives(InteractionLog(frame)).rename({"user_id": "user", "item_id": "item"}))
    assert kept.rows() == sorted(set(pairs))  # each pair once, sorted by user then item
