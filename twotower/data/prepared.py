"""Logs prepared once for many processes (``twotower-prepare``): read out of core, id-mapped, split, and written
as Parquet shards that each hold whole users, beside the vocabularies and a manifest.

Memory is bounded by the vocabularies and one shard, never the log, in three passes:

1. Polars' streaming engine scans the log and writes it to disk in pieces by a hash of the user id, so each
   user's rows land in one piece;
2. each piece in turn gives its positives and the ids they use: the sorted union is each vocabulary (the one
   id rule of ``twotower.data.ids`` and ``Vocabulary``, decided for the whole column);
3. each piece in turn becomes a shard: ids to indices, a repeated pair counted once, the split.

Everything is written into a temporary sibling folder renamed into place at the end, and the manifest is its
last file: an interrupted preparation leaves nothing that looks finished. A process reads only its own shards
(``PreparedShards.shards_of``); a shard or a vocabulary of another preparation is refused.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from twotower import __version__
from twotower.data.ids import check_one_spelling_per_number, id_expression, numeric_ids
from twotower.data.interactions import ID_COLUMNS, InteractionLog, deduplicate, positive_tests, with_order
from twotower.data.readers import InteractionFileReader
from twotower.data.splits import SPLIT_NAMES, Splits
from twotower.data.tables import clean_value_columns, reading, repeated_header_error, repeats_header
from twotower.data.user_items import UserItems
from twotower.data.vocab import Vocabulary
from twotower.errors import ConfigError, DataError
from twotower.files import atomic_directory, atomic_path, fingerprint, write_json, write_parquet

log = logging.getLogger(__name__)

FORMAT = 2  # the layout of a prepared folder; another is refused, not misread
MANIFEST = "prepared.json"
NON_POSITIVE = "non_positive.parquet"  # (user, item) rows that are not positives, where the log has any
ROWS_PER_SHARD = 2_000_000  # rows of the log per shard when the count is not given: a shard is held whole
HASH_SEED = 0  # the user-id hash that assigns users to shards


def prepare(reader: InteractionFileReader, split: object, out: Path, shards: int | None = None,
            keep_order: bool = False) -> dict:
    """Prepare the log ``reader`` reads into ``out``, split by ``split`` (``RandomSplit`` or ``TemporalSplit``),
    in ``shards`` shards (None: one per ``ROWS_PER_SHARD`` rows); returns the manifest. ``keep_order`` keeps each
    interaction's place in its user's sequence (a sequence tower reads it; ``split=temporal`` always does)."""
    if getattr(split, "test_given", False):
        raise ConfigError("twotower-prepare splits one log: split=presplit files are trained on directly")
    if shards is not None and (isinstance(shards, bool) or not isinstance(shards, int) or shards < 1):
        raise ConfigError(f"shards must be an integer >= 1 (or null: one per {ROWS_PER_SHARD:,} rows), got {shards!r}")
    lazy = reader.scan()
    schema = lazy.collect_schema()
    header = reader.repeatable_header()
    repeats = repeats_header(header) if header else pl.lit(False)
    with reading(Path(reader.source), "an interaction log"):
        numeric = {column: numeric_ids(lazy, column, reader.source) for column in ID_COLUMNS}
        rows, repeated = lazy.select(pl.len(), repeats.sum()).collect(engine="streaming").row(0)
        if repeated:
            row = lazy.with_row_index("row").filter(repeats).select("row").head(1).collect(engine="streaming")
            raise repeated_header_error(reader.source, header, row.item())
    lazy = lazy.with_columns(id_expression(column, numeric[column], schema[column]).alias(column)
                             for column in ID_COLUMNS)
    if rows == 0:
        raise DataError(f"{reader.source}: the interaction log is empty (no rows)")
    count = shards or max(1, math.ceil(rows / ROWS_PER_SHARD))
    ordered = keep_order or "order" in getattr(split, "columns", ())
    with atomic_directory(out) as building:
        pieces = building / "pieces"
        log.info("pass 1 of 3: %s, %d rows, into %d piece(s) by user", reader.source, rows, count)
        piece = (pl.col("user_id").hash(HASH_SEED) % count).alias("piece")
        with reading(Path(reader.source), "an interaction log"):
            lazy.with_row_index("row").with_columns(piece).sink_parquet(
                pl.PartitionBy(pieces, key="piece", include_key=False), mkdir=True)
        ids = {column: pl.Series(column, [], lazy.collect_schema()[column]) for column in ID_COLUMNS}
        text_ids = {column: ids[column] for column in ID_COLUMNS if not numeric[column]}  # every one, once
        kept = []  # the pieces with positives, written to disk: only the ids they use stay in memory
        log.info("pass 2 of 3: the positives of each piece and the ids they use")
        for index in range(count):
            raw = piece_frame(pieces, index)
            for column in text_ids if raw.height else ():
                text_ids[column] = pl.concat([text_ids[column], raw[column].unique()]).unique()
            frame, others = positives_of(raw, reader, ordered)
            if frame.height == 0:
                continue
            ids = {column: pl.concat([seen, frame[column].unique()]).unique() for column, seen in ids.items()}
            kept.append(building / "positives" / f"{index}.parquet")
            kept[-1].parent.mkdir(exist_ok=True)
            frame.write_parquet(kept[-1])
            if others is not None and others.height:
                others.write_parquet(kept[-1].with_suffix(".others.parquet"))
        shutil.rmtree(pieces)
        for column, spellings in text_ids.items():  # as in memory, over the whole column: pieces are no boundary
            check_one_spelling_per_number(spellings, reader.source, column)
        del text_ids
        if not kept:
            raise DataError(f"{reader.source}: no positive interactions")
        users = Vocabulary.build(ids["user_id"], reader.names["user"])
        items = Vocabulary.build(ids["item_id"], reader.names["item"], reader.item_info(), "item_id")
        del ids
        users.save(building / "vocab" / "users.parquet")
        items.save(building / "vocab" / "items.parquet")
        vocabulary = vocabulary_fingerprint(building)
        counts = np.zeros((len(SPLIT_NAMES), len(items)), dtype=np.int64)  # each split's interactions per item
        written = []
        log.info("pass 3 of 3: %d %ss and %d %ss; ids to indices, each pair once, split (%s), piece by piece",
                 len(users), reader.names["user"], len(items), reader.names["item"], type(split).__name__)
        for path in kept:
            frame = pl.read_parquet(path)
            splits = split_shard(frame, users, items, split, reader.source)
            for row, split_name in enumerate(SPLIT_NAMES):
                counts[row] += np.bincount(splits[split_name]["item"].to_numpy(), minlength=len(items))
            name = f"shards/part-{len(written):05d}.parquet"
            write_shard(splits, building / name, vocabulary)
            written.append({"file": name, "users": int(frame["user_id"].n_unique())}
                           | {split_name: splits[split_name].height for split_name in SPLIT_NAMES})
            others = path.with_suffix(".others.parquet")
            if others.exists():
                non_positive = items.encode_known(users.encode_known(pl.read_parquet(others), "user_id", "user"),
                                                  "item_id", "item")
                non_positive.unique(["user", "item"]).sort("user", "item").write_parquet(
                    building / "non_positive" / f"{len(written):05d}.parquet", mkdir=True)
        shutil.rmtree(building / "positives")
        if (building / "non_positive").exists():  # one file, streamed together, as a run keeps it
            parts = building / "non_positive"
            pl.scan_parquet(sorted(parts.glob("*.parquet"))).sink_parquet(building / NON_POSITIVE)
            shutil.rmtree(parts)
        cover_holdouts_across_shards(building, written, counts, vocabulary)
        write_parquet(pl.DataFrame(dict(zip(SPLIT_NAMES, counts, strict=True))), building / "item_counts.parquet")
        manifest = {"format": FORMAT, "version": __version__, "source": reader.source, "rows_read": rows,
                    "names": reader.names, "min_rating": reader.min_rating, "users": len(users),
                    "items": len(items), "vocabulary": vocabulary, "order": ordered,
                    "split": type(split).__name__, "shards": written}
        write_json(manifest, building / MANIFEST)
    totals = {name: sum(shard[name] for shard in written) for name in SPLIT_NAMES}
    log.info("prepared %s: %d rows read, %d %ss, %d %ss, train/valid/test %d/%d/%d, in %d shard(s) in %s",
             reader.source, rows, len(users), reader.names["user"], len(items), reader.names["item"],
             totals["train"], totals["valid"], totals["test"], len(written), out)
    return manifest


def cover_holdouts_across_shards(building: Path, written: list[dict], counts: np.ndarray, vocabulary: str) -> None:
    """Valid and test pairs of items with no training pair in any shard move into train, as the in-memory path
    moves them (``splits.cover_holdouts``): an ID tower learns nothing for an item it never trains on. Updates
    the shards, their counts in ``written`` and the items' ``counts`` per split (one row each) in place."""
    cold = counts[0] == 0
    if not cold.any():
        return
    moved = 0
    for shard in written:
        path = building / shard["file"]
        frame = pl.read_parquet(path)
        uncovered = (frame["split"] > 0) & pl.Series(cold[frame["item"].to_numpy()])
        if not uncovered.any():
            continue
        for code, name in enumerate(SPLIT_NAMES[1:], start=1):
            leaving = frame.filter(uncovered & (frame["split"] == code))["item"].to_numpy()
            shard[name] -= len(leaving)
            counts[code] -= np.bincount(leaving, minlength=counts.shape[1])
            counts[0] += np.bincount(leaving, minlength=counts.shape[1])
        shard["train"] += int(uncovered.sum())
        moved += int(uncovered.sum())
        write_shard_frame(frame.with_columns(split=pl.when(uncovered).then(0).otherwise(pl.col("split"))
                                             .cast(pl.UInt8)), path, vocabulary)
    log.info("moved %d valid/test pair(s) of items with no training pair into train: a model learns nothing for "
             "an id it never trains on", moved)


def piece_frame(pieces: Path, index: int) -> pl.DataFrame:
    """The rows the first pass wrote for piece ``index``, in the log's order (empty where no user hashed to it)."""
    folder = pieces / f"piece={index}"
    if not folder.exists():
        return pl.DataFrame()
    return pl.read_parquet(folder / "*.parquet").sort("row")


def positives_of(frame: pl.DataFrame, reader: InteractionFileReader, ordered: bool
                 ) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """A piece's positives, by the rules the in-memory path applies to a whole log (value columns read as
    numbers, labels and ratings filtered), with each interaction's ``order`` where it is kept; and its rows
    that are not positives (``user_id``, ``item_id``: retrieval leaves them out as seen), None if none."""
    if frame.height == 0:
        return frame, None
    frame = clean_value_columns(frame.drop("row"), reader.source)
    interactions = InteractionLog(frame, source=reader.source, names=reader.names, min_rating=reader.min_rating)
    if reader.min_rating is not None and "rating" not in frame.columns:
        raise DataError(f"{reader.source}: min_rating={reader.min_rating} is set but the log has no rating column")
    tests = positive_tests(interactions)
    others = None
    if tests:
        passed = pl.all_horizontal(condition for _, condition in tests)
        others = frame.filter(~passed).select("user_id", "item_id")
        frame = frame.filter(passed)
    if ordered:
        frame = with_order(frame, reader.source, "split=temporal or a user tower that reads order")
    return frame.select("user_id", "item_id", *(["order"] if ordered else [])), others


def split_shard(frame: pl.DataFrame, users: Vocabulary, items: Vocabulary, split: object, source: str) -> Splits:
    """One piece's positives as indices, each pair once, split per user (every user of the piece is whole)."""
    frame = items.encode(users.encode(frame, "user_id", "user"), "item_id", "item")
    return split.split(deduplicate(frame, source))


def write_shard(splits: Splits, path: Path, vocabulary: str) -> None:
    """A shard: ``user``, ``item``, ``split`` (0 train, 1 valid, 2 test) and ``order`` where kept, by user."""
    frame = pl.concat([s.with_columns(split=pl.lit(code, pl.UInt8)) for code, s in enumerate(splits.values())])
    write_shard_frame(frame.sort("user", "order" if "order" in frame.columns else "item"), path, vocabulary)


def write_shard_frame(frame: pl.DataFrame, path: Path, vocabulary: str) -> None:
    """A shard's rows, stamped with the vocabularies' fingerprint (a shard of another preparation is refused)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path, metadata={"twotower_vocabulary": vocabulary}, row_group_size=256_000)


def vocabulary_fingerprint(folder: Path) -> str:
    return "-".join(fingerprint(folder / "vocab" / f"{side}.parquet") for side in ("users", "items"))


class PreparedShards:
    """A prepared folder as training reads it (``data=prepared data.path=DIR``): the vocabularies, the global
    item counts, and the shards of one process. Shards go to processes round-robin: process ``r`` of ``w``
    reads shards ``r, r + w, ...``."""

    def __init__(self, path: str) -> None:
        self.folder = Path(path).expanduser()
        self.source = str(self.folder)
        self.manifest = self._checked_manifest()
        self.names = self.manifest["names"]

    def _checked_manifest(self) -> dict:
        manifest_path = self.folder / MANIFEST
        if not manifest_path.exists():
            state = "not found" if not self.folder.exists() else f"has no {MANIFEST}"
            raise DataError(f"prepared log {self.folder} {state}: prepare it first with twotower-prepare "
                            f"data.path=LOG out={self.folder}")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != FORMAT:
            raise DataError(f"{self.folder} was prepared by twotower {manifest.get('version')} in format "
                            f"{manifest.get('format')}; this version reads format {FORMAT}: prepare the log again")
        if vocabulary_fingerprint(self.folder) != manifest["vocabulary"]:
            raise DataError(f"{self.folder}: the vocabularies are not the ones its shards were prepared with; "
                            "prepare the log again")
        return manifest

    def vocabularies(self) -> tuple[Vocabulary, Vocabulary]:
        return (Vocabulary.load(self.folder / "vocab" / "users.parquet", self.names["user"]),
                Vocabulary.load(self.folder / "vocab" / "items.parquet", self.names["item"]))

    def item_counts(self, splits: Sequence[str] = ("train",)) -> np.ndarray:
        """Every item's interactions in the named splits over all shards (train: the popularity the summaries
        rank by)."""
        return pl.read_parquet(self.folder / "item_counts.parquet", columns=list(splits)).sum_horizontal().to_numpy()

    @property
    def shard_count(self) -> int:
        return len(self.manifest["shards"])

    def shards_of(self, rank: int, world: int) -> list[int]:
        """The shards process ``rank`` of ``world`` reads; a process left without one is refused before training."""
        if world > self.shard_count:
            raise DataError(f"{self.folder} has {self.shard_count} shard(s) for {world} processes: process "
                            f"{self.shard_count} and above would have none. Prepare it with shards={world} or more")
        return list(range(rank, self.shard_count, world))

    def shard_path(self, index: int) -> Path:
        return self.folder / self.manifest["shards"][index]["file"]

    def read(self, shards: list[int]) -> Splits:
        """The named shards' interactions, by split (``user``, ``item``, and ``order`` where kept)."""
        frame = pl.concat([self._read_shard(index) for index in shards])
        columns = ["user", "item", *(["order"] if "order" in frame.columns else [])]
        return {name: frame.filter(pl.col("split") == code).select(columns)
                for code, name in enumerate(SPLIT_NAMES)}

    def _read_shard(self, index: int) -> pl.DataFrame:
        path = self.shard_path(index)
        if not path.exists():
            raise DataError(f"{self.folder}: shard {path.name} is missing; prepare the log again")
        stamp = pl.read_parquet_metadata(path).get("twotower_vocabulary")
        if stamp != self.manifest["vocabulary"]:
            raise DataError(f"{path} was prepared with other vocabularies than {self.folder}'s; prepare the log "
                            "again rather than mixing shards of two preparations")
        return pl.read_parquet(path)

    def sink_split(self, name: str, path: Path) -> None:
        """Every shard's ``name`` split into one Parquet file, streamed (the run's record of its splits)."""
        code = SPLIT_NAMES.index(name)
        files = [str(self.shard_path(index)) for index in range(self.shard_count)]
        with atomic_path(path) as temporary:
            pl.scan_parquet(files).filter(pl.col("split") == code).drop("split").sink_parquet(temporary)

    def copy_non_positive(self, path: Path) -> None:
        """The log's rows that are not positives, as a run keeps them (none: no file)."""
        path.unlink(missing_ok=True)
        if (self.folder / NON_POSITIVE).exists():
            with atomic_path(path) as temporary:
                shutil.copyfile(self.folder / NON_POSITIVE, temporary)

    def user_items(self, names: tuple[str, ...], n_users: int) -> UserItems:
        """Every user's items over the named splits, from every shard (what exporting a history tower needs)."""
        codes = [SPLIT_NAMES.index(name) for name in names]
        frames = [self._read_shard(index).filter(pl.col("split").is_in(codes)) for index in range(self.shard_count)]
        frame = pl.concat(frames)
        return UserItems.from_frame(frame.sort("user", "order") if "order" in frame.columns else frame, n_users)
