"""The Wikipedia book example: neighbours in the learned space share authors and genres far more often
than chance, measured against a control where the same labels are shuffled between books."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.conftest import compose_train
from twotower.serving.retrieval import Retriever
from twotower.training.train import train


def neighbour_agreement(retriever: Retriever, labels: np.ndarray, k: int = 5) -> float:
    """Share of each labelled book's k nearest books that carry the same label."""
    books = np.flatnonzero(labels != None)  # noqa: E711 (object array of labels)
    ids = retriever.run.item_vocab.decode(books)
    agree = []
    for book, (neighbours, _) in zip(books, retriever.similar_items(list(ids), k=k), strict=True):
        rows = retriever.run.item_vocab.lookup(list(neighbours))
        agree.append(np.mean(labels[rows] == labels[book]))
    return float(np.mean(agree))


@pytest.fixture(scope="module")
def books_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("books")
    train(compose_train(run_dir, "experiment=books", "show_similar_to=null"))
    return run_dir


@pytest.mark.parametrize(("column", "minimum"), [("author", 0.25), ("genre_group", 0.45)])
def test_neighbours_share_author_and_genre_beyond_a_shuffled_control(books_run: Path, column: str,
                                                                     minimum: float) -> None:
    retriever = Retriever.load(books_run, index="exact")
    frame = retriever.run.item_vocab.frame
    # Only labels that at least two books share can agree at all.
    shared = frame[column].value_counts().filter(pl.col("count") >= 2)[column]
    labels = frame.select(pl.when(pl.col(column).is_in(shared.implode())).then(pl.col(column))).to_series()
    labels = np.array(labels.to_list(), dtype=object)
    real = neighbour_agreement(retriever, labels)
    known = labels != None  # noqa: E711
    shuffled = labels.copy()
    shuffled[known] = np.random.default_rng(0).permutation(labels[known])
    control = neighbour_agreement(retriever, shuffled)
    print(f"{column}: neighbours agree {real:.3f}, shuffled control {control:.3f}")
    assert real >= minimum and real >= 3 * control, (real, control)


def test_books_closest_to_a_tarzan_novel_are_tarzan_novels(books_run: Path) -> None:
    ids, _ = Retriever.load(books_run).similar_items("The Beasts of Tarzan", k=5)
    assert sum("Tarzan" in title for title in ids) >= 4, list(ids)
