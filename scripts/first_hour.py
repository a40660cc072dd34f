"""A new user's first hour, scripted: every step through the real commands, each answer checked.

    python scripts/first_hour.py [--keep DIR]

A shop's log with its own column names (and a 0/1 ``clicked`` column) -> twotower-train -> its summary ->
twotower-retrieve for a customer, for a product title, and for a file of customers with unknown ones among
them -> twotower-eval on later interactions -> twotower-serve, whose /metrics a Prometheus text parser reads.
Exits non-zero at the first step that does not do what the documentation says.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import polars as pl
from prometheus_client.parser import text_string_to_metric_families

from twotower.data.synthetic import planted_interactions

BIN = Path(sys.executable).parent


def command(*words: str, cwd: Path) -> subprocess.CompletedProcess:
    print(f"$ {' '.join(words)}", flush=True)
    done = subprocess.run([str(BIN / words[0]), *words[1:]], cwd=cwd, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}):\n{done.stderr}")
    return done


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"failed: {what}")
    print(f"  ok: {what}", flush=True)


def write_shop(folder: Path) -> None:
    """The log (a tenth of the last interactions kept back as 'later'), the products' titles, a file of
    customers with two unknown ones."""
    log = planted_interactions(n_users=400, n_items=150, n_clusters=6, interactions_per_user=15, seed=7)
    rng = np.random.default_rng(7)
    log = log.with_columns(clicked=pl.Series(np.where(rng.random(log.height) < 0.9, 1, 0)))
    log = log.rename({"user_id": "customer", "item_id": "product", "timestamp": "when"}).sort("when")
    cut = int(log.height * 0.9)
    log.head(cut).write_csv(folder / "shop.csv")
    log.tail(log.height - cut).filter(pl.col("clicked") == 1).write_csv(folder / "later.csv")
    pl.DataFrame({"product": np.arange(150), "title": [f"Product {i}" for i in range(150)]}).write_csv(
        folder / "products.csv")
    pl.DataFrame({"customer": [3, 4, 999_001, 5, 999_002]}).write_csv(folder / "customers.csv")


def first_hour(folder: Path) -> None:
    write_shop(folder)
    trained = command("twotower-train", "data=interactions", "data.path=shop.csv", "data.user_col=customer",
                      "data.item_col=product", "data.label_col=clicked", "data.timestamp_col=when",
                      "data.item_info_path=products.csv", "hydra.run.dir=runs/shop", "trainer.max_epochs=15",
                      "trainer.enable_progress_bar=false", cwd=folder)
    summary = trained.stdout
    check("Run finished" in summary and "validation" in summary and "popularity" in summary,
          "the run ends with its metrics beside popularity's")
    check(f"twotower-retrieve run_dir={(folder / 'runs/shop').resolve()} user=ID" in summary,
          "the summary names the next command")
    metrics = json.loads((folder / "runs/shop/metrics/train.json").read_text())
    check(metrics["val/ndcg@20"] > metrics["val/popularity/ndcg@20"], "the model beats popularity on validation")

    one = command("twotower-retrieve", "run_dir=runs/shop", "user=3", "k=5", "output=json", cwd=folder)
    check(len(json.loads(one.stdout)) == 5, "five recommendations for customer 3")
    similar = command("twotower-retrieve", "run_dir=runs/shop", "item=Product 7", "k=3", cwd=folder)
    check("most similar to 'Product 7'" in similar.stdout, "similar products by title")
    command("twotower-retrieve", "run_dir=runs/shop", "users_file=customers.csv", "users_column=customer",
            "unknown=popular", "output_file=recommendations.parquet", cwd=folder)
    table = pl.read_parquet(folder / "recommendations.parquet")
    fallback = table.filter(pl.col("fallback") == "popular")["user_id"].unique().sort().to_list()
    check(table["user_id"].n_unique() == 5 and fallback == [999_001, 999_002],
          "a file of customers: unknown ones get popular products, marked as a fallback")

    evaluated = command("twotower-eval", "run_dir=runs/shop", "path=later.csv", "user_col=customer",
                        "item_col=product", cwd=folder)
    check(json.loads(evaluated.stdout)["users"] > 0, "scored on later interactions")

    port = free_port()
    server = subprocess.Popen([str(BIN / "twotower-serve"), "run_dir=runs/shop", f"port={port}"], cwd=folder,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        for _ in range(600):
            try:
                client.get("/health")
                break
            except httpx.TransportError:
                if server.poll() is not None:
                    raise SystemExit(f"the server exited: {server.stderr.read().decode()}") from None
                time.sleep(0.2)
        check(len(client.get("/recommend", params={"user": 3, "k": 4}).json()) == 4, "the service recommends")
        families = {family.name: family for family in text_string_to_metric_families(client.get("/metrics").text)}
        answered = sum(sample.value for sample in families["twotower_requests"].samples
                       if sample.name.endswith("_total") and sample.labels["endpoint"] == "/recommend")
        check(answered >= 1 and "twotower_request_duration_seconds" in families,
              "/metrics reads as Prometheus text, with the request counted")
    finally:
        server.terminate()
        server.wait(timeout=30)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder (kept) instead of a temporary one")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        first_hour(args.keep)
    else:
        with tempfile.TemporaryDirectory() as folder:
            first_hour(Path(folder))
    print("first hour: every step did what it says")


if __name__ == "__main__":
    main()
