"""The data side says what it does: unused columns (with hints where one looks like a label, rating or
timestamp), rows and ids that filters drop (logged, and saved for retrieval to explain), and one-line reader
errors that name the file and hint at the common mistakes (no header line, forgetting data=interactions)."""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from hydra.utils import instantiate

from tests.conftest import compose_train
from twotower.data.books import WikiBooksReader
from twotower.data.datamodule import TEST_ONLY, InteractionDataModule
from twotower.data.interactions import DROPPED_SCHEMA
from twotower.data.movielens import MovieLensReader
from twotower.data.readers import InteractionFileReader, UserLinesReader
from twotower.data.sampling import NegativeSampler
from twotower.data.splits import PresplitSplit, RandomSplit
from twotower.errors import TwoTowerError
from twotower.run import RunPaths
from twotower.training.train import save_data


@pytest.fixture(autouse=True)
def capture_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="twotower")


def grid(n_users: int = 20, n_items: int = 12, per_user: int = 6, first_user: int = 0) -> pl.DataFrame:
    """Every user with ``per_user`` consecutive items: each item is shared, each user can hold some out."""
    rows = [(user, (user + k) % n_items) for user in range(first_user, first_user + n_users) for k in range(per_user)]
    return pl.DataFrame(rows, schema={"user_id": pl.Int64, "item_id": pl.Int64}, orient="row")


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if text in record.getMessage()]


def unused_line(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    found = lines(caplog, "column(s) not used")
    assert len(found) == 1, [record.getMessage() for record in caplog.records]
    return found[0]


def datamodule(reader: object, split: object | None = None) -> InteractionDataModule:
    module = InteractionDataModule(reader, split or RandomSplit(seed=0), NegativeSampler(), batch_size=8)
    module.setup("fit")
    return module


# 1. Columns the reader does not use ------------------------------------------------------------------------

@pytest.mark.parametrize("clicked", [[1, 0] * 60, [True, False] * 60], ids=["0/1", "booleans"])
def test_an_unused_label_like_column_is_named_with_a_hint(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                          clicked: list) -> None:
    grid().with_columns(clicked=pl.Series(clicked), country=pl.lit("fr")).write_csv(tmp_path / "log.csv")
    InteractionFileReader(str(tmp_path / "log.csv")).read()
    record = unused_line(caplog)
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "log.csv" in message and "country" in message
    assert "set data.label_col=clicked to train on its labels" in message


def test_the_hinted_label_column_then_trains_on_its_labels(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    grid().with_columns(clicked=pl.Series([1, 0] * 60)).write_csv(tmp_path / "log.csv")
    log = InteractionFileReader(str(tmp_path / "log.csv"), label_col="clicked").read()
    assert sorted(log.interactions["label"].unique().to_list()) == [0.0, 1.0]
    assert not lines(caplog, "column(s) not used")


@pytest.mark.parametrize(("values", "hint"), [
    ([1, 2, 3, 4, 5, 3] * 20, "data.rating_col=extra"),
    ([0.5, 1.5, 2.0, 3.5, 4.5, 5.0] * 20, "data.rating_col=extra"),
    ([1_600_000_000 + 3_600 * i for i in range(120)], "data.timestamp_col=extra"),
    ([f"2024-03-{1 + i % 28:02d}" for i in range(120)], "data.timestamp_col=extra"),
], ids=["1-5 stars", "half stars", "unix seconds", "dates"])
def test_unused_rating_and_timestamp_columns_get_hints(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                       values: list, hint: str) -> None:
    grid().with_columns(extra=pl.Series(values)).write_csv(tmp_path / "log.csv")
    InteractionFileReader(str(tmp_path / "log.csv")).read()
    record = unused_line(caplog)
    assert record.levelno == logging.WARNING and hint in record.getMessage()


def test_unused_columns_that_look_like_nothing_are_info(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    frame = grid().with_columns(country=pl.lit("fr"), price=pl.Series([9.99, 120.5, 31.0] * 40))
    frame.write_parquet(tmp_path / "log.parquet")
    InteractionFileReader(str(tmp_path / "log.parquet")).read()
    record = unused_line(caplog)
    assert record.levelno == logging.INFO
    assert record.getMessage().endswith("column(s) not used: country, price")


def test_no_hint_for_a_role_already_filled_or_switched_off(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    grid().with_columns(label=pl.lit(1), clicked=pl.Series([1, 0] * 60)).write_csv(tmp_path / "log.csv")
    InteractionFileReader(str(tmp_path / "log.csv")).read()  # label is used: clicked is just another column
    InteractionFileReader(str(tmp_path / "log.csv"), label_col=None).read()  # labels switched off on purpose
    found = lines(caplog, "column(s) not used")
    assert [record.levelno for record in found] == [logging.INFO, logging.INFO]
    assert "data.label_col" not in found[0].getMessage() + found[1].getMessage()


def test_no_line_when_every_column_is_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    grid().with_columns(rating=pl.lit(5.0)).write_csv(tmp_path / "log.csv")
    InteractionFileReader(str(tmp_path / "log.csv")).read()
    assert not lines(caplog, "column(s) not used")


def test_presplit_files_name_their_unused_columns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("train", "valid", "test"):
        grid().with_columns(clicked=pl.Series([1, 0] * 60)).write_csv(tmp_path / f"{name}.csv")
    InteractionFileReader(str(tmp_path / "train.csv"), valid_path=str(tmp_path / "valid.csv"),
                          test_path=str(tmp_path / "test.csv")).read()
    assert "train.csv" in unused_line(caplog).getMessage()


# 2. Rows and ids that filters drop ---------------------------------------------------------------------------

def rated_log(tmp_path: Path) -> Path:
    """Ratings of 4-5 for a grid of users, plus user 685 and items 900-902 rated 1-3 only."""
    good = grid().with_columns(rating=pl.Series([4.0, 5.0] * 60))
    low = pl.DataFrame({"user_id": [685, 685, 3, 4, 5], "item_id": [1, 2, 900, 901, 902],
                        "rating": [2.0, 3.0, 1.0, 3.0, 2.0]})
    pl.concat([good, low]).write_csv(tmp_path / "log.csv")
    return tmp_path / "log.csv"


def test_min_rating_says_what_it_drops_and_keeps_the_dropped_ids(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    module = datamodule(InteractionFileReader(str(rated_log(tmp_path)), min_rating=4))
    found = lines(caplog, "are not positives")
    assert len(found) == 1 and found[0].levelno == logging.INFO
    assert found[0].getMessage() == (
        f"{tmp_path / 'log.csv'}: 5 of 125 row(s) are not positives (5 with ratings below data.min_rating=4) and are "
        "not trained on; 1 user(s) and 3 item(s) have no positive left and are left out, e.g. users ['685']; "
        "items ['900', '901', '902']")
    assert module.dropped.schema == pl.Schema(DROPPED_SCHEMA)
    reason = "ratings below data.min_rating=4"
    assert module.dropped.rows() == [("user", "685", reason), ("item", "900", reason), ("item", "901", reason),
                                     ("item", "902", reason)]
    assert "685" not in module.user_vocab.ids.cast(pl.String).to_list()


def test_labels_at_or_below_zero_are_counted_with_their_reason(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    negatives = pl.DataFrame({"user_id": [77, 77], "item_id": [1, 2], "label": [0, -1]})
    frame = pl.concat([grid().with_columns(label=pl.lit(1)), negatives], how="vertical_relaxed")
    frame.write_csv(tmp_path / "log.csv")
    module = datamodule(InteractionFileReader(str(tmp_path / "log.csv")))
    assert "2 of 122 row(s) are not positives (2 with labels <= 0)" in lines(caplog, "not positives")[0].getMessage()
    assert module.dropped.rows() == [("user", "77", "labels <= 0")]


def test_a_row_count_but_no_line_when_every_row_is_a_positive(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    grid().with_columns(label=pl.lit(1)).write_csv(tmp_path / "log.csv")
    module = datamodule(InteractionFileReader(str(tmp_path / "log.csv")))
    assert not lines(caplog, "not positives") and module.dropped.height == 0


def test_the_dropped_ids_are_saved_and_a_stale_file_removed(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path / "run")
    save_data(datamodule(InteractionFileReader(str(rated_log(tmp_path)), min_rating=4)), paths)
    assert paths.dropped == tmp_path / "run" / "vocab" / "dropped.parquet"
    saved = pl.read_parquet(paths.dropped)
    assert saved.schema == pl.Schema(DROPPED_SCHEMA)
    assert saved.filter(pl.col("side") == "user").rows() == [("user", "685", "ratings below data.min_rating=4")]

    save_data(datamodule(InteractionFileReader(str(rated_log(tmp_path)))), paths)  # every row a positive now
    assert not paths.dropped.exists()


def presplit(tmp_path: Path, valid: pl.DataFrame, test: pl.DataFrame) -> InteractionFileReader:
    grid().write_csv(tmp_path / "train.csv")
    valid.write_csv(tmp_path / "valid.csv")
    test.write_csv(tmp_path / "test.csv")
    return InteractionFileReader(str(tmp_path / "train.csv"), valid_path=str(tmp_path / "valid.csv"),
                                 test_path=str(tmp_path / "test.csv"))


def test_ids_only_in_the_test_file_are_logged_and_kept_as_dropped(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    valid = pl.DataFrame({"user_id": [0, 1], "item_id": [7, 8]})
    test = pl.DataFrame({"user_id": [2, 500], "item_id": [9, 3]})  # user 500 is nowhere else
    module = datamodule(presplit(tmp_path, valid, test), PresplitSplit())
    found = lines(caplog, "leave the vocabulary")
    assert len(found) == 1 and found[0].levelno == logging.INFO
    assert found[0].getMessage() == f"1 user(s) {TEST_ONLY} leave the vocabulary, e.g. [500]"
    assert module.dropped.rows() == [("user", "500", TEST_ONLY)]


def test_valid_pairs_moved_into_train_are_info(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    valid = pl.DataFrame({"user_id": [0, 1], "item_id": [7, 555]})  # item 555 has no training pair
    test = pl.DataFrame({"user_id": [2], "item_id": [9]})
    datamodule(presplit(tmp_path, valid, test), PresplitSplit())
    found = lines(caplog, "moved 1 valid pair(s)")
    assert len(found) == 1 and found[0].levelno == logging.INFO


def books_file(tmp_path: Path) -> Path:
    """Four books: links 'sea' and 'ship' in three, 'hardcover' (a dropped link) in three, 'rare' and 'nothing'
    in one each, so 'Lonely' has no link left."""
    books = [["Moby", {}, ["Sea", "Ship", "hardcover"]], ["Typhoon", {}, ["Sea", "Ship", "rare"]],
             ["Lord Jim", {}, ["Sea", "Ship", "hardcover"]], ["Lonely", {}, ["hardcover", "nothing"]]]
    path = tmp_path / "books.ndjson.gz"
    with gzip.open(path, "wt") as handle:
        handle.writelines(json.dumps(book) + "\n" for book in books)
    return path


def test_the_book_reader_says_which_links_and_books_it_leaves_out(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    log = WikiBooksReader(str(books_file(tmp_path)), min_link_count=2).read()
    messages = [record.getMessage() for record in caplog.records if record.levelno == logging.INFO]
    assert any("2 link(s) in fewer than data.min_link_count=2 books and 1 in drop_links left out (5 of 11 pairs)"
               in message for message in messages), messages
    assert any("1 book(s) have no link left and are left out, e.g. ['Lonely']" in message for message in messages)
    assert log.dropped.rows() == [
        ("user", "nothing", "in fewer than data.min_link_count=2 books"),
        ("user", "rare", "in fewer than data.min_link_count=2 books"),
        ("user", "hardcover", "in drop_links (says nothing about content)"),
        ("item", "Lonely", "no link found in at least data.min_link_count=2 books"),
    ]


# 3. A file without a header line -------------------------------------------------------------------------------

def headerless(tmp_path: Path) -> Path:
    """user, item, rating, unix time: tab-separated, no header line."""
    rows = grid().with_columns(rating=pl.Series([4, 5, 3] * 40), time=pl.Series(range(1_700_000_000, 1_700_000_120)))
    path = tmp_path / "log.tsv"
    path.write_text(rows.write_csv(separator="\t", include_header=False))
    return path


def test_a_headerless_file_gets_the_no_header_hint_with_polars_column_names(tmp_path: Path) -> None:
    path = headerless(tmp_path)
    names = pl.scan_csv(path, separator="\t", has_header=False).collect_schema().names()
    with pytest.raises(TwoTowerError) as error:
        InteractionFileReader(str(path)).read()
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    assert ("the file seems to have no header line (it starts ['0', '0', '4', '1700000000']): set "
            f"data.has_header=false (and data.user_col / data.item_col to {', '.join(names)})") in message


def test_has_header_false_then_trains_end_to_end(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = headerless(tmp_path)
    user, item, rating, time = pl.scan_csv(path, separator="\t", has_header=False).collect_schema().names()
    reader = InteractionFileReader(str(path), has_header=False, user_col=user, item_col=item, rating_col=rating,
                                   timestamp_col=time, min_rating=4)
    module = datamodule(reader, RandomSplit(valid_fraction=0.25, test_fraction=0.25))  # 4 positives a user
    assert (module.n_users, module.n_items) == (20, 12)
    assert sum(split.height for split in module.splits.values()) == 80  # the ratings of 3 are not positives
    assert not lines(caplog, "column(s) not used")


def test_a_file_with_a_header_gets_no_header_hint(tmp_path: Path) -> None:
    grid().rename({"item_id": "movie"}).write_csv(tmp_path / "log.csv")
    with pytest.raises(TwoTowerError, match=r"the file has \['user_id', 'movie'\]\. Name the id columns") as error:
        InteractionFileReader(str(tmp_path / "log.csv")).read()
    assert "no header line" not in str(error.value)


# 4. An interaction log given to the default book reader ------------------------------------------------------------

@pytest.mark.parametrize("name", ["log.csv", "log.ndjson"])
def test_a_log_without_data_interactions_hints_at_it(tmp_path: Path, name: str) -> None:
    frame = grid()
    frame.write_csv(tmp_path / name) if name.endswith(".csv") else frame.write_ndjson(tmp_path / name)
    reader = instantiate(compose_train(tmp_path / "run", f"data.path={tmp_path / name}").data)
    assert isinstance(reader, WikiBooksReader)  # the default data
    with pytest.raises(TwoTowerError) as error:
        reader.read()
    message = str(error.value)
    assert "\n" not in message and name in message
    assert message.endswith("for an interaction log (CSV, TSV, Parquet, NDJSON of user/item rows) use "
                            "data=interactions data.path=...")


# 5. Every reader error is one line that names the file --------------------------------------------------------------

def write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def interactions(path: Path) -> InteractionFileReader:
    return InteractionFileReader(str(path))


def movielens(path: Path) -> MovieLensReader:
    return MovieLensReader(str(path.parent))


BAD_FILES = [
    # (case, file name, content, reader of the file)
    ("garbage parquet", "log.parquet", b"not parquet" * 20, interactions),
    ("empty csv", "log.csv", b"", interactions),
    ("corrupt gzip", "log.csv.gz", b"\x1f\x8b\x08garbage", interactions),
    ("broken quoting", "log.csv", b'user_id,item_id\n1,"2\n3,4\n', interactions),
    ("bad value past the sample", "log.csv", b"user_id,item_id,rating\n" + b"1,2,5\n" * 10_001 + b"1,2,x\n",
     interactions),
    ("binary NDJSON", "log.ndjson", bytes(range(256)), interactions),
    ("missing id column", "log.csv", b"user_id,movie\n1,2\n", interactions),
    ("headerless", "log.csv", b"1,2\n3,4\n", interactions),
    ("user lines with text", "train.txt", b"1 2 3\nx y\n", lambda path: UserLinesReader(str(path))),
    ("books from binary", "books.ndjson", bytes(range(256)), lambda path: WikiBooksReader(str(path))),
    ("books from csv", "books.csv", b"user_id,item_id\n1,2\n", lambda path: WikiBooksReader(str(path))),
    ("MovieLens corrupt u.data", "ml/u.data", b"1\t2\tfive\t4\n", movielens),
    ("MovieLens corrupt ratings.dat", "ml/ratings.dat", b"1::2::x::4\n", movielens),
]


@pytest.mark.parametrize(("case", "name", "content", "reader"), BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_reader_errors_are_one_line_naming_the_file(tmp_path: Path, case: str, name: str, content: bytes,
                                                    reader: Callable[[Path], object]) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(TwoTowerError) as error:
        reader(path).read()
    message = str(error.value)
    assert "\n" not in message, message
    assert path.name in message, message
