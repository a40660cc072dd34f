"""twotower-retrieve: top-k items for a user, items similar to an item, or a whole file of users.

    twotower-retrieve run_dir=DIR user=196 k=10
    twotower-retrieve run_dir=latest item="Toy Story (1995)" output=json
    twotower-retrieve run_dir=DIR users_file=users.txt unknown=popular output_file=recs.parquet
    twotower-retrieve run_dir=DIR user=196 allow='[1,2,3]' output_file=one.csv
    twotower-retrieve run_dir=DIR similar_user=196          # users (or links ...) closest to a user
    twotower-retrieve run_dir=DIR history='[1,260,1196]'     # a new user from their items (model=history runs)

Answers are printed as a table, or written as CSV, JSON or Parquet (``output=``, or ``output_file``'s
extension). Ids keep their type (numbers stay numbers); a row the popular-items fallback gave says so in a
``fallback`` column.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import polars as pl
from omegaconf import DictConfig, ListConfig

from twotower import checks
from twotower.commands.cli import answer_help, check_options, reported_errors
from twotower.data.ids import query_ids
from twotower.data.tables import collect, detect_format, existing_path, reading, scan_table
from twotower.errors import TwoTowerError
from twotower.files import table_format, write_table
from twotower.serving.result import Result
from twotower.serving.retrieval import UNKNOWN, Retriever

log = logging.getLogger("twotower")
OUTPUTS = ("table", "json", "csv", "parquet")
QUERIES = ("user", "item", "users_file", "similar_user", "history")


def read_user_ids(path: str, column: str) -> list[Any]:
    """User ids from a text file (one per line) or a CSV/Parquet/NDJSON table with a ``column`` of them.

    Ids are read as text and matched by the one rule of ``twotower.data.ids`` ("007" is not user 7)."""
    file = existing_path(path, "users file")
    if file.suffix.lower() in ("", ".txt", ".lst"):
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as error:
            raise TwoTowerError(f"{file}: not a text file of user ids (byte {error.start} is not UTF-8)") from error
        ids = [line.strip() for line in lines if line.strip()]
    else:
        format = detect_format(file, None)
        lazy = scan_table(file, format, text_columns=[column])
        with reading(file, format):
            columns = list(lazy.collect_schema())
        if column not in columns:
            raise TwoTowerError(f"{file}: no column '{column}' of user ids (it has {columns[:10]}); "
                                "name it with users_column=...")
        ids = collect(lazy.select(column), file, format)[column].drop_nulls().to_list()
    if not ids:
        raise TwoTowerError(f"{file}: holds no user ids")
    return ids


def known_users(retriever: Retriever, users: list[Any], unknown: str) -> list[Any]:
    """``users`` without those the run does not know, said in one line (``unknown=skip``)."""
    rows = retriever.run.user_vocab.lookup(users, missing=-1)
    skipped = [user for user, row in zip(users, rows, strict=True) if row < 0]
    if skipped and unknown == "skip":
        log.info("skipped %d of %d users the run does not know, e.g. %s", len(skipped), len(users), skipped[:5])
        return [user for user, row in zip(users, rows, strict=True) if row >= 0]
    if skipped and unknown == "error":
        name = retriever.run.names["user"]
        raise TwoTowerError(f"unknown {name} id(s) {skipped[:5]} ({len(skipped)} of {len(users)} not in the run"
                            f"{retriever.why_unknown('user', skipped)}); set unknown=skip to leave them out, or "
                            "unknown=popular to give them popular items")
    return users


def table(results: list[Result], users: list[Any] | None = None) -> pl.DataFrame:
    """One row per item: ``id``, ``score`` (``title``, ``fallback``) of one answer, or ``user_id``, ``rank``,
    ``item_id`` ... of one answer per user; ids in their own type."""
    if users is None:
        return pl.DataFrame(results[0].records(), infer_schema_length=None)
    records = [{"user_id": user, "rank": rank, **{("item_id" if key == "id" else key): value
                                                   for key, value in record.items()}}
               for user, result in zip(users, results, strict=True)
               for rank, record in enumerate(result.records(), start=1)]
    return pl.DataFrame(records, infer_schema_length=None)


def answer(retriever: Retriever, cfg: DictConfig) -> tuple[str, pl.DataFrame]:
    """The heading and the rows of the one query ``cfg`` asks."""
    names, k = retriever.run.names, cfg.k
    lists = {name: None if cfg[name] is None else list(cfg[name]) for name in ("allow", "deny")}
    if cfg.users_file is not None or cfg.user is not None:
        users = read_user_ids(cfg.users_file, cfg.users_column) if cfg.users_file is not None else [cfg.user]
        users = known_users(retriever, users, cfg.unknown)
        policy = "popular" if cfg.unknown == "popular" else "error"
        results = retriever.recommend(users, k=k, exclude_seen=cfg.exclude_seen, unknown=policy, **lists)
        typed = query_ids(users, retriever.run.user_vocab.numeric).to_list()
        typed = [id_ if id_ is not None else user for id_, user in zip(typed, users, strict=True)]
        if cfg.users_file is not None:
            return f"Top {k} {names['item']}s for {len(users)} {names['user']}s:", table(results, typed)
        return f"Top {k} {names['item']}s for {names['user']} {typed[0]!r}:", table(results)
    if cfg.similar_user is not None:
        heading = f"{names['user'].capitalize()}s most similar to {cfg.similar_user!r}:"
        return heading, table([retriever.similar_users(cfg.similar_user, k=k)])
    if cfg.history is not None:
        if not isinstance(cfg.history, ListConfig):
            raise TwoTowerError(f"history must be a list of item ids, e.g. history='[1,2,3]', got {cfg.history!r}")
        history = list(cfg.history)
        result = retriever.recommend_from_history(history, k=k, unknown=cfg.unknown, **lists)
        known = int((retriever.run.item_vocab.lookup(history, missing=-1) >= 0).sum())
        said = f"{known} known {names['item']}(s)" + (f" of {len(history)}" if known < len(history) else "")
        return f"Top {k} {names['item']}s for a {names['user']} with {said}:", table([result])
    result = retriever.similar_items(cfg.item, k=k, **lists)
    anchor = retriever.run.item_vocab.resolve(cfg.item)
    title = retriever.run.item_vocab.column("title", [anchor])[0] or retriever.run.item_vocab.ids[anchor]
    return f"{names['item'].capitalize()}s most similar to {title!r}:", table([result])


def output_format(output: str | None, output_file: str | None) -> str:
    if output is not None and output not in OUTPUTS:
        raise TwoTowerError(f"output must be one of {OUTPUTS}, got '{output}'")
    if output_file is None:
        if output == "parquet":
            raise TwoTowerError("output=parquet is a file format: give output_file=NAME.parquet")
        return output or "table"
    format = table_format(Path(output_file))
    if output not in (None, format):
        raise TwoTowerError(f"output={output} but output_file={output_file} is {format}; give one of the two, "
                            "or make them agree")
    return format


def print_table(heading: str, rows: pl.DataFrame) -> None:
    print(heading)
    for number, row in enumerate(rows.iter_rows(named=True), start=1):
        id_ = row.get("id", row.get("item_id"))
        label = row.get("title")
        label = f"{label}  [{id_}]" if label is not None and label != id_ else id_
        who = f"{row['user_id']}: " if "user_id" in row else ""
        mark = f"  ({row['fallback']} items: a fallback)" if row.get("fallback") else ""
        print(f"{who}{row.get('rank', number):3d}. {label}  ({row['score']:.4f}){mark}")


def run(cfg: DictConfig) -> None:
    format = output_format(cfg.output, cfg.output_file)
    given = [name for name in QUERIES if cfg.get(name) is not None]
    if len(given) != 1:
        raise TwoTowerError("give exactly one of user=ID, item=ID_OR_TITLE, users_file=FILE, similar_user=ID "
                            f"or history='[ID,...]'{f' (got {given})' if given else ''}")
    checks.choice("unknown", cfg.unknown, UNKNOWN)
    retriever = Retriever.load(cfg.run_dir, index=checks.instantiate("index", cfg.index) if cfg.get("index") else None)
    heading, rows = answer(retriever, cfg)
    if cfg.output_file is not None:
        write_table(rows, Path(cfg.output_file))
        log.info("wrote %d rows to %s", rows.height, cfg.output_file)
    elif format == "json":
        print(json.dumps(rows.to_dicts(), indent=1))
    elif format == "csv":
        sys.stdout.write(rows.write_csv())
    else:
        print_table(heading, rows)


@hydra.main(version_base="1.3", config_path="pkg://twotower.conf", config_name="retrieve")
def app(cfg: DictConfig) -> None:
    with reported_errors(cfg.debug):
        check_options(cfg, "retrieve")
        run(cfg)


def main() -> None:
    answer_help("twotower-retrieve", "retrieve")
    app()


if __name__ == "__main__":
    main()
