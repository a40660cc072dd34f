"""Full-ranking metrics of a finished run, or of any user and item vectors.

The exported model is never scored on interactions it was trained on: after the default final fit on every
split of a single log, that is all of them, and the held-out metrics are those the run measured before the
final fit (``DIR/metrics/train.json``); score it on later interactions with ``path=``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import torch

from twotower.data.batches import RankingBatch, RankingBatches, eval_chunk_size
from twotower.data.interactions import deduplicate, positives
from twotower.data.readers import InteractionFileReader
from twotower.data.splits import SPLIT_NAMES
from twotower.data.user_items import UserItems
from twotower.data.vocab import Vocabulary
from twotower.errors import TwoTowerError
from twotower.model.metrics import RankingMetrics, cut_offs
from twotower.run import Run

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
                 user_col: str = "user_id", item_col: str = "item_id", prior: bool = True) -> dict[str, float]:
    """Metrics of a run's exported vectors on its ``holdout`` split (``valid`` or ``test``), or on the
    interactions of the file at ``path`` (everything the run trained or selected on removed). ``prior=False``
    scores the towers alone, without the run's popularity prior (an ablation)."""
    run = Run.open(run_dir)
    ks = list(ks)
    cut_offs(ks, 1)  # checked before anything is read
    splits = {name: run.split(name) for name in SPLIT_NAMES}
    # The exported vectors learnt from these splits: scoring them there would measure memory, not ranking.
    trained_on = run.manifest.trained_on
    if path is not None:
        interaction_log = InteractionFileReader(path, user_col=user_col, item_col=item_col).read()
        if "rating" in interaction_log.interactions.columns:  # positives by the run's own rule
            interaction_log = replace(interaction_log, min_rating=run.manifest.min_rating)
        targets = deduplicate(encode_known(positives(interaction_log), run.user_vocab, run.item_vocab))
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
                f"fit, are in {run.paths.metrics('train')} (and run.json 'metrics')")
        targets = splits[holdout]
        seen = splits["train"] if holdout == "valid" else pl.concat([splits["train"], splits["valid"]])
        if targets.height == 0:
            raise TwoTowerError(f"nothing to evaluate: the {holdout} split has no interactions")
    else:
        raise TwoTowerError(f"holdout must be 'valid' or 'test', got '{holdout}'")

    n_users = len(run.user_vocab)
    width = run.manifest.dim if prior else run.manifest.model_dim
    return evaluate_vectors(np.ascontiguousarray(run.user_vectors[:, :width]),
                            np.ascontiguousarray(run.item_vectors[:, :width]), UserItems.from_frame(seen, n_users),
                            UserItems.from_frame(targets, n_users), ks)


def evaluate_vectors(user_vectors: np.ndarray, item_vectors: np.ndarray, seen: UserItems, targets: UserItems,
                     ks: Sequence[int] = (10, 20)) -> dict[str, float]:
    """Full-ranking metrics of dot-product scores, over users with targets, excluding their seen items."""
    chunks = RankingBatches(seen, targets, eval_chunk_size(len(item_vectors)))
    metrics = RankingMetrics(len(item_vectors), ks)
    users, items = torch.from_numpy(user_vectors), torch.from_numpy(item_vectors)
    for chunk in range(len(chunks)):
        batch = chunks[chunk]
        metrics.update(users[batch.users] @ items.T, batch)
    results = {name: float(value) for name, value in metrics.compute().items()}
    results["users"] = len(chunks.users)
    return results


def popularity_metrics(counts: np.ndarray, seen: UserItems, targets: UserItems, ks: Sequence[int] = (10, 20)
                       ) -> dict[str, float]:
    """The metrics of recommending every user the most popular items (``counts`` per item, ties to the lower
    index) they have not seen: the baseline a model must beat.

    Every user's ranking is the one catalogue order, so a user's top k lies among its first k + (items the
    user has seen): each chunk ranks only that head, and the pass costs a small share of a model's full
    ranking however large the catalogue.
    """
    order = np.argsort(-counts, kind="stable")
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    metrics = RankingMetrics(len(counts), ks)
    chunks = RankingBatches(seen, targets, eval_chunk_size(len(counts)))
    for chunk in range(len(chunks)):
        batch = chunks[chunk]
        n_seen = torch.bincount(batch.seen_rows, minlength=len(batch.users))
        head = min(len(order), metrics.ks[-1] + int(n_seen.max()))
        # Items beyond the head share one last column that is never ranked (there are always k items before
        # it); where the head is the whole catalogue, there are none.
        width = head + (head < len(order))
        scores = torch.arange(width, 0, -1, dtype=torch.float32).expand(len(batch.users), width).clone()
        if head < len(order):
            scores[:, head] = float("-inf")
        column = torch.from_numpy(np.minimum(position, head))
        headed = RankingBatch(batch.users, batch.seen_rows, column[batch.seen_items], batch.target_rows,
                              column[batch.target_items])
        metrics.update(scores, headed, torch.from_numpy(order[:width]))
    results = {name: float(value) for name, value in metrics.compute().items()}
    results["users"] = len(chunks.users)
    return results
