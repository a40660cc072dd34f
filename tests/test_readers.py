import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from twotower.data.books import WikiBooksReader
from twotower.data.movielens import MovieLensReader
from twotower.data.readers import InteractionFileReader, UserLinesReader
from twotower.errors import TwoTowerError

FRAME = pl.DataFrame({
    "user_id": [1, 1, 2, 3],
    "item_id": ["a", "b", "a", "c"],
    "timestamp": [10, 20, 30, 40],
    "rating": [5.0, 3.0, 4.0, 1.0],
})


@pytest.mark.parametrize("name", ["log.csv", "log.tsv", "log.parquet", "log.ndjson", "log.csv.gz"])
def test_generic_reader_reads_every_format(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name.endswith(".parquet"):
        FRAME.write_parquet(path)
    elif name.endswith(".ndjson"):
        FRAME.write_ndjson(path)
    elif name.endswith(".gz"):
        path.write_bytes(gzip.compress(FRAME.write_csv().encode()))
    else:
        FRAME.write_csv(path, separator="\t" if name.endswith(".tsv") else ",")
    log = InteractionFileReader(str(path)).read()
    assert log.interactions.columns == ["user_id", "item_id", "timestamp", "rating"]
    assert log.interactions["user_id"].dtype == pl.Int64
    assert log.interactions["item_id"].to_list() == ["a", "b", "a", "c"]
    assert log.interactions["rating"].to_list() == [5.0, 3.0, 4.0, 1.0]


def test_generic_reader_renames_columns_and_reads_item_info(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    FRAME.rename({"user_id": "customer", "item_id": "sku"}).write_csv(path)
    info = tmp_path / "items.csv"
    pl.DataFrame({"sku": ["a", "b", "c"], "title": ["Apple", "Banana", "Cherry"]}).write_csv(info)
    log = InteractionFileReader(str(path), user_col="customer", item_col="sku", item_info_path=str(info)).read()
    assert log.interactions.height == 4
    assert log.item_info["title"].to_list() == ["Apple", "Banana", "Cherry"]


def test_generic_reader_presplit_tags_splits(tmp_path: Path) -> None:
    for name in ("train", "valid", "test"):
        FRAME.write_csv(tmp_path / f"{name}.csv")
    log = InteractionFileReader(str(tmp_path / "train.csv"), valid_path=str(tmp_path / "valid.csv"),
                                test_path=str(tmp_path / "test.csv")).read()
    assert log.interactions.group_by("split").len().sort("split")["len"].to_list() == [4, 4, 4]


def test_generic_reader_names_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    FRAME.rename({"item_id": "movie"}).write_csv(path)
    with pytest.raises(TwoTowerError, match=r"missing column\(s\) \['item_id'\].*movie"):
        InteractionFileReader(str(path)).read()


def test_generic_reader_rejects_empty_and_unknown_files(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(TwoTowerError, match="empty"):
        InteractionFileReader(str(tmp_path / "empty.csv")).read()
    (tmp_path / "header.csv").write_text("user_id,item_id\n")
    with pytest.raises(TwoTowerError, match="no rows"):
        InteractionFileReader(str(tmp_path / "header.csv")).read()
    with pytest.raises(TwoTowerError, match="not found"):
        InteractionFileReader(str(tmp_path / "missing.csv")).read()
    (tmp_path / "log.xlsx").write_text("x")
    with pytest.raises(TwoTowerError, match="cannot tell the format"):
        InteractionFileReader(str(tmp_path / "log.xlsx")).read()


def test_user_lines_reader(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text("0 5 6 7\n1 5\n2\n")
    frame = UserLinesReader(str(path)).read().interactions
    assert frame.rows() == [(0, 5, 0), (0, 6, 1), (0, 7, 2), (1, 5, 0)]  # user, item, position in the line


def test_movielens_100k_reader(shared_data: Path) -> None:
    log = MovieLensReader(str(shared_data / "ml-100k"), min_rating=4).read()
    assert log.interactions.height == 100_000
    assert log.min_rating == 4
    titles = dict(log.item_info.select("item_id", "title").rows())
    assert titles[1] == "Toy Story (1995)"
    toy_story = log.item_info.filter(pl.col("item_id") == 1)
    assert toy_story["genres"].to_list() == [["Animation", "Children's", "Comedy"]]
    assert set(log.user_info.columns) == {"user_id", "age", "gender", "occupation"}


def test_wiki_books_reader_filters_rare_links(tmp_path: Path) -> None:
    books = [
        ["Book A", {"author": "X", "genre": "Fantasy"}, ["Dragons", "Hardcover", "Magic"], [], "", 1],
        ["Book B", {"author": "X"}, ["dragons", "Magic", "Elves"], [], "", 1],
        ["Book C", {}, ["Dragons", "Magic"], [], "", 1],
    ]
    path = tmp_path / "books.ndjson"
    path.write_text("\n".join(json.dumps(book) for book in books) + "\n")
    log = WikiBooksReader(str(path), min_link_count=2).read()
    assert sorted(set(log.interactions["user_id"])) == ["dragons", "magic"]  # lower-cased, rare dropped
    assert log.interactions.height == 6
    assert log.names == {"user": "link", "item": "book"}
    assert log.item_info.filter(pl.col("item_id") == "Book A")["author"].to_list() == ["X"]


def test_bundled_book_sample_reads() -> None:
    from importlib.resources import files

    log = WikiBooksReader(str(files("twotower.sample_data") / "wiki_books.ndjson.gz")).read()
    assert log.item_info.height == 1413
    assert "The Beasts of Tarzan" in set(log.interactions["item_id"])


def test_csv_ids_that_are_not_plain_integers_stay_text(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id\n1,007\n2,7\n3,7\n")
    frame = InteractionFileReader(str(path)).read().interactions
    assert frame["user_id"].dtype == pl.Int64
    assert frame["item_id"].to_list() == ["007", "7", "7"]  # two different items, not one


def test_ids_are_read_by_one_rule(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id\n 5,1.0\n5,2\n6.0,3.00\n")  # whitespace and whole-number decimals
    frame = InteractionFileReader(str(path)).read().interactions
    assert frame["user_id"].to_list() == [5, 5, 6] and frame["item_id"].to_list() == [1, 2, 3]
    path.write_text("user_id,item_id\n a ,x\nb,y \n")
    frame = InteractionFileReader(str(path)).read().interactions
    assert frame["user_id"].to_list() == ["a", "b"] and frame["item_id"].to_list() == ["x", "y"]


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".ndjson"])
def test_a_path_is_one_file_never_a_pattern(tmp_path: Path, suffix: str) -> None:
    wanted = pl.DataFrame({"user_id": [1, 2], "item_id": [3, 4]})
    other = pl.DataFrame({"user_id": [9], "item_id": [9]})
    for frame, name in ((wanted, f"log[1]{suffix}"), (other, f"log1{suffix}")):
        path = tmp_path / name
        frame.write_csv(path) if suffix == ".csv" else frame.write_parquet(path) if suffix == ".parquet" \
            else frame.write_ndjson(path)
    read = InteractionFileReader(str(tmp_path / f"log[1]{suffix}")).read().interactions
    assert read["user_id"].to_list() == [1, 2]
    with pytest.raises(TwoTowerError, match=r"interaction file not found: .*log\*"):
        InteractionFileReader(str(tmp_path / f"log*{suffix}")).read()
