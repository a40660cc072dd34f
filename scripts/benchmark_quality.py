"""Ranking quality on the pre-split benchmark sets: twotower's defaults against three references fitted in
the same process, implicit's ALS, PureSVD and EASE, all evaluated by the same code.

    python scripts/benchmark_quality.py [--data DIR ...] [--variant "OVERRIDES" ...] [--out results.json]
                                        [hydra overrides for every twotower run]

``--data`` defaults to ../shared/data/{ml-1m-split,lastfm-split,amazon-sports-split}. Each ``--variant`` adds
a twotower run with those Hydra overrides (space-separated, e.g. ``--variant "model=history"``) beside the
defaults; ``--no-references`` skips the references (for a quick comparison of variants).

Protocol (../shared/data/README.md): full ranking over all items, each user's train + valid items removed,
Recall@20 and NDCG@20 averaged over users with test items. Everything is fitted on train + valid; EASE's
regularisation is chosen on valid (fitted on train) from a small grid first. EASE is skipped where its
item-item matrix would not fit in memory.

twotower runs as a user would run it: train + valid are written to one plain CSV and
``twotower-train data=interactions data.path=CSV`` runs with its defaults (a random split of that file
selects the number of epochs, then the final model trains on all of it); the exported model is scored on
test with ``twotower-eval path=test.csv``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch
from hydra import compose, initialize_config_module
from scipy.sparse.linalg import svds

from twotower.data.batches import RankingBatches, eval_chunk_size
from twotower.data.readers import UserLinesReader
from twotower.data.user_items import UserItems
from twotower.evaluation import evaluate_run, evaluate_vectors
from twotower.metrics import RankingMetrics
from twotower.training import train

SHARED = Path("../shared/data")
DATASETS = ("ml-1m-split", "lastfm-split", "amazon-sports-split")
EASE_GRID = (50.0, 200.0, 500.0)
EASE_MAX_ITEMS = 40_000  # a float32 item-item matrix of 6.4 GB, a few of which are alive at once
METRICS = ("recall@20", "ndcg@20")


def read_split(folder: Path) -> dict[str, pl.DataFrame]:
    return {name: UserLinesReader(str(folder / f"{name}.txt")).read().interactions
            for name in ("train", "valid", "test")}


def als_model(matrix: sp.csr_matrix) -> Any:
    """implicit's ALS, fitted on ``matrix`` with the settings every benchmark compares against."""
    from implicit.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(factors=64, regularization=0.05, alpha=10.0, iterations=15, random_state=0)
    model.fit(matrix, show_progress=False)
    return model


def fit_als(matrix: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    model = als_model(matrix)
    return np.asarray(model.user_factors), np.asarray(model.item_factors)


def fit_pure_svd(matrix: sp.csr_matrix, factors: int = 32) -> tuple[np.ndarray, np.ndarray]:
    users, singular, items = svds(matrix.astype(np.float64), k=factors, random_state=0)
    return (users * singular).astype(np.float32), items.T.astype(np.float32)


def ease_weights(matrix: sp.csr_matrix, regularisation: float) -> np.ndarray:
    """EASE (Steck, WWW 2019): the item-item weights B = I - P / diag(P), P = (X'X + lambda I)^-1."""
    gram = torch.from_numpy((matrix.T @ matrix).toarray().astype(np.float32))
    gram.diagonal().add_(regularisation)
    precision = torch.cholesky_inverse(torch.linalg.cholesky(gram))
    del gram
    weights = precision / -precision.diagonal()
    weights.diagonal().zero_()
    return weights.numpy()


class Ease:
    """EASE with its regularisation chosen on the validation split (fitted on train alone)."""

    def __init__(self, train: sp.csr_matrix, seen: UserItems, valid: UserItems) -> None:
        scores = {regularisation: ease_metrics(train, ease_weights(train, regularisation), seen, valid)["ndcg@20"]
                  for regularisation in EASE_GRID}
        self.regularisation = max(scores, key=scores.get)
        self.name = f"EASE (lambda {self.regularisation:g}, chosen on valid)"

    def __call__(self, matrix: sp.csr_matrix) -> np.ndarray:
        return ease_weights(matrix, self.regularisation)


def ease_metrics(matrix: sp.csr_matrix, weights: np.ndarray, seen: UserItems, targets: UserItems
                 ) -> dict[str, float]:
    """Metrics of EASE's scores X B, from the sparse rows of X (a dense X @ B would cost users x items^2)."""
    chunks = RankingBatches(seen, targets, eval_chunk_size(matrix.shape[1]))
    metrics = RankingMetrics(matrix.shape[1], [20])
    for chunk in range(len(chunks)):
        batch = chunks[chunk]
        metrics.update(torch.from_numpy(np.asarray(matrix[batch["users"].numpy()] @ weights)), batch)
    return {name: float(value) for name, value in metrics.compute().items()}


def write_csv(frames: list[pl.DataFrame], path: Path) -> Path:
    pl.concat(frames).select("user_id", "item_id").write_csv(path)
    return path


def fit_twotower(data: Path, run_dir: Path, overrides: list[str]) -> dict[str, float]:
    with initialize_config_module(config_module="twotower.conf", version_base="1.3"):
        cfg = compose("train", overrides=["data=interactions", f"data.path={data}", f"run_dir={run_dir}",
                                          "trainer.enable_progress_bar=false", "show_similar_to=null", *overrides])
    return train(cfg)


def sparse(frame: pl.DataFrame, shape: tuple[int, int]) -> sp.csr_matrix:
    users, items = frame["user_id"].to_numpy(), frame["item_id"].to_numpy()
    matrix = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)), shape=shape)
    matrix.data[:] = 1.0  # repeated pairs count once
    return matrix


def scoring_protocol(splits: dict[str, pl.DataFrame]) -> tuple[sp.csr_matrix, UserItems, UserItems]:
    """The train + valid matrix the models fit, each user's seen items (removed from the ranking) and the
    test targets."""
    known = pl.concat([splits["train"], splits["valid"]])
    shape = tuple(int(max(frame[column].max() for frame in splits.values())) + 1 for column in ("user_id", "item_id"))
    matrix = sparse(known, shape)
    seen = UserItems.from_pairs(*matrix.nonzero(), shape[0])
    # Test items that no user has in train + valid cannot be ranked by a model that never saw them;
    # twotower-eval skips them (with a warning), so the references are scored on the same targets.
    test = splits["test"].filter(pl.col("item_id").is_in(known["item_id"].unique().implode()))
    if test.height < splits["test"].height:
        print(f"{splits['test'].height - test.height} of {splits['test'].height} test interactions have items "
              "outside train + valid; every model is scored without them")
    return matrix, seen, UserItems.from_pairs(test["user_id"].to_numpy(), test["item_id"].to_numpy(), shape[0])


def benchmark(folder: Path, overrides: list[str], variants: list[str], references: bool = True) -> dict[str, dict]:
    splits = read_split(folder)
    matrix, seen, targets = scoring_protocol(splits)
    shape = matrix.shape

    fits: dict[str, Callable[[sp.csr_matrix], tuple[np.ndarray, np.ndarray] | np.ndarray]] = {
        "implicit ALS (64 factors)": fit_als, "PureSVD (32 factors)": fit_pure_svd} if references else {}
    selection_seconds = 0.0
    if references and shape[1] <= EASE_MAX_ITEMS:
        started = time.perf_counter()
        train_matrix = sparse(splits["train"], shape)
        ease = Ease(train_matrix, UserItems.from_pairs(*train_matrix.nonzero(), shape[0]),
                    UserItems.from_pairs(splits["valid"]["user_id"].to_numpy(), splits["valid"]["item_id"].to_numpy(),
                                         shape[0]))
        selection_seconds = time.perf_counter() - started
        fits[ease.name] = ease
    elif references:
        print(f"EASE skipped: {shape[1]:,} items (its item-item matrix is kept below {EASE_MAX_ITEMS:,})")

    results = {}
    for name, fit in fits.items():
        started = time.perf_counter()
        fitted = fit(matrix)
        seconds = time.perf_counter() - started
        metrics = ease_metrics(matrix, fitted, seen, targets) if isinstance(fit, Ease) else \
            evaluate_vectors(*fitted, seen, targets, ks=[20])
        results[name] = {metric: metrics[metric] for metric in METRICS} | {"fit_seconds": seconds}
        if name.startswith("EASE"):
            results[name]["selection_seconds"] = selection_seconds
        print(f"{folder.name} {name}: recall@20 {metrics['recall@20']:.4f}  ndcg@20 {metrics['ndcg@20']:.4f}  "
              f"{seconds:.1f}s", flush=True)

    with tempfile.TemporaryDirectory() as scratch:
        test_csv = write_csv([splits["test"]], Path(scratch) / "test.csv")
        data = write_csv([splits["train"], splits["valid"]], Path(scratch) / "train_valid.csv")
        for variant in ["", *variants]:
            run_dir = Path(scratch) / f"run{len(results)}"
            started = time.perf_counter()
            trained = fit_twotower(data, run_dir, [*overrides, *variant.split()])
            seconds = time.perf_counter() - started
            # Scored as a user would score it: test interactions, minus everything the run was given.
            metrics = evaluate_run(run_dir, path=str(test_csv), ks=[20])
            name = f"twotower ({variant or 'defaults'})"
            results[name] = {metric: metrics[metric] for metric in METRICS} | {
                "fit_seconds": seconds, "epochs": trained.get("final_fit_epochs")}
            print(f"{folder.name} {name}: recall@20 {metrics['recall@20']:.4f}  ndcg@20 {metrics['ndcg@20']:.4f}  "
                  f"{seconds:.1f}s", flush=True)
    return results


def print_table(name: str, results: dict[str, dict]) -> None:
    print(f"\n{name}\n\n| model | Recall@20 | NDCG@20 | fit time (s) |\n|---|---|---|---|")
    for model, r in results.items():
        print(f"| {model} | {r['recall@20']:.4f} | {r['ndcg@20']:.4f} | {r['fit_seconds']:.1f} |")
    references = [r for model, r in results.items() if not model.startswith("twotower")]
    for model, ours in results.items():
        if model.startswith("twotower") and references:
            ratios = ", ".join(f"{metric} x{ours[metric] / max(r[metric] for r in references):.3f}"
                               for metric in METRICS)
            print(f"{model} / best reference: {ratios}; final fit: {ours['epochs']:.0f} epochs", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", default=[SHARED / name for name in DATASETS])
    parser.add_argument("--variant", action="append", default=[],
                        help='a twotower run beside the defaults, with these overrides (e.g. "model=history")')
    parser.add_argument("--no-references", action="store_true", help="skip ALS, PureSVD and EASE")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for twotower (e.g. model.dim=64)")
    args = parser.parse_args()

    everything = {}
    for folder in args.data:
        everything[folder.name] = benchmark(folder, args.overrides, args.variant, not args.no_references)
        print_table(folder.name, everything[folder.name])
    if args.out:
        args.out.write_text(json.dumps(everything, indent=2) + "\n")


if __name__ == "__main__":
    main()
