"""Index speed and recall on real vectors: exact search, Annoy at the budget its build tuned to the target
recall, and the HNSW graph at the same recall, side by side in one process. Where Annoy's build chose exact
search (its trees met the target more slowly than exact search), Annoy is measured again without that
fallback, and the graph is tuned to the recall those trees reached.

    python scripts/benchmark_index.py --run-dir RUN [RUN ...] [--synthetic 1000000] [--out docs/benchmarks/index.json]

For a trained run, its users are the queries, each with its seen items left out (the task retrieval serves):
the builds tune on one seeded sample of users, and recall@10 against exact search is then measured on
another (``--queries`` users). Synthetic catalogues are unit vectors around 2,000 random centres plus noise
(``--spread``), queried by vectors drawn the same way, nothing left out. Throughput: single queries (one per
call, as the service answers a user per request; after an untimed pass, the median of 5 passes over 200
queries) and a batch (all queries in one call; the median of 3). Build time includes the tuning; memory is
the growth of the process's resident set while the index is built, loaded and searched; size is on disk.
``--faiss`` adds faiss's HNSW at the same recall (what the graph backend was chosen against;
``pip install faiss-cpu``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from results import DOCS_RESULTS, table, write_results

from twotower.index import AnnoyIndex, Backend, ExactIndex, HnswIndex, Probe, build_index, search_excluding
from twotower.run import Run


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def synthetic(n: int, dim: int, seed: int, spread: float, centres: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    middle = np.random.default_rng(12345).normal(size=(centres, dim))  # shared by items and queries
    vectors = middle[rng.integers(centres, size=n)] + spread * rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def recall(index: Backend, items: np.ndarray, probe: Probe, truth: list[np.ndarray]) -> float:
    found = [rows for rows, _ in search_excluding(index, items, probe.queries, 10, probe.exclude)]
    return float(np.mean([len(np.intersect1d(a, b)) / max(len(b), 1) for a, b in zip(found, truth, strict=True)]))


def throughput(index: Backend, items: np.ndarray, probe: Probe) -> tuple[float, float]:
    """Single-query and batch queries per second of the seen-filtered top 10: the median of several passes
    after an untimed one, so that a cold cache or a moment of a shared machine's contention does not decide."""
    def singles() -> float:
        started = time.perf_counter()
        for query, excluded in zip(probe.queries[:200], probe.exclude[:200], strict=False):
            search_excluding(index, items, query[None], 10, [excluded])
        return min(200, len(probe.queries)) / (time.perf_counter() - started)

    def batch() -> float:
        started = time.perf_counter()
        search_excluding(index, items, probe.queries, 10, probe.exclude)
        return len(probe.queries) / (time.perf_counter() - started)

    singles()
    return statistics.median(singles() for _ in range(5)), statistics.median(batch() for _ in range(3))


def measure(name: str, make: Callable[[], Backend], items: np.ndarray, score: str, tuning: Probe, probe: Probe,
            truth: list[np.ndarray], folder: Path) -> dict:
    before = resident_bytes()
    index = make()
    index, meta = build_index(index, items, score, folder / name, probe=tuning)
    single, batch = throughput(index, items, probe)
    row = {"index": name, "setting": index.describe(), "recall@10": recall(index, items, probe, truth),
           "single_qps": single, "batch_qps": batch, "build_s": meta["build_seconds"],
           "memory_mib": (resident_bytes() - before) / 2**20,
           "disk_mib": sum(f["bytes"] for f in meta["files"].values()) / 2**20}
    print(f"  {name}: {row['setting']}, recall@10 {row['recall@10']:.3f}, {single:,.0f} single q/s, "
          f"{batch:,.0f} batch q/s, built in {row['build_s']:.1f} s", flush=True)
    return row


def faiss_hnsw(items: np.ndarray, probe: Probe, truth: list[np.ndarray], target: float) -> dict | None:
    """faiss's HNSW (inner product on the same vectors), its efSearch raised until it reaches ``target``."""
    try:
        import faiss
    except ImportError:
        return None
    started = time.perf_counter()
    graph = faiss.IndexHNSWFlat(items.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = 200
    graph.add(items)
    build = time.perf_counter() - started

    class Faiss:
        exact = False

        def search(self, queries: np.ndarray, n: int) -> np.ndarray:
            return graph.search(np.ascontiguousarray(queries), n)[1]

    index = Faiss()
    for ef in (16, 32, 64, 128, 256, 512, 1024):
        graph.hnsw.efSearch = ef
        found = recall(index, items, probe, truth)
        if found >= target:
            break
    single, batch = throughput(index, items, probe)
    return {"index": "faiss HNSW", "setting": f"M 16, efSearch {ef}", "recall@10": found, "single_qps": single,
            "batch_qps": batch, "build_s": build, "memory_mib": None, "disk_mib": None}


def compare(title: str, items: np.ndarray, score: str, tuning: Probe, probe: Probe, use_faiss: bool) -> dict:
    print(f"\n## {title}: {len(items):,} items, dim {items.shape[1]}, {len(probe.queries)} queries", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        exact = ExactIndex()
        exact.load(items, {}, Path(scratch))
        truth = [rows for rows, _ in search_excluding(exact, items, probe.queries, 10, probe.exclude)]
        rows = [measure("exact", ExactIndex, items, score, tuning, probe, truth, Path(scratch)),
                measure("annoy", AnnoyIndex, items, score, tuning, probe, truth, Path(scratch))]
        annoy = rows[-1]
        if annoy["setting"] == "exact search":  # served exactly: Annoy's own best, for the comparison below
            annoy = measure("annoy, no exact fallback", lambda: AnnoyIndex(exact_when_faster=False), items, score,
                            tuning, probe, truth, Path(scratch))
            rows.append(annoy)
        # The graph tuned to the recall Annoy's trees reached, so that their throughputs compare at equal recall.
        target = min(1.0, max(0.95, round(annoy["recall@10"], 3)))
        rows.append(measure("hnsw", lambda: HnswIndex(target_recall=target), items, score, tuning, probe, truth,
                            Path(scratch)))
        if use_faiss and (found := faiss_hnsw(items, probe, truth, rows[-1]["recall@10"])):
            rows.append(found)
    exact_single = rows[0]["single_qps"]
    return table(f"{title} ({len(items):,} items, dim {items.shape[1]}, {score})",
                 ["index", "setting", "recall@10", "single q/s", "x exact", "batch q/s", "build (s)", "memory (MiB)",
                  "disk (MiB)"],
                 [[row["index"], row["setting"], round(row["recall@10"], 4), round(row["single_qps"]),
                   round(row["single_qps"] / exact_single, 2), round(row["batch_qps"]), round(row["build_s"], 1),
                   None if row["memory_mib"] is None else round(row["memory_mib"]),
                   None if row["disk_mib"] is None else round(row["disk_mib"], 1)] for row in rows])


def run_probes(run: Run, n: int) -> tuple[Probe, Probe]:
    """A tuning sample and a disjoint measuring sample of the run's users, each with their seen items."""
    users, seen = run.user_vectors, run.seen
    order = np.random.default_rng(0).permutation(len(users))
    tuning, measured = order[:n], order[n:2 * n]
    return (Probe(users[tuning], [seen.row(row) for row in tuning]),
            Probe(users[measured], [seen.row(row) for row in measured]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, nargs="*", default=[], help="trained runs: users query items")
    parser.add_argument("--synthetic", type=int, nargs="*", default=[1_000_000], help="synthetic catalogue sizes")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--spread", type=float, default=0.7)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--faiss", action="store_true", help="also faiss's HNSW at the same recall")
    parser.add_argument("--out", type=Path, default=DOCS_RESULTS / "index.json")
    args = parser.parse_args()

    tables = []
    for run_dir in args.run_dir:
        run = Run.open(run_dir)
        tuning, probe = run_probes(run, args.queries)
        tables.append(compare(f"trained run {run_dir.name}", run.item_vectors, run.manifest.index_score, tuning,
                              probe, args.faiss))
    for size in args.synthetic:
        items = synthetic(size, args.dim, seed=0, spread=args.spread)
        nothing = [np.empty(0, dtype=np.int64)] * args.queries
        tuning = Probe(synthetic(args.queries, args.dim, seed=1, spread=args.spread), nothing)
        probe = Probe(synthetic(args.queries, args.dim, seed=2, spread=args.spread), nothing)
        tables.append(compare("synthetic clusters", items, "cosine", tuning, probe, args.faiss))
    write_results(args.out, "Index speed and recall", tables, description=(
        "Recall@10 against exact search, each user's seen items left out; the approximate indexes tuned at build "
        "(`index.target_recall`, 0.95) on one sample of users and measured on another; the graph tuned to the "
        "recall the forest reached. Single-query throughput is one query per call (as the service answers a "
        "request); batch is every query in one call."))


if __name__ == "__main__":
    main()
