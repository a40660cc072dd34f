"""Ranking quality on the pre-split benchmark sets: twotower's defaults against three references fitted in
the same process, implicit's ALS, PureSVD and EASE, all evaluated by the same code.

    python scripts/benchmark_quality.py [--data DIR ...] [--variant "OVERRIDES" ...]
        [--out docs/benchmarks/quality.json] [--raw raw.json] [--references-from raw.json] [--keep-runs DIR]
        [hydra overrides for every twotower run]

``--data`` defaults to ../shared/data/{ml-1m,lastfm,amazon-sports,amazon-beauty,gowalla}-split; Gowalla's rows
are printed beside the published results on its split (``../shared/data/README.md``). Each ``--variant`` adds
a twotower run with those Hydra overrides (space-separated, e.g. ``--variant "model=history"``) beside the
defaults; ``--no-references`` skips the references (for a quick comparison of variants), and
``--references-from`` takes them from an earlier run's ``--raw`` file instead of fitting them again. The
references are implicit's ALS at 64, 128 and 256 factors and PureSVD at 32 and 64 (the best of them is the
bar), and EASE.

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
import functools
import json
import shutil
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
from results import markdown, table, write_results
from scipy.sparse.linalg import svds

from twotower.data.batches import RankingBatches, eval_chunk_size
from twotower.data.readers import UserLinesReader
from twotower.data.user_items import UserItems
from twotower.model.metrics import RankingMetrics
from twotower.run import Run
from twotower.training.evaluation import evaluate_run, evaluate_vectors
from twotower.training.train import train

SHARED = Path("../shared/data")
DATASETS = ("ml-1m-split", "lastfm-split", "amazon-sports-split", "amazon-beauty-split", "gowalla-split")
# Recall@20 / NDCG@20 published on the Gowalla split of the NGCF / LightGCN papers (../shared/data/README.md).
PUBLISHED = {"gowalla-split": {"EASE (published, BARS)": (0.1765, 0.1467), "LightGCN (published)": (0.1830, 0.1554),
                               "UltraGCN (published)": (0.1862, 0.1580), "SimpleX (published)": (0.1872, 0.1557),
                               "NESCL (published)": (0.1917, 0.1617)}}
ALS_FACTORS = (64, 128, 256)
SVD_FACTORS = (32, 64)
EASE_GRID = (50.0, 200.0, 500.0)
EASE_MAX_ITEMS = 40_000  # a float32 item-item matrix of 6.4 GB, a few of which are alive at once
METRICS = ("recall@20", "ndcg@20")


def read_split(folder: Path) -> dict[str, pl.DataFrame]:
    return {name: UserLinesReader(str(folder / f"{name}.txt")).read().interactions
            for name in ("train", "valid", "test")}


def als_model(matrix: sp.csr_matrix, factors: int = 64) -> Any:
    """implicit's ALS, fitted on ``matrix`` with the settings every benchmark compares against."""
    from implicit.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(factors=factors, regularization=0.05, alpha=10.0, iterations=15, random_state=0)
    model.fit(matrix, show_progress=False)
    return model


def fit_als(matrix: sp.csr_matrix, factors: int = 64) -> tuple[np.ndarray, np.ndarray]:
    model = als_model(matrix, factors)
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
        metrics.update(torch.from_numpy(np.asarray(matrix[batch.users.numpy()] @ weights)), batch)
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


def benchmark(folder: Path, overrides: list[str], variants: list[str], references: bool = True,
              keep: Path | None = None) -> dict[str, dict]:
    splits = read_split(folder)
    matrix, seen, targets = scoring_protocol(splits)
    shape = matrix.shape

    fits: dict[str, Callable[[sp.csr_matrix], tuple[np.ndarray, np.ndarray] | np.ndarray]] = {
        **{f"implicit ALS ({factors} factors)": functools.partial(fit_als, factors=factors) for factors in ALS_FACTORS},
        **{f"PureSVD ({factors} factors)": functools.partial(fit_pure_svd, factors=factors) for factors in SVD_FACTORS},
    } if references else {}
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
            if keep is not None:
                shutil.copytree(run_dir, keep / f"{folder.name}-{variant.replace(' ', '_') or 'defaults'}",
                                dirs_exist_ok=True)
            chosen = {option: record["value"] for option, record in Run.open(run_dir).manifest.chosen.items()}
            results[name] = {metric: metrics[metric] for metric in METRICS} | {
                "fit_seconds": seconds, "epochs": trained.get("final_fit_epochs"), "chosen": chosen}
            print(f"{folder.name} {name}: recall@20 {metrics['recall@20']:.4f}  ndcg@20 {metrics['ndcg@20']:.4f}  "
                  f"{seconds:.1f}s; chosen by the run: {described(chosen)}", flush=True)
            if Run.open(run_dir).manifest.prior:  # the ablation: the same run ranked by its towers alone
                metrics = evaluate_run(run_dir, path=str(test_csv), ks=[20], prior=False)
                results[f"{name[:-1]}, popularity prior off)"] = {metric: metrics[metric] for metric in METRICS} | {
                    "fit_seconds": seconds, "epochs": trained.get("final_fit_epochs")}  # the same run
                print(f"{folder.name} {name[:-1]}, popularity prior off): recall@20 {metrics['recall@20']:.4f}  "
                      f"ndcg@20 {metrics['ndcg@20']:.4f}", flush=True)
    return results


def described(chosen: dict[str, object]) -> str:
    """What a run chose for itself, e.g. ``temperature 0.1, popularity_prior 0.75``."""
    return ", ".join(f"{option.rpartition('.')[2]} {value:g}" if isinstance(value, float) else
                     f"{option.rpartition('.')[2]} {value}" for option, value in chosen.items()) or "-"


def print_table(name: str, results: dict[str, dict]) -> None:
    print(f"\n{name}\n\n| model | Recall@20 | NDCG@20 | fit time (s) | chosen by the run |\n|---|---|---|---|---|")
    for model, r in results.items():
        print(f"| {model} | {r['recall@20']:.4f} | {r['ndcg@20']:.4f} | {r['fit_seconds']:.1f} | "
              f"{described(r.get('chosen', {}))} |")
    for model, (recall, ndcg) in PUBLISHED.get(name, {}).items():
        print(f"| {model} | {recall:.4f} | {ndcg:.4f} | - | - |")
    for model, ratios in against_references(results).items():
        print(f"{model}: {ratios}", flush=True)


def against_references(results: dict[str, dict]) -> dict[str, str]:
    """Each twotower run against the best of ALS and PureSVD, and against EASE where it ran."""
    bars = {"ALS/PureSVD": [r for m, r in results.items() if m.startswith(("implicit ALS", "PureSVD"))],
            "EASE": [r for m, r in results.items() if m.startswith("EASE")]}
    said = {}
    for model, ours in results.items():
        if model.startswith("twotower"):
            said[model] = "; ".join(
                f"x{ours['recall@20'] / max(r['recall@20'] for r in rows):.3f} / "
                f"x{ours['ndcg@20'] / max(r['ndcg@20'] for r in rows):.3f} against {bar}"
                for bar, rows in bars.items() if rows)
    return said


HEADLINE = ["set", "twotower Recall@20 / NDCG@20", "best of ALS and PureSVD", "twotower / it", "EASE",
            "twotower / EASE", "twotower's run (s)"]


def pair(r: dict) -> str:
    return f"{r['recall@20']:.4f} / {r['ndcg@20']:.4f}"


def ratios(ours: dict, reference: dict) -> str:
    return f"x{ours['recall@20'] / reference['recall@20']:.3f} / x{ours['ndcg@20'] / reference['ndcg@20']:.3f}"


def headline_rows(everything: dict[str, dict[str, dict]]) -> list[list]:
    """One row per set: twotower's defaults beside the best Recall@20 and the best NDCG@20 of ALS and PureSVD
    (each metric's best, which may come from two models) and EASE."""
    rows = []
    for name, results in everything.items():
        ours = results.get("twotower (defaults)")
        if ours is None:
            continue
        bar = [r for model, r in results.items() if model.startswith(("implicit ALS", "PureSVD"))]
        best = {metric: max(r[metric] for r in bar) for metric in ("recall@20", "ndcg@20")} if bar else None
        ease = next((r for model, r in results.items() if model.startswith("EASE")), None)
        rows.append([name.removesuffix("-split"), pair(ours), pair(best) if best else "-",
                     ratios(ours, best) if best else "-", pair(ease) if ease else "does not fit in memory",
                     ratios(ours, ease) if ease else "-", round(ours["fit_seconds"], 1)])
    return rows


README = Path(__file__).resolve().parents[1] / "README.md"


def update_readme(rows: list[list], readme: Path = README) -> None:
    """The README's headline table, between its markers, from the same rows as the benchmark page's."""
    text = readme.read_text()
    start, end = text.index("<!-- headline -->") + len("<!-- headline -->"), text.index("<!-- /headline -->")
    readme.write_text(text[:start] + "\n" + markdown(HEADLINE, rows) + "\n" + text[end:])


def docs_tables(everything: dict[str, dict[str, dict]]) -> list[dict]:
    """The headline (twotower against the best references per set), then each set's every model."""
    tables = [table("twotower (defaults) against the references", HEADLINE, headline_rows(everything),
                    "The best Recall@20 and the best NDCG@20 of ALS (64, 128, 256 factors) and PureSVD (32, 64); "
                    "EASE where its item-item matrix fits in memory.")]
    for name, results in everything.items():
        rows = [[model, round(r["recall@20"], 4), round(r["ndcg@20"], 4), round(r["fit_seconds"], 1),
                 described(r.get("chosen", {}))] for model, r in results.items()]
        rows += [[model, recall, ndcg, "-", "-"] for model, (recall, ndcg) in PUBLISHED.get(name, {}).items()]
        tables.append(table(name, ["model", "Recall@20", "NDCG@20", "fit time (s)", "chosen by the run"], rows,
                            "; ".join(f"{model}: {ratios}" for model, ratios in against_references(results).items())))
    return tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, nargs="+", default=[SHARED / name for name in DATASETS])
    parser.add_argument("--variant", action="append", default=[],
                        help='a twotower run beside the defaults, with these overrides (e.g. "model=history")')
    parser.add_argument("--no-references", action="store_true", help="skip ALS, PureSVD and EASE")
    parser.add_argument("--references-from", type=Path, default=None, help="an earlier --raw file's references")
    parser.add_argument("--out", type=Path, default=None, help="write the results for the documentation here")
    parser.add_argument("--raw", type=Path, default=None, help="write every number as plain JSON here")
    parser.add_argument("--keep-runs", type=Path, default=None, help="keep each twotower run directory here")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for twotower (e.g. model.dim=64)")
    args = parser.parse_args()

    earlier = json.loads(args.references_from.read_text()) if args.references_from else {}
    everything = {}
    for folder in args.data:
        fitted = folder.name not in earlier and not args.no_references
        results = benchmark(folder, args.overrides, args.variant, fitted, args.keep_runs)
        reused = {model: r for model, r in earlier.get(folder.name, {}).items() if not model.startswith("twotower")}
        everything[folder.name] = reused | results
        print_table(folder.name, everything[folder.name])
    if args.raw:
        args.raw.write_text(json.dumps(everything, indent=2) + "\n")
    if args.out:
        update_readme(headline_rows(everything))
        write_results(args.out, "Ranking quality on the benchmark splits", docs_tables(everything), description=(
            "Full ranking over all items, each user's train + valid items removed, averaged over users with test "
            "items. Every model learns from train + valid only; EASE's regularisation is chosen on valid from "
            "{50, 200, 500} (skipped where its item-item matrix does not fit in memory). twotower runs as a user "
            "runs it: train + valid as one plain CSV, `twotower-train data=interactions data.path=CSV` with its "
            "defaults (a random split of that file selects the epochs, then the final model trains on all of "
            "it), the exported model scored on test with `twotower-eval path=test.csv`; its time is the whole "
            "`train()` call."))


if __name__ == "__main__":
    main()
