"""twotower-eval: full-ranking metrics of a finished run, from its exported vectors.

    twotower-eval run_dir=DIR                  # its test split (training + validation items excluded)
    twotower-eval run_dir=DIR holdout=valid    # its validation split (training items excluded)
    twotower-eval run_dir=DIR path=later.csv   # another interaction log with the same ids

Prints the metrics as JSON and writes them to ``DIR/metrics/eval-<holdout or file name>.json``. The exported
model is never scored on interactions it was trained on: after the default final fit on every split of a
single log, that is all of them, and the held-out metrics are those the run measured before the final fit
(``DIR/metrics/train.json``); score it on later interactions with ``path=``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import hydra
import numpy as np
import polars as pl
import torch
from omegaconf import DictConfig

from twotower.artifacts import (
    SPLIT_NAMES,
    RunPaths,
    check_fingerprints,
    read_manifest,
    read_parquet,
    run_path,
    write_json,
)
from twotower.commands.cli import reported_errors
from twotower.data.batches import RankingBatches, eval_chunk_size
from twotower.data.interactions import deduplicate, positives
from twotower.data.readers import InteractionFileReader
from twotower.data.user_items import UserItems
from twotower.data.vocab import Vocabulary
from twotower.embeddings import read_vectors
from twotower.errors import TwoTowerError
from twotower.metrics import RankingMetrics, cut_offs

log = logging.getLogger("twotower")


def encode_known(frame: pl.DataFrame, user_vocab: Vocabulary, item_vocab: Vocabulary) -> pl.DataFrame:
    """Map ids to indices, dropping (and counting) interactions with ids the run has never seen."""
    known = item_vocab.encode_known(user_vocab.encode_known(frame, "user_id", "user"), "item_id", "item")
    known = known.select("user", "item")
    if known.height < frame.height:
        log.warning("skipped %d of %d interactions whose user or item is not in the run's vocabulary",
                    frame.height - known.height, frame.height)
    if known.height == 0:
        raise TwoTowerError("no interaction in the file has a user and an item known to the run")
    return known


def evaluate_run(run_dir: str | Path, holdout: str = "test", path: str | None = None, ks: Sequence[int] = (10, 20),
                 user_col: str = "user_id", item_col: str = "item_id") -> dict[str, float]:
    paths = RunPaths(run_path(run_dir))
    manifest = read_manifest(paths)
    check_fingerprints(paths, manifest)
    ks = list(ks)
    cut_offs(ks, 1)  # checked before anything is read
    user_vocab = Vocabulary.load(paths.vocab("users"), manifest["names"]["user"])
    item_vocab = Vocabulary.load(paths.vocab("items"), manifest["names"]["item"])
    _, user_vectors = read_vectors(paths.embeddings("users"))
    _, item_vectors = read_vectors(paths.embeddings("items"))
    splits = {name: read_parquet(paths.split(name)) for name in SPLIT_NAMES}
    # The exported vectors learnt from these splits: scoring them there would measure memory, not ranking.
    trained_on = manifest.get("trained_on", ["train"])
    if path is not None:
        interaction_log = InteractionFileReader(path, user_col=user_col, item_col=item_col).read()
        if "rating" in interaction_log.interactions.columns:  # positives by the run's own rule
            interaction_log = replace(interaction_log, min_rating=manifest["min_rating"])
        targets = deduplicate(encode_known(positives(interaction_log), user_vocab, item_vocab))
        used = [name for name in SPLIT_NAMES if name in {"train", "valid", *trained_on}]  # trained or selected on
        seen = pl.concat([splits[name] for name in used])
        targets = targets.join(seen, on=["user", "item"], how="anti")
        if targets.height == 0:
            raise TwoTowerError(f"nothing to evaluate: every interaction in {path} with known ids is one the "
                                f"run trained or selected on ({', '.join(used)})")
    elif holdout in ("valid", "test"):
        if holdout in trained_on:
            raise TwoTowerError(
                f"the exported model was trained on the {holdout} split (final fit on {', '.join(trained_on)}), so "
                f"it cannot be scored there; the selected model's held-out metrics, measured before the final "
                f"fit, are in {paths.metrics('train')} (and run.json 'metrics')")
        targets = splits[holdout]
        seen = splits["train"] if holdout == "valid" else pl.concat([splits["train"], splits["valid"]])
        if targets.height == 0:
            raise TwoTowerError(f"nothing to evaluate: the {holdout} split has no interactions")
    else:
        raise TwoTowerError(f"holdout must be 'valid' or 'test', got '{holdout}'")

    n_users = len(user_vocab)
    return evaluate_vectors(user_vectors, item_vectors, UserItems.from_frame(seen, n_users),
                            UserItems.from_frame(targets, n_users), ks)


def evaluate_vectors(user_vectors: np.ndarray, item_vectors: np.ndarray, seen: UserItems, targets: UserItems,
                     ks: Sequence[int] = (10, 20)) -> dict[str, float]:
    """Full-ranking metrics of dot-product scores, over users with targets, excluding their seen items."""
    chunks = RankingBatches(seen, targets, eval_chunk_size(len(item_vectors)))
    metrics = RankingMetrics(len(item_vectors), ks)
    users, items = torch.from_numpy(user_vectors), torch.from_numpy(item_vectors)
    for chunk in range(len(chunks)):
        batch = chunks[chunk]
        metrics.update(users[batch["users"]] @ items.T, batch)
    results = {name: float(value) for name, value in metrics.compute().items()}
    results["users"] = len(chunks.users)
    return results


@hydra.main(version_base="1.3", config_path="pkg://twotower.conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    with reported_errors(cfg.debug):
        results = evaluate_run(cfg.run_dir, cfg.holdout, cfg.path, list(cfg.ks), cfg.user_col, cfg.item_col)
        name = Path(cfg.path).name.split(".")[0] if cfg.path else cfg.holdout
        # "eval-" keeps these apart from the metrics the training run wrote (metrics/train.json).
        write_json(results, RunPaths(Path(cfg.run_dir)).metrics(f"eval-{name}"))
        print(json.dumps(results, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
