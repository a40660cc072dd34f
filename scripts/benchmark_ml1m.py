"""Ranking quality on the ml-1m benchmark split: twotower's recommended configuration against two
references fitted in the same run, implicit's ALS and PureSVD, all evaluated by the same code.

    python scripts/benchmark_ml1m.py [--data ../shared/data/ml-1m-split] [--out benchmark-ml1m.json]

Protocol (../shared/data/README.md): full ranking over all items, each user's train + valid items removed,
Recall@20 and NDCG@20 averaged over users with test items. The references fit on train + valid. twotower
selects its number of epochs on valid (early stopping), then refits on train + valid for that many epochs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp
from hydra import compose, initialize_config_module
from scipy.sparse.linalg import svds

from twotower.cli import register_resolvers
from twotower.data.readers import UserLinesReader
from twotower.data.user_items import UserItems
from twotower.eval import evaluate_run, evaluate_vectors
from twotower.train import train


def read_split(folder: Path) -> dict[str, pl.DataFrame]:
    return {name: UserLinesReader(str(folder / f"{name}.txt")).read().interactions
            for name in ("train", "valid", "test")}


def fit_als(matrix: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    from implicit.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(factors=64, regularization=0.05, alpha=10.0, iterations=15, random_state=0)
    model.fit(matrix, show_progress=False)
    return np.asarray(model.user_factors), np.asarray(model.item_factors)


def fit_pure_svd(matrix: sp.csr_matrix, factors: int = 32) -> tuple[np.ndarray, np.ndarray]:
    users, singular, items = svds(matrix.astype(np.float64), k=factors, random_state=0)
    return (users * singular).astype(np.float32), items.T.astype(np.float32)


def fit_twotower(data: Path, run_dir: Path, overrides: list[str]) -> dict[str, float]:
    register_resolvers()
    with initialize_config_module(config_module="twotower.conf", version_base="1.3"):
        cfg = compose("train", overrides=[
            "experiment=ml1m", f"experiment_data={data}", f"run_dir={run_dir}", "refit=true",
            "trainer.enable_progress_bar=false", "show_similar_to=null", *overrides])
    return train(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ml-1m-split"))
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--run-dir", type=Path, default=None, help="keep twotower's run directory here")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for twotower (e.g. model.dim=64)")
    args = parser.parse_args()

    splits = read_split(args.data)
    known = pl.concat([splits["train"], splits["valid"]])
    n_users = int(max(frame["user_id"].max() for frame in splits.values())) + 1
    n_items = int(max(frame["item_id"].max() for frame in splits.values())) + 1
    users, items = known["user_id"].to_numpy(), known["item_id"].to_numpy()
    matrix = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)), shape=(n_users, n_items))
    seen = UserItems.from_pairs(users, items, n_users)
    targets = UserItems.from_pairs(splits["test"]["user_id"].to_numpy(), splits["test"]["item_id"].to_numpy(), n_users)

    results = {}
    for name, fit in (("implicit ALS (64 factors)", fit_als), ("PureSVD (32 factors)", fit_pure_svd)):
        started = time.perf_counter()
        user_vectors, item_vectors = fit(matrix)
        seconds = time.perf_counter() - started
        metrics = evaluate_vectors(user_vectors, item_vectors, seen, targets, ks=[20])
        results[name] = {"recall@20": metrics["recall@20"], "ndcg@20": metrics["ndcg@20"], "fit_seconds": seconds}
        print(f"{name}: recall@20 {metrics['recall@20']:.4f}  ndcg@20 {metrics['ndcg@20']:.4f}  {seconds:.1f}s",
              flush=True)

    with tempfile.TemporaryDirectory() as scratch:
        run_dir = args.run_dir or Path(scratch) / "run"
        started = time.perf_counter()
        trained = fit_twotower(args.data.resolve(), run_dir, args.overrides)
        seconds = time.perf_counter() - started
        metrics = evaluate_run(run_dir, ks=[20])
    results["twotower (recommended)"] = {"recall@20": metrics["recall@20"], "ndcg@20": metrics["ndcg@20"],
                                         "fit_seconds": seconds, "epochs": trained.get("refit_epochs")}

    best = {metric: max(r[metric] for name, r in results.items() if not name.startswith("twotower"))
            for metric in ("recall@20", "ndcg@20")}
    ours = results["twotower (recommended)"]
    print("\n| model | Recall@20 | NDCG@20 | fit time (s) |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['recall@20']:.4f} | {r['ndcg@20']:.4f} | {r['fit_seconds']:.1f} |")
    print(f"\ntwotower / best reference: Recall@20 x{ours['recall@20'] / best['recall@20']:.3f}, "
          f"NDCG@20 x{ours['ndcg@20'] / best['ndcg@20']:.3f}; twotower epochs after selection: {ours['epochs']}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
