"""Index speed and recall: Annoy at several search_k against the exact backend, side by side in one run.

    python scripts/benchmark_index.py                          # synthetic 100k and 1M items, dim 64
    python scripts/benchmark_index.py --run-dir RUN            # also a trained run (e.g. the ml-1m model)
    python scripts/benchmark_index.py --sizes 100000 --queries 500

Synthetic item vectors are unit vectors around 2,000 random centres plus Gaussian noise of ``--spread``
times the centres' scale (trained embeddings are clustered but not cleanly separated); queries are drawn
the same way. For each catalogue the script reports build time, then for
the exact backend and for Annoy at each search_k: recall@10 against exact search, single-query
throughput (one query per call, median of repeats) and batch throughput (all queries in one call).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from twotower.artifacts import RunPaths, read_manifest

from twotower.embeddings import read_vectors
from twotower.index import AnnoyIndex, ExactIndex, build_index, exact_top


def synthetic(n: int, dim: int, seed: int, spread: float, centres: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    middle = np.random.default_rng(12345).normal(size=(centres, dim))  # shared by items and queries
    vectors = middle[rng.integers(centres, size=n)] + spread * rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def single_query_qps(index: ExactIndex | AnnoyIndex, queries: np.ndarray, k: int, repeats: int = 3) -> float:
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for query in queries:
            index.search(query[None, :], k)
        rates.append(len(queries) / (time.perf_counter() - started))
    return statistics.median(rates)


def batch_qps(index: ExactIndex | AnnoyIndex, queries: np.ndarray, k: int, repeats: int = 3) -> float:
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        index.search(queries, k)
        rates.append(len(queries) / (time.perf_counter() - started))
    return statistics.median(rates)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a, b)) / len(b) for a, b in zip(found, truth, strict=True)]))


def compare(name: str, items: np.ndarray, queries: np.ndarray, score: str, search_ks: list[int], n_trees: int,
            k: int = 10) -> list[dict]:
    print(f"\n## {name}: {len(items):,} items, dim {items.shape[1]}, {len(queries)} queries, score {score}", flush=True)
    truth = exact_top(queries, items, k)[0]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        exact = ExactIndex()
        build_index(exact, items, score, Path(folder) / "exact")
        single_sample = queries[: min(len(queries), 200)]
        exact_single = single_query_qps(exact, single_sample, k)
        rows.append({"index": "exact", "search_k": "-", "recall@10": 1.0, "single_qps": exact_single,
                     "batch_qps": batch_qps(exact, queries, k)})
        annoy = AnnoyIndex(n_trees=n_trees)
        meta = build_index(annoy, items, score, Path(folder) / "annoy")
        print(f"annoy build: {meta['build_seconds']:.1f}s, {n_trees} trees, "
              f"{sum(f['bytes'] for f in meta['files'].values()) / 2**20:.0f} MiB", flush=True)
        for search_k in search_ks:
            annoy.search_k = search_k
            rows.append({"index": "annoy" if search_k < len(items) else "annoy (exact: search_k >= items)",
                         "search_k": search_k, "recall@10": recall(annoy.search(queries, k), truth),
                         "single_qps": single_query_qps(annoy, queries, k), "batch_qps": batch_qps(annoy, queries, k)})
        annoy.search_k = None  # the default: search_k_factor * k * n_trees
        default_k = annoy.search_k_factor * k * n_trees
        rows.append({"index": "annoy (default)" + (" (exact)" if default_k >= len(items) else ""),
                     "search_k": default_k,
                     "recall@10": recall(annoy.search(queries, k), truth),
                     "single_qps": single_query_qps(annoy, queries, k), "batch_qps": batch_qps(annoy, queries, k)})
    print("| index | search_k | recall@10 | single-query q/s | x exact | batch q/s |\n|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['index']} | {row['search_k']} | {row['recall@10']:.3f} | {row['single_qps']:,.0f} | "
              f"{row['single_qps'] / exact_single:.1f} | {row['batch_qps']:,.0f} |", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--search-k", type=int, nargs="*", default=[1_000, 5_000, 20_000, 50_000])
    parser.add_argument("--n-trees", type=int, default=AnnoyIndex().n_trees)
    parser.add_argument("--spread", type=float, default=1.0, help="noise around the centres, relative to them")
    parser.add_argument("--run-dir", type=Path, default=None, help="a trained run: its users query its items")
    args = parser.parse_args()

    if args.run_dir:
        paths = RunPaths(args.run_dir)
        _, users = read_vectors(paths.embeddings("users"))
        _, items = read_vectors(paths.embeddings("items"))
        queries = users[np.random.default_rng(0).choice(len(users), min(args.queries, len(users)), replace=False)]
        compare(f"trained model ({args.run_dir})", items, queries, read_manifest(paths)["score"],
                [k for k in args.search_k if k <= 20 * len(items)], args.n_trees)
    for size in args.sizes:
        items = synthetic(size, args.dim, seed=0, spread=args.spread)
        queries = synthetic(args.queries, args.dim, seed=1, spread=args.spread)
        compare(f"synthetic (spread {args.spread})", items, queries, "cosine", args.search_k, args.n_trees)


if __name__ == "__main__":
    main()
