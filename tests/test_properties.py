"""Property-based tests: whatever ids a log holds, readers keep them and vocabularies round-trip them."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from twotower.data.ids import normalise_id_column
from twotower.data.interactions import InteractionLog, deduplicate, positives
from twotower.data.readers import InteractionFileReader
from twotower.data.vocab import Vocabulary
from twotower.errors import TwoTowerError

text_ids = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12)
int_ids = st.integers(min_value=-(2**62), max_value=2**62)
id_lists = st.one_of(st.lists(text_ids, min_size=1, max_size=40), st.lists(int_ids, min_size=1, max_size=40))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(users=id_lists, items=id_lists, fmt=st.sampled_from(["csv", "parquet", "ndjson"]))
def test_readers_keep_every_id_and_queries_find_it_as_written(users: list, items: list, fmt: str) -> None:
    rows = min(len(users), len(items))
    frame = pl.DataFrame({"user_id": users[:rows], "item_id": items[:rows]})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"log.{fmt}"
        getattr(frame, f"write_{fmt}")(path)
        try:
            read = InteractionFileReader(str(path)).read().interactions
        except TwoTowerError as error:  # refused only for the rule's two reasons, and rightly
            written = {str(value).strip() for value in users[:rows] + items[:rows]}
            blank = re.search(r"blank id", str(error)) and "" in written
            clash = re.search(r"one number as several ids, e\.g\. \['(.*)', '(.*)'\]", str(error))
            assert blank or (clash and {clash[1], clash[2]} <= written and float(clash[1]) == float(clash[2]))
            return
    for column in ("user_id", "item_id"):
        written, kept = frame[column].to_list(), read[column].to_list()
        for value, id_ in zip(written, kept, strict=True):  # the same id, or the whole number it spells
            assert id_ == value if isinstance(value, int) else str(id_) == value.strip() or id_ == float(value)
        assert len(set(kept)) == len({str(value).strip() for value in written})  # distinct ids stay distinct
        vocab = Vocabulary.build(read[column], "id")
        assert vocab.decode(vocab.lookup(written)).tolist() == kept  # found as written, wherever typed


@settings(max_examples=100, deadline=None)
@given(ids=id_lists, data=st.data())
def test_vocabulary_round_trip(ids: list, data: st.DataObject) -> None:
    """Over ids as the readers hand them on (see the test above)."""
    try:
        ids = normalise_id_column(pl.Series(ids), "ids", "id").to_list()
    except TwoTowerError:  # blank ids, or one number spelled two ways: refused, as the test above checks
        reject()
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
