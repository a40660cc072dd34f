"""The Wikipedia books: one JSON array per article, its wikilinks the other tower (the classic book-embedding
example)."""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

from twotower.data.interactions import (
    EXAMPLES,
    InteractionLog,
    dropped_ids,
)
from twotower.data.tables import existing_path, side_names
from twotower.errors import TwoTowerError

log = logging.getLogger(__name__)


DEFAULT_DROPPED_LINKS = (
    "hardcover", "paperback", "hardback", "e-book",
    "wikipedia:wikiproject books", "wikipedia:wikiproject novels",
)
BOOK_INFO_FIELDS = ("author", "genre", "country", "language", "publisher", "series")
# Infobox genres are free text ("Science fiction novel", "Fantasy, horror"...). For colouring maps they are
# folded into a few broad groups: the first group with a keyword in the lower-cased genre wins.
GENRE_GROUPS = (
    ("science fiction", ("science fiction", "sci-fi", "space opera", "cyberpunk", "dystopia")),
    ("fantasy", ("fantasy", "sword and sorcery")),
    ("horror", ("horror", "weird", "supernatural", "ghost", "gothic")),
    ("crime & mystery", ("crime", "mystery", "detective", "thriller", "gong'an", "spy")),
    ("children's & young adult", ("children", "young adult", "picture book", "juvenile")),
    ("romance", ("romance", "regency")),
    ("historical", ("historical",)),
    ("non-fiction", ("non-fiction", "nonfiction", "biography", "memoir", "essay", "philosophy", "politic",
                     "history", "science", "dictionary", "encyclopedia", "reference", "travel")),
    ("poetry", ("poetry", "poem")),
    ("adventure & war", ("adventure", "war")),
)


def genre_group(genre: pl.Expr) -> pl.Expr:
    lowered = genre.str.to_lowercase()
    expression = pl.lit(None, dtype=pl.String)
    for group, keywords in reversed(GENRE_GROUPS):
        matched = pl.any_horizontal([lowered.str.contains(keyword, literal=True) for keyword in keywords])
        expression = pl.when(matched).then(pl.lit(group)).otherwise(expression)
    return expression


# The book reader is the default data: a user's own log given as data.path=... without data=interactions
# lands here.
NOT_BOOKS_HINT = ("for an interaction log (CSV, TSV, Parquet, NDJSON of user/item rows) use data=interactions "
                  "data.path=...")


class WikiBooksReader:
    """Wikipedia book articles and their wikilinks (one JSON array per line, optionally gzipped).

    Each line is ``[title, infobox, wikilinks, external_links, last_edit, length]``. Books become items and
    wikilinks become the other tower ("users"): a (link, book) pair is one interaction. As in the original
    book-embedding project, links are lower-cased, a few that say nothing about content (``hardcover``,
    ``paperback`` ...) are dropped, and only links found in at least ``min_link_count`` books are kept.
    """

    def __init__(self, path: str, min_link_count: int = 4,
                 drop_links: Sequence[str] = DEFAULT_DROPPED_LINKS, lowercase_links: bool = True,
                 names: Mapping[str, str] | None = None, example_item: str | None = "The Beasts of Tarzan"
                 ) -> None:
        self.path = path
        self.names = side_names(names or {"user": "link", "item": "book"})
        self.example_item = example_item
        self.min_link_count = min_link_count
        self.drop_links = tuple(drop_links)
        self.lowercase_links = lowercase_links

    def read(self) -> InteractionLog:
        path = existing_path(self.path, "book file")
        books, pairs = self._parse(path)
        frame = pl.DataFrame(pairs, schema={"item_id": pl.String, "user_id": pl.String}, orient="row")
        if self.lowercase_links:
            frame = frame.with_columns(pl.col("user_id").str.to_lowercase())
        frame, dropped = self._keep_shared_links(frame.unique(maintain_order=True), path)
        if frame.height == 0:
            raise TwoTowerError(f"{path}: no wikilink appears in at least {self.min_link_count} books; "
                                "lower data.min_link_count")
        item_info = pl.DataFrame(books, schema={"item_id": pl.String, "title": pl.String,
                                                **{f: pl.String for f in BOOK_INFO_FIELDS}}, orient="row")
        item_info = item_info.with_columns(genre_group=genre_group(pl.col("genre")))
        dropped = pl.concat([dropped, self._books_without_links(item_info, frame, path)])
        return InteractionLog(frame, item_info=item_info.unique("item_id", maintain_order=True),
                              source=str(path), names=self.names, example_item=self.example_item, dropped=dropped)

    def _keep_shared_links(self, frame: pl.DataFrame, path: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The (link, book) pairs of links in ``drop_links`` and of links in fewer than ``min_link_count``
        books left out; returns the rest and the links left out."""
        listed = pl.col("user_id").is_in(list(self.drop_links))
        books_per_link = frame.filter(~listed).group_by("user_id").len()
        rare = books_per_link.filter(pl.col("len") < self.min_link_count)["user_id"]
        named = frame.filter(listed)["user_id"].unique()
        kept = frame.filter(~listed & ~pl.col("user_id").is_in(rare.implode())).select("user_id", "item_id")
        if kept.height < frame.height:
            log.info("%s: %d %s(s) in fewer than data.min_link_count=%d %ss and %d in drop_links left out "
                     "(%d of %d pairs)", path, rare.len(), self.names["user"], self.min_link_count,
                     self.names["item"], named.len(), frame.height - kept.height, frame.height)
        dropped = pl.concat([
            dropped_ids("user", rare, f"in fewer than data.min_link_count={self.min_link_count} {self.names['item']}s"),
            dropped_ids("user", named, "in drop_links (says nothing about content)"),
        ])
        return kept, dropped

    def _books_without_links(self, item_info: pl.DataFrame, kept: pl.DataFrame, path: Path) -> pl.DataFrame:
        """Books none of whose links is kept: they are in the file but in no interaction."""
        lonely = item_info.join(kept, on="item_id", how="anti")["item_id"].unique()
        if lonely.len():
            log.info("%s: %d %s(s) have no %s left and are left out, e.g. %s", path, lonely.len(),
                     self.names["item"], self.names["user"], lonely.sort().head(EXAMPLES).to_list())
        return dropped_ids("item", lonely, f"no {self.names['user']} found in at least "
                                           f"data.min_link_count={self.min_link_count} {self.names['item']}s")

    @staticmethod
    def _parse(path: Path) -> tuple[list[tuple], list[tuple[str, str]]]:
        opener = gzip.open if path.suffix == ".gz" else open
        books: list[tuple] = []
        pairs: list[tuple[str, str]] = []
        try:
            with opener(path, "rt", encoding="utf-8") as lines:
                for number, line in enumerate(lines, start=1):
                    if not line.strip():
                        continue
                    record = json.loads(line)
                    if not (isinstance(record, list) and len(record) >= 3 and isinstance(record[0], str)
                            and isinstance(record[2], list)):
                        raise TwoTowerError(f"{path}:{number}: expected [title, infobox, [wikilinks], ...]; "
                                            f"{NOT_BOOKS_HINT}")
                    title, infobox, links = record[0], record[1] if isinstance(record[1], dict) else {}, record[2]
                    books.append((title, title, *(_text(infobox.get(f)) for f in BOOK_INFO_FIELDS)))
                    pairs.extend((title, str(link)) for link in links)
        except (json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError) as error:
            raise TwoTowerError(f"cannot read {path} as book/link NDJSON: {error}; {NOT_BOOKS_HINT}") from error
        if not books:
            raise TwoTowerError(f"{path} holds no books; {NOT_BOOKS_HINT}")
        return books, pairs


def _text(value: object) -> str | None:
    """Infobox values are mostly strings; keep them short and single-line for labels and colours."""
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text or None
