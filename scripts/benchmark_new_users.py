"""New users from their history, without retraining: twotower's history tower against ALS fold-in and
popularity, fitted and scored in one process.

    python scripts/benchmark_new_users.py [--data ../shared/data/ml-1m-split] [--share 0.1] [--seed 0]
                                          [hydra overrides for twotower]

Protocol: a seeded 10% of the users (``--share``) are held out entirely; every model trains on the other
users' interactions (all of train, valid and test). Each held-out user gives a seeded 80% of their items as
history; the other 20% are the targets: Recall@20 and NDCG@20 over the whole catalogue, the history removed
from the ranking. Items that only held-out users have are unknown to every model: they are dropped from
histories and targets alike.

- twotower: ``twotower-train data=interactions model=history`` on a CSV of the training users, then
  ``Retriever.recommend_from_history``'s user vectors (the mean of the history's vectors, projected).
- ALS fold-in: implicit's ALS (``benchmark_quality.als_model``) fitted on the same users, then
  ``recalculate_user`` solves each new user's factors from their history against the fixed item factors.
- popularity: the items most often seen among the training users.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_quality import METRICS, als_model, fit_twotower, read_split
from results import table, write_results

from twotower.data.user_items import UserItems
from twotower.serving.retrieval import Retriever
from twotower.training.evaluation import evaluate_vectors


def hold_out(log: pl.DataFrame, share: float, seed: int) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(training users' log, new users' histories, new users' targets): a seeded share of the users, each
    with a seeded 80/20 split of their items."""
    rng = np.random.default_rng(seed)
    users = log["user_id"].unique().sort().to_numpy()
    new = rng.choice(users, size=round(share * len(users)), replace=False)
    is_new = pl.col("user_id").is_in(pl.Series(new).implode())
    held = log.filter(is_new)
    held = held.with_columns(draw=pl.Series(rng.random(held.height)))
    in_history = pl.col("draw").rank("ordinal").over("user_id") <= (pl.len().over("user_id") * 0.8).ceil()
    return (log.filter(~is_new), held.filter(in_history).drop("draw"), held.filter(~in_history).drop("draw"))


def encode(frame: pl.DataFrame, users: dict[object, int], retriever: Retriever) -> tuple[np.ndarray, np.ndarray]:
    """(new user row, item index) pairs, items outside the trained vocabulary dropped."""
    rows = retriever.run.item_vocab.lookup(frame["item_id"].to_list(), missing=-1)
    user_rows = np.array([users[user] for user in frame["user_id"].to_list()])
    return user_rows[rows >= 0], rows[rows >= 0]


def fit_als_with_fold_in(train: sp.csr_matrix, history: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, float]:
    started = time.perf_counter()
    model = als_model(train)
    fit_seconds = time.perf_counter() - started
    users = model.recalculate_user(np.arange(history.shape[0]), history)
    return np.asarray(users), np.asarray(model.item_factors), fit_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ml-1m-split"))
    parser.add_argument("--share", type=float, default=0.1, help="share of users held out as new users")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results for the documentation here")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for twotower")
    args = parser.parse_args()

    log = pl.concat(read_split(args.data).values()).select("user_id", "item_id").unique()
    training, history, targets = hold_out(log, args.share, args.seed)
    print(f"{args.data.name}: {training['user_id'].n_unique()} training users, "
          f"{history['user_id'].n_unique()} new users ({history.height} history / {targets.height} target items)")
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "train.csv"
        training.write_csv(data)
        started = time.perf_counter()
        fit_twotower(data, Path(scratch) / "run", ["model=history", *args.overrides])
        results["twotower (model=history)"] = {"fit_seconds": time.perf_counter() - started}
        retriever = Retriever.load(Path(scratch) / "run", index="exact")

    new_users = {user: row for row, user in enumerate(history["user_id"].unique().sort().to_list())}
    n_items = len(retriever.run.item_vocab)
    given = UserItems.from_pairs(*encode(history, new_users, retriever), len(new_users))
    wanted = UserItems.from_pairs(*encode(targets, new_users, retriever), len(new_users))
    dropped = targets.height - len(wanted.items)
    if dropped:
        print(f"{dropped} target items only new users have: unknown to every model, they are left out")

    queries = retriever.history_queries([given.row(user) for user in range(len(new_users))])
    scored = {"twotower (model=history)": (queries, retriever.catalogue.vectors)}
    train_users, train_items = retriever.run.user_vocab.lookup(training["user_id"].to_list()), \
        retriever.run.item_vocab.lookup(training["item_id"].to_list())
    matrix = sp.csr_matrix((np.ones(len(train_users), dtype=np.float32), (train_users, train_items)),
                           shape=(len(retriever.run.user_vocab), n_items))
    history_matrix = sp.csr_matrix((np.ones(len(given.items), dtype=np.float32), given.items, given.indptr),
                                   shape=(len(new_users), n_items))
    als_users, als_items, als_seconds = fit_als_with_fold_in(matrix, history_matrix)
    scored["implicit ALS fold-in (recalculate_user)"] = (als_users, als_items)
    results["implicit ALS fold-in (recalculate_user)"] = {"fit_seconds": als_seconds}
    counts = np.asarray(matrix.sum(axis=0)).ravel().astype(np.float32)
    scored["popularity"] = (np.ones((len(new_users), 1), dtype=np.float32), counts[:, None])
    results["popularity"] = {"fit_seconds": 0.0}

    print("\n| model | Recall@20 | NDCG@20 | fit time (s) |\n|---|---|---|---|")
    for name, (users, items) in scored.items():
        metrics = evaluate_vectors(users.astype(np.float32), items.astype(np.float32), given, wanted, ks=[20])
        results[name] |= {metric: metrics[metric] for metric in METRICS}
        r = results[name]
        print(f"| {name} | {r['recall@20']:.4f} | {r['ndcg@20']:.4f} | {r['fit_seconds']:.1f} |", flush=True)
    ours, als = results["twotower (model=history)"], results["implicit ALS fold-in (recalculate_user)"]
    ratios = ", ".join(f"{metric} x{ours[metric] / als[metric]:.3f}" for metric in METRICS)
    print(f"\ntwotower / ALS fold-in: {ratios}")
    if args.out:
        rows = [[name, round(r["recall@20"], 4), round(r["ndcg@20"], 4), round(r["fit_seconds"], 1)]
                for name, r in results.items()]
        title = f"{args.data.name}: {len(new_users)} users held out, each known only by 80% of their items"
        write_results(args.out, "New users from their history", [table(
            title, ["model", "Recall@20", "NDCG@20", "fit time (s)"], rows, f"twotower / ALS fold-in: {ratios}")],
            description="A seeded share of the users is held out entirely; every model trains on the others. Each "
            "held-out user then gives 80% of their items as a history, and the other 20% are the targets (whole "
            "catalogue, the history removed). Neither model retrains for the new users.")


if __name__ == "__main__":
    main()
