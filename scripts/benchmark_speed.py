"""Time to quality: the default configuration end to end on logs of several sizes, and on ml-1m the
Recall@20 the default model reaches against its training seconds, beside implicit's ALS fitted in the same
process.

    python scripts/benchmark_speed.py [--out docs/benchmarks/speed.json] [--plot docs/time-to-quality.png]
                                      [--datasets ml-1m lastfm sports beauty synthetic-gowalla-size ...]
                                      [--no-curve] [hydra overrides for every twotower run]

- **Whole command**: ``twotower-train data=interactions data.path=FILE`` with its defaults, run as a user runs
  it (a fresh process), on a plain file: train + valid of each shared split as CSV, and synthetic logs
  (``twotower.data.synthetic``: 1M and 10M logs with 50 interactions per user and as many items as users, and one
  of Gowalla's size) as Parquet. It prints the wall time of the command, of selection (training with its
  validation passes) and of the final fit, from ``run.json``'s ``seconds``, and the cost of one epoch (the
  final fit's seconds per epoch: no validation).
  ``synthetic-10m`` and its 1M twin (``synthetic-1m-1epoch``) run one epoch each, with validation on 1,000
  users and no test pass: they measure how an epoch's cost grows with the log.
- **Time to ALS's recall** (ml-1m): ALS is fitted on train + valid and scored on test; then the default model
  trains on the same interactions while a callback scores it on test every ``--every`` steps, with the clock
  stopped while it does. The curve is saved as a PNG.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import polars as pl
import torch
from benchmark_quality import SHARED, fit_als, read_split, scoring_protocol, write_csv
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from results import markdown, table, write_results

from twotower.data.synthetic import planted_interactions
from twotower.run import Run
from twotower.training.build import batch_plan, build_datamodule, build_model, sizing
from twotower.training.evaluation import evaluate_vectors

SHARED_SETS = {"ml-1m": "ml-1m-split", "lastfm": "lastfm-split", "sports": "amazon-sports-split",
               "beauty": "amazon-beauty-split"}
# (users, items, interactions per user): 1M and 10M logs, and one of Gowalla's size (810k interactions, 29,858
# users, 40,981 items).
SYNTHETIC = {"synthetic-1m": (20_000, 20_000, 50), "synthetic-1m-1epoch": (20_000, 20_000, 50),
             "synthetic-10m": (200_000, 200_000, 50), "synthetic-gowalla-size": (29_858, 40_981, 27)}
ONE_EPOCH = ["trainer.max_epochs=1", "datamodule.val_users=1000", "test=false"]


def log_file(name: str, scratch: Path) -> Path:
    """The dataset as a user would hand it over: a CSV of a split's train + valid, or a synthetic Parquet."""
    if name in SHARED_SETS:
        splits = read_split(SHARED / SHARED_SETS[name])
        return write_csv([splits["train"], splits["valid"]], scratch / f"{name}.csv")
    path = scratch / f"synthetic-{'-'.join(map(str, SYNTHETIC[name]))}.parquet"
    if not path.exists():
        synthetic_log(name).write_parquet(path)
    return path


def synthetic_log(name: str) -> pl.DataFrame:
    """One of the ``SYNTHETIC`` logs (planted groups, skewed item popularity), the same in every script."""
    users, items, per_user = SYNTHETIC[name]
    return planted_interactions(n_users=users, n_items=items, n_clusters=200, interactions_per_user=per_user,
                                popularity_exponent=0.8, seed=0)


def whole_command(name: str, scratch: Path, overrides: list[str]) -> dict:
    path = log_file(name, scratch)
    frame = pl.scan_csv(path) if path.suffix == ".csv" else pl.scan_parquet(path)
    size = frame.select(pl.len(), pl.col("user_id").n_unique(), pl.col("item_id").n_unique()).collect().row(0)
    run_dir = scratch / f"run-{name}"
    command = [str(Path(sys.executable).parent / "twotower-train"), "data=interactions", f"data.path={path}",
               f"hydra.run.dir={run_dir}", "show_similar_to=null", "trainer.enable_progress_bar=false",
               *(ONE_EPOCH if name in ("synthetic-10m", "synthetic-1m-1epoch") else []), *overrides]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    manifest = Run.open(run_dir).manifest
    seconds, metrics = manifest.seconds, manifest.metrics
    epochs = int(metrics.get("final_fit_epochs", metrics.get("selected_epochs", 1)))
    result = {"interactions": size[0], "users": size[1], "items": size[2], "command_seconds": wall,
              "selection_seconds": seconds["selection"], "final_fit_seconds": seconds.get("final_fit", 0.0),
              "selected_epochs": int(metrics.get("selected_epochs", 0)), "epochs": epochs,
              "epoch_seconds": seconds.get("final_fit", seconds["selection"]) / max(epochs, 1), "phases": seconds}
    print(f"{name}: {wall:.1f}s whole command, selection {result['selection_seconds']:.1f}s, final fit "
          f"{result['final_fit_seconds']:.1f}s ({epochs} epochs, {result['epoch_seconds']:.2f}s each)", flush=True)
    return result


class TestRecallCurve(L.Callback):
    """Scores the model on the test split every ``every`` steps; the clock stops while it does."""

    def __init__(self, every: int, score) -> None:
        self.every = every
        self.score = score
        self.points: list[dict] = []

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.elapsed, self.resumed = 0.0, time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args) -> None:
        if trainer.global_step % self.every == 0:
            self.elapsed += time.perf_counter() - self.resumed
            self.points.append({"seconds": self.elapsed, "step": trainer.global_step, **self.score(module)})
            self.resumed = time.perf_counter()


def time_to_als(scratch: Path, every: int) -> dict:
    matrix, seen, targets = scoring_protocol(read_split(SHARED / SHARED_SETS["ml-1m"]))
    shape = matrix.shape
    started = time.perf_counter()
    als = fit_als(matrix)
    als_seconds = time.perf_counter() - started
    als_metrics = evaluate_vectors(*als, seen, targets, ks=[20])

    with initialize_config_module(config_module="twotower.conf", version_base="1.3"):
        cfg = compose("train", overrides=["data=interactions", f"data.path={log_file('ml-1m', scratch)}",
                                          f"run_dir={scratch / 'curve'}", "trainer.enable_progress_bar=false"])
    L.seed_everything(cfg.seed, verbose=False)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    datamodule.fit_on(datamodule.final_fit_splits)  # every interaction of the file, as the final model
    cfg.model.dim = sizing(cfg, datamodule).resolve(cfg.model.dim)
    datamodule.use(batch_plan(cfg, datamodule))
    model = build_model(cfg, datamodule)
    # The model's rows follow its vocabularies; the benchmark's ids index the references' rows.
    user_rows = datamodule.user_vocab.lookup(np.arange(shape[0]), missing=-1)
    item_rows = datamodule.item_vocab.lookup(np.arange(shape[1]), missing=-1)

    def score(module: L.LightningModule) -> dict:
        with torch.no_grad():
            users, items = module.all_user_vectors().numpy(), module.all_item_vectors().numpy()
        users = np.where(user_rows[:, None] >= 0, users[user_rows], 0.0).astype(np.float32)
        items = np.where(item_rows[:, None] >= 0, items[item_rows], 0.0).astype(np.float32)  # never test targets
        metrics = evaluate_vectors(users, items, seen, targets, ks=[20])
        return {"recall@20": metrics["recall@20"], "ndcg@20": metrics["ndcg@20"]}

    curve = TestRecallCurve(every, score)
    trainer = instantiate(cfg.trainer, limit_val_batches=0, callbacks=[curve], logger=False,
                          enable_checkpointing=False)
    trainer.fit(model, datamodule=datamodule)
    reached = next((point["seconds"] for point in curve.points if point["recall@20"] >= als_metrics["recall@20"]),
                   None)
    result = {"als": {"recall@20": als_metrics["recall@20"], "ndcg@20": als_metrics["ndcg@20"],
                      "fit_seconds": als_seconds},
              "twotower_curve": curve.points, "seconds_to_als_recall": reached}
    ratio = f"{reached / als_seconds:.1f}x ALS's fit time" if reached is not None else "never reached"
    print(f"ml-1m: ALS recall@20 {als_metrics['recall@20']:.4f} in {als_seconds:.1f}s; twotower reaches it after "
          f"{reached if reached is None else round(reached, 1)}s of training ({ratio}); "
          f"best {max(p['recall@20'] for p in curve.points):.4f}", flush=True)
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, als = result["twotower_curve"], result["als"]
    figure, axes = plt.subplots(figsize=(7, 4.2))
    axes.plot([p["seconds"] for p in points], [p["recall@20"] for p in points], marker=".", label="twotower (defaults)")
    axes.axhline(als["recall@20"], color="grey", linestyle="--", label=f"implicit ALS ({als['fit_seconds']:.1f}s fit)")
    axes.axvline(10 * als["fit_seconds"], color="grey", linestyle=":", label="10x ALS's fit time")
    axes.set_xlabel("training seconds (2 CPU cores; evaluation excluded)")
    axes.set_ylabel("Recall@20 on the ml-1m test split")
    axes.set_ylim(bottom=max(0.0, min(p["recall@20"] for p in points) - 0.02))
    axes.legend(loc="lower right")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=[*SHARED_SETS, *SYNTHETIC],
                        choices=[*SHARED_SETS, *SYNTHETIC])
    parser.add_argument("--every", type=int, default=4, help="training steps between points of the curve")
    parser.add_argument("--plot", type=Path, default=Path("docs/time-to-quality.png"))
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--no-curve", action="store_true", help="skip the ml-1m time-to-ALS curve")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for twotower (e.g. model=sparse)")
    args = parser.parse_args()

    results: dict = {}
    with tempfile.TemporaryDirectory() as scratch:
        if not args.no_curve:
            results["time_to_als"] = time_to_als(Path(scratch), args.every)
            plot(results["time_to_als"], args.plot)
        for name in args.datasets:
            results[name] = whole_command(name, Path(scratch), args.overrides)

    columns = ["log", "interactions", "users", "items", "whole command (s)", "selection (s)", "selected epochs",
               "final fit (s)", "final-fit epochs", "s per epoch"]
    rows = [[name, r["interactions"], r["users"], r["items"], round(r["command_seconds"], 1),
             round(r["selection_seconds"], 1), r["selected_epochs"], round(r["final_fit_seconds"], 1), r["epochs"],
             round(r["epoch_seconds"], 2)] for name, r in ((name, results[name]) for name in args.datasets)]
    print("\n" + markdown(columns, rows))
    if {"synthetic-10m", "synthetic-1m-1epoch"} <= set(results):
        ratio = results["synthetic-10m"]["epoch_seconds"] / results["synthetic-1m-1epoch"]["epoch_seconds"]
        print(f"\nan epoch at 10M costs {ratio:.1f}x an epoch at 1M")
    if args.out:
        tables = [table("The default command, end to end", columns, rows)]
        if "time_to_als" in results:
            curve, als = results["time_to_als"]["twotower_curve"], results["time_to_als"]["als"]
            reached = next((p["seconds"] for p in curve if p["recall@20"] >= als["recall@20"]), None)
            tables.append(table("Time to ALS's Recall@20 on ml-1m (training seconds, evaluation excluded)",
                                ["model", "fit (s)", "Recall@20 at the end", "seconds to ALS's Recall@20"],
                                [["implicit ALS, 64 factors", round(als["fit_seconds"], 1), round(als["recall@20"], 4),
                                  None],
                                 ["twotower (defaults)", round(curve[-1]["seconds"], 1),
                                  round(curve[-1]["recall@20"], 4), None if reached is None else round(reached, 1)]]))
        write_results(args.out, "Time to quality", tables, description=(
            "The default `twotower-train data=interactions data.path=FILE` as a user runs it (a fresh process, a "
            "plain file): train + valid of each shared split as CSV, a synthetic log of Gowalla's size as "
            "Parquet. Selection is training with a validation pass per epoch; an epoch's cost is the final "
            "fit's seconds per epoch."))


if __name__ == "__main__":
    main()
