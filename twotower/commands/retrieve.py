"""twotower-retrieve: top-k items for a user, items similar to an item, or a whole file of users.

    twotower-retrieve run_dir=DIR user=196 k=10
    twotower-retrieve run_dir=DIR item="Toy Story (1995)" output=json
    twotower-retrieve run_dir=DIR users_file=users.txt output=csv output_file=recs.csv
    twotower-retrieve run_dir=DIR similar_user=196          # users (or links ...) closest to a user
    twotower-retrieve run_dir=DIR history='[1,260,1196]'     # a new user from their items (model=history runs)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import hydra
import polars as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig

from twotower.commands.cli import reported_errors
from twotower.data.readers import collect, detect_format, existing_path, reading, scan_table
from twotower.errors import TwoTowerError
from twotower.files import atomic_path
from twotower.retrieval import Retriever

OUTPUTS = ("table", "json", "csv")


def print_table(heading: str, rows: list[dict[str, Any]]) -> None:
    print(heading)
    for rank, row in enumerate(rows, start=1):
        label = row.get("title")
        label = f"{label}  [{row['id']}]" if label is not None and label != row["id"] else row["id"]
        print(f"{rank:3d}. {label}  ({row['score']:.4f})")


def read_user_ids(path: str) -> list[Any]:
    """User ids from a text file (one per line) or a CSV/Parquet/NDJSON table with a ``user_id`` column.

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
        lazy = scan_table(file, format, text_columns=["user_id"])
        with reading(file, format):
            if "user_id" not in lazy.collect_schema():
                raise TwoTowerError(f"{file}: needs a user_id column, found {list(lazy.collect_schema())}")
        ids = collect(lazy.select("user_id"), file, format)["user_id"].drop_nulls().to_list()
    if not ids:
        raise TwoTowerError(f"{file}: holds no user ids")
    return ids


def batch_results(retriever: Retriever, users: list[Any], k: int, exclude_seen: bool) -> pl.DataFrame:
    results = retriever.recommend(users, k=k, exclude_seen=exclude_seen)
    records = []
    for user, result in zip(users, results, strict=True):
        for rank, row in enumerate(result.records(), start=1):
            records.append({"user_id": user, "rank": rank, **{("item_id" if key == "id" else key): value
                                                               for key, value in row.items()}})
    return pl.DataFrame(records)


def run(cfg: DictConfig) -> None:
    if cfg.output not in OUTPUTS:
        raise TwoTowerError(f"output must be one of {OUTPUTS}, got '{cfg.output}'")
    queries = [name for name in ("user", "item", "users_file", "similar_user", "history") if cfg.get(name) is not None]
    if len(queries) != 1:
        raise TwoTowerError("give exactly one of user=ID, item=ID_OR_TITLE, users_file=FILE, similar_user=ID "
                            "or history='[ID,...]'")
    retriever = Retriever.load(cfg.run_dir, index=instantiate(cfg.index) if cfg.get("index") else None)
    names = retriever.names
    if cfg.users_file is not None:
        frame = batch_results(retriever, read_user_ids(cfg.users_file), cfg.k, cfg.exclude_seen)
        if cfg.output_file:
            with atomic_path(Path(cfg.output_file)) as temporary:
                frame.write_json(temporary) if cfg.output == "json" else frame.write_csv(temporary)
        elif cfg.output == "json":
            print(json.dumps(frame.to_dicts(), indent=1))
        else:
            sys.stdout.write(frame.write_csv())
        return
    if cfg.similar_user is not None:
        rows = retriever.similar_users(cfg.similar_user, k=cfg.k).records()
        heading = f"{names['user'].capitalize()}s most similar to {cfg.similar_user!r}:"
    elif cfg.history is not None:
        history = cfg.history
        if not isinstance(history, ListConfig):
            raise TwoTowerError(f"history must be a list of item ids, e.g. history='[1,2,3]', got {history!r}")
        rows = retriever.recommend_from_history(list(history), k=cfg.k, unknown=cfg.unknown_items).records()
        heading = f"Top {cfg.k} {names['item']}s for a {names['user']} with {len(history)} {names['item']}(s):"
    elif cfg.user is not None:
        rows = retriever.recommend(cfg.user, k=cfg.k, exclude_seen=cfg.exclude_seen).records()
        heading = f"Top {cfg.k} {names['item']}s for {names['user']} {cfg.user!r}:"
    else:
        rows = retriever.similar_items(cfg.item, k=cfg.k).records()
        anchor = retriever.item_vocab.resolve(cfg.item)
        title = retriever.item_vocab.column("title", [anchor])[0] or retriever.item_vocab.ids[anchor]
        heading = f"{names['item'].capitalize()}s most similar to {title!r}:"
    if cfg.output == "json":
        print(json.dumps(rows, indent=1))
    elif cfg.output == "csv":
        sys.stdout.write(pl.DataFrame(rows).write_csv())
    else:
        print_table(heading, rows)


@hydra.main(version_base="1.3", config_path="pkg://twotower.conf", config_name="retrieve")
def main(cfg: DictConfig) -> None:
    with reported_errors(cfg.debug):
        run(cfg)


if __name__ == "__main__":
    main()
