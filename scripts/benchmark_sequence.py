"""Next-item quality: twotower's sequence tower beside its history tower, its ID tower, popularity and ALS, all
on one leave-one-out split, with the published next-item results for Amazon Beauty.

    python scripts/benchmark_sequence.py [--data beauty ml-100k] [--variant "OVERRIDES" ...]
        [--out docs/benchmarks/sequence.json] [hydra overrides for every twotower run]

Protocol (``../shared/data/README.md``, the next-item protocol): each user's last interaction (by time, ties in
file order; Beauty's file is in time order) is the test item; every model learns from everything before it;
full ranking over every item, each user's earlier items removed; Recall@10 (hit rate: one test item a user)
and NDCG@10, and @20, averaged over users. twotower runs as a user runs it: the log without the test items
as one CSV with a ``position`` column, ``twotower-train data=interactions data.path=CSV split=temporal`` (its
own last item selects the epochs, then the final model trains on all of it), the exported model scored on
the test items with ``twotower-eval path=test.csv``: a user's vector is the encoding of their whole history.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from benchmark_quality import als_model, sparse
from hydra import compose, initialize_config_module
from results import markdown, table, write_results

from twotower.data.readers import UserLinesReader
from twotower.data.user_items import UserItems
from twotower.training.evaluation import evaluate_run, evaluate_vectors, popularity_metrics
from twotower.training.train import train

SHARED = Path("../shared/data")
METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")
# Recall@10 / NDCG@10 on the S3-Rec Beauty file, from the eSASRec benchmark (arXiv 2508.06450).
PUBLISHED = {"beauty": [("SASRec, its original BCE loss (published)", 0.0605, 0.0318),
                        ("DuoRec (published)", 0.0845, 0.0443),
                        ("SASRec + sampled softmax, 256 negatives (published)", 0.0921, 0.0531),
                        ("eSASRec (published)", 0.0928, 0.0523)]}
TOWERS = {"sequence": ["model/user_tower=sequence"], "history (the default)": [], "ID": ["model/user_tower=id"]}


def read_log(name: str) -> pl.DataFrame:
    """``user_id``, ``item_id`` and ``position`` (each user's order, oldest first) of a shared set."""
    if name == "beauty":
        return UserLinesReader(str(SHARED / "beauty-seq" / "sequences.txt")).read().interactions.select(
            "user_id", "item_id", "position")
    ratings = pl.read_csv(SHARED / "ml-100k" / "u.data", separator="\t", has_header=False,
                          new_columns=["user_id", "item_id", "rating", "timestamp"])
    ordered = ratings.with_row_index("row").sort("user_id", "timestamp", "row")  # ties in time: file order
    return ordered.with_columns(position=pl.int_range(pl.len()).over("user_id")).select("user_id", "item_id",
                                                                                         "position")


def leave_last_out(log: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(everything before each user's last item, the last items)."""
    last = pl.col("position") == pl.col("position").max().over("user_id")
    return log.filter(~last), log.filter(last).select("user_id", "item_id")


def fit_twotower(history: Path, test: Path, run_dir: Path, overrides: list[str]) -> tuple[dict[str, float], float]:
    with initialize_config_module(config_module="twotower.conf", version_base="1.3"):
        cfg = compose("train", overrides=["data=interactions", f"data.path={history}", "split=temporal",
                                          f"run_dir={run_dir}", "monitor=val/ndcg@10", "progress=none",
                                          "show_similar_to=null", *overrides])
    started = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - started
    return evaluate_run(run_dir, path=str(test), ks=[10, 20]), seconds


def references(before: pl.DataFrame, last: pl.DataFrame) -> dict[str, dict[str, float]]:
    """Popularity and ALS on the same split, scored by the same code."""
    users = {user: row for row, user in enumerate(before["user_id"].unique().sort().to_list())}
    items = {item: row for row, item in enumerate(before["item_id"].unique().sort().to_list())}
    shape = (len(users), len(items))

    def rows(frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        known = frame.filter(pl.col("item_id").is_in(list(items)))
        return (np.array([users[u] for u in known["user_id"].to_list()]),
                np.array([items[i] for i in known["item_id"].to_list()]))

    seen_users, seen_items = rows(before)
    seen = UserItems.from_pairs(seen_users, seen_items, shape[0])
    targets = UserItems.from_pairs(*rows(last), shape[0])
    found = {"popularity": popularity_metrics(np.bincount(seen_items, minlength=shape[1]), seen, targets, [10, 20])}
    matrix = sparse(pl.DataFrame({"user_id": seen_users, "item_id": seen_items}), shape)
    started = time.perf_counter()
    model = als_model(matrix, factors=64)
    found["implicit ALS (64 factors)"] = evaluate_vectors(np.asarray(model.user_factors),
                                                          np.asarray(model.item_factors), seen, targets, [10, 20])
    found["implicit ALS (64 factors)"]["seconds"] = time.perf_counter() - started
    return found


def benchmark(name: str, overrides: list[str], variants: list[str]) -> dict[str, dict[str, float]]:
    log = read_log(name)
    before, last = leave_last_out(log)
    results = references(before, last)
    for model, metrics in results.items():
        print(f"{name} {model}: " + "  ".join(f"{m} {metrics[m]:.4f}" for m in METRICS), flush=True)
    runs = {f"twotower, {tower} tower": extra for tower, extra in TOWERS.items()}
    runs |= {f"twotower, sequence tower, {variant}": ["model/user_tower=sequence", *variant.split()]
             for variant in variants}
    with tempfile.TemporaryDirectory() as scratch:
        history, test = Path(scratch) / "history.csv", Path(scratch) / "test.csv"
        before.write_csv(history)
        last.write_csv(test)
        for number, (model, extra) in enumerate(runs.items()):
            metrics, seconds = fit_twotower(history, test, Path(scratch) / f"run{number}", [*overrides, *extra])
            results[model] = metrics | {"seconds": seconds}
            print(f"{name} {model}: " + "  ".join(f"{m} {metrics[m]:.4f}" for m in METRICS) + f"  {seconds:.0f} s",
                  flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["beauty", "ml-100k"], choices=["beauty", "ml-100k"])
    parser.add_argument("--variant", action="append", default=[],
                        help='a sequence-tower run beside the defaults, with these overrides')
    parser.add_argument("--out", type=Path, default=None, help="write the results for the documentation here")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every twotower run")
    args = parser.parse_args()
    columns = ["model", "Recall@10", "NDCG@10", "Recall@20", "NDCG@20", "time (s)"]
    tables = []
    for name in args.data:
        results = benchmark(name, args.overrides, args.variant)
        rows = [[model, *(round(r[m], 4) for m in METRICS), round(r["seconds"], 1) if "seconds" in r else "-"]
                for model, r in results.items()]
        rows += [[model, recall, ndcg, "-", "-", "-"] for model, recall, ndcg in PUBLISHED.get(name, [])]
        print(f"\n{name}\n\n{markdown(columns, rows)}", flush=True)
        tables.append(table(name, columns, rows, "Leave-one-out: each user's last item is the test item; full "
                            "ranking, each user's earlier items removed." + (
                                " Published rows: the eSASRec benchmark on the same file (Recall@10 / NDCG@10)."
                                if name in PUBLISHED else "")))
    if args.out:
        write_results(args.out, "Next-item quality (leave-one-out)", tables, description=__doc__.split("\n\n")[2])


if __name__ == "__main__":
    main()
