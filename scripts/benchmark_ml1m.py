"""Ranking quality on the ml-1m benchmark split: twotower's defaults against two references fitted in the
same run, implicit's ALS and PureSVD, all evaluated by the same code.

    python scripts/benchmark_ml1m.py [--data ../shared/data/ml-1m-split] [--out benchmark-ml1m.json]

Protocol (../shared/data/README.md): full ranking over all items, each user's train + valid items removed,
Recall@20 and NDCG@20 averaged over users with test items. Everything learns from train + valid only.

twotower runs as a user would run it (``--protocol csv``, the default): train + valid are written to one
plain CSV and ``twotower-train data=interactions data.path=CSV`` runs with its defaults (a random split of
that file selects the number of epochs, then the final model trains on all of it); the exported model is
scored on test with ``twotower-eval path=test.csv``. ``--protocol presplit`` instead trains on the benchmark's
own train file and selects on its valid file (``experiment=ml1m``), then the final model trains on both.
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

from twotower.commands.cli import register_resolvers
from twotower.commands.eval import evaluate_run, evaluate_vectors
from twotower.commands.train import train
from twotower.data.readers import UserLinesReader
from twotower.data.user_items import UserItems


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


def write_csv(frames: list[pl.DataFrame], path: Path) -> Path:
    pl.concat(frames).select("user_id", "item_id").write_csv(path)
    return path


def fit_twotower(data: Path | str, run_dir: Path, overrides: list[str]) -> dict[str, float]:
    """``data``: a CSV of train + valid (the csv protocol), or the split folder (presplit)."""
    source = ["data=interactions", f"data.path={data}"] if str(data).endswith(".csv") else \
        ["experiment=ml1m", f"experiment_data={data}"]
    register_resolvers()
    with initialize_config_module(config_module="twotower.conf", version_base="1.3"):
        cfg = compose("train", overrides=[*source, f"run_dir={run_dir}", "trainer.enable_progress_bar=false",
                                          "show_similar_to=null", *overrides])
    return train(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ml-1m-split"))
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--run-dir", type=Path, default=None, help="keep twotower's run directory here")
    parser.add_argument("--protocol", choices=("csv", "presplit"), default="csv")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for twotower (e.g. model.dim=64)")
    args = parser.parse_args()

    splits = read_split(args.data)
    known = pl.concat([splits["train"], splits["valid"]])
    n_users = int(max(frame["user_id"].max() for frame in splits.values())) + 1
    n_items = int(max(frame["item_id"].max() for frame in splits.values())) + 1
    users, items = known["user_id"].to_numpy(), known["item_id"].to_numpy()
    matrix = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)), shape=(n_users, n_items))
    seen = UserItems.from_pairs(users, items, n_users)
    # Test items that no user has in train + valid cannot be ranked by a model that never saw them;
    # twotower-eval skips them (with a warning), so the references are scored on the same targets.
    test = splits["test"].filter(pl.col("item_id").is_in(known["item_id"].unique().implode()))
    if test.height < splits["test"].height:
        print(f"{splits['test'].height - test.height} of {splits['test'].height} test interactions have items "
              "outside train + valid; every model is scored without them")
    targets = UserItems.from_pairs(test["user_id"].to_numpy(), test["item_id"].to_numpy(), n_users)

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
        test_csv = write_csv([splits["test"]], Path(scratch) / "test.csv")
        data = write_csv([splits["train"], splits["valid"]], Path(scratch) / "train_valid.csv") \
            if args.protocol == "csv" else args.data.resolve()
        started = time.perf_counter()
        trained = fit_twotower(data, run_dir, args.overrides)
        seconds = time.perf_counter() - started
        # Scored as a user would score it: test interactions, minus everything the run was given.
        metrics = evaluate_run(run_dir, path=str(test_csv), ks=[20])
    results["twotower (defaults)"] = {"recall@20": metrics["recall@20"], "ndcg@20": metrics["ndcg@20"],
                                      "fit_seconds": seconds, "epochs": trained.get("final_fit_epochs"),
                                      "selection": {name: value for name, value in trained.items()
                                                    if name.startswith(("val/", "test/"))}}

    best = {metric: max(r[metric] for name, r in results.items() if not name.startswith("twotower"))
            for metric in ("recall@20", "ndcg@20")}
    ours = results["twotower (defaults)"]
    print("\n| model | Recall@20 | NDCG@20 | fit time (s) |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['recall@20']:.4f} | {r['ndcg@20']:.4f} | {r['fit_seconds']:.1f} |")
    print(f"\ntwotower / best reference: Recall@20 x{ours['recall@20'] / best['recall@20']:.3f}, "
          f"NDCG@20 x{ours['ndcg@20'] / best['ndcg@20']:.3f}; twotower's final fit: {ours['epochs']} epochs")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
