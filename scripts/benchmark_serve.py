"""Serving throughput and latency: twotower-serve under concurrent clients, next to the in-process Python API.

    python scripts/benchmark_serve.py                          # 100k items, 8 s per measurement
    python scripts/benchmark_serve.py --items 200000 --seconds 5 --clients 1,8

Writes a synthetic run (clustered unit vectors, ``twotower.training.vector_run.write_vector_run``) with its Annoy index
into a temporary folder, measures ``Retriever.recommend`` in this process (one user per call, then batches),
starts ``twotower-serve`` on a free loopback port, and drives ``GET /recommend`` (one user) and
``POST /recommend`` (a batch of users) from client threads, each on its own keep-alive connection. Every
measurement is bounded by ``--seconds``; non-200 answers are counted and must be zero. The clients run on
the same machine as the server, so on a small one they take part of its CPU.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from results import table, write_results

from twotower.index import AnnoyIndex
from twotower.serving.catalogue import rebuild_index
from twotower.serving.retrieval import Retriever
from twotower.training.vector_run import write_vector_run


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def in_process(retriever: Retriever, users: list[str], batch: int, k: int, seconds: float) -> float:
    """Users answered per second by ``Retriever.recommend`` on one thread, ``batch`` users per call."""
    done, calls, started = 0, 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        chunk = users[(calls * batch) % len(users):][:batch]
        retriever.recommend(chunk if batch > 1 else chunk[0], k=k)
        done += len(chunk)
        calls += 1
    return done / (time.perf_counter() - started)


class Load:
    """``clients`` threads sending requests for ``seconds``; latencies of the answered ones, and failures."""

    def __init__(self, port: int, clients: int, request: Callable[[int], tuple[str, str, bytes | None]]) -> None:
        self.port, self.clients, self.request = port, clients, request
        self.latencies: list[float] = []
        self.failures = 0
        self.lock = threading.Lock()

    def run(self, seconds: float) -> float:
        deadline = time.perf_counter() + seconds
        threads = [threading.Thread(target=self._client, args=(seed, deadline)) for seed in range(self.clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - started

    def _client(self, seed: int, deadline: float) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        latencies, failures, count = [], 0, seed * 7919
        while time.perf_counter() < deadline:
            method, path, body = self.request(count)
            count += 1
            sent = time.perf_counter()
            connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                latencies.append(time.perf_counter() - sent)
            else:
                failures += 1
        connection.close()
        with self.lock:
            self.latencies += latencies
            self.failures += failures


def start_server(run_dir: Path, port: int, log: Path) -> subprocess.Popen:
    with log.open("w") as sink:
        server = subprocess.Popen([sys.executable, "-m", "twotower.commands.serve", f"run_dir={run_dir}",
                                   f"port={port}", f"limits.max_batch={1000}"], stdout=sink, stderr=sink,
                                  env={k: v for k, v in os.environ.items() if k != "TWOTOWER_ADMIN_TOKEN"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit(f"the server did not start in time:\n{log.read_text()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32, help="users per batched request")
    parser.add_argument("--clients", default="1,4", help="client threads to try, comma-separated")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each measurement")
    parser.add_argument("--out", type=Path, default=None, help="write the results for the documentation here")
    args = parser.parse_args()
    clients = [int(value) for value in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        run_dir = write_vector_run(Path(folder) / "run", AnnoyIndex(build_threads=-1), n_users=args.users,
                                   n_items=args.items, dim=args.dim)
        report = rebuild_index(run_dir, AnnoyIndex(build_threads=-1), recall_queries=300)  # tuned to its target
        retriever = Retriever.load(run_dir)
        print(f"run: {args.items:,} items, {args.users:,} users, dim {args.dim}, Annoy recall@10 "
              f"{report['recall@10_vs_exact']} (written and indexed in {time.perf_counter() - started:.0f} s); "
              f"{os.cpu_count()} CPU cores\n")
        users = list(np.random.default_rng(0).permutation(retriever.run.user_vocab.ids.to_list()))
        reference = {1: in_process(retriever, users, 1, args.k, args.seconds / 2),
                     args.batch: in_process(retriever, users, args.batch, args.k, args.seconds / 2)}
        del retriever  # the server loads its own
        port = free_port()
        server = start_server(run_dir, port, Path(folder) / "server.log")
        try:
            rows = measure(port, users, clients, args, reference)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print("| mode | clients | requests/s | users/s | p50 ms | p99 ms | failed | in-process users/s (1 thread) "
          "| HTTP / in-process |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print("| {mode} | {clients} | {rps:,.0f} | {ups:,.0f} | {p50:.1f} | {p99:.1f} | {failed} | {ref:,.0f} "
              "| {ratio:.2f} |".format(**row))
    if args.out:
        write_results(args.out, "Serving throughput", [table(
            f"{args.items:,} items, {args.users:,} users, dim {args.dim}, k {args.k}: twotower-serve over HTTP",
            ["mode", "clients", "requests/s", "users/s", "p50 ms", "p99 ms", "failed", "in-process users/s",
             "HTTP / in-process"],
            [[row["mode"], row["clients"], round(row["rps"]), round(row["ups"]), round(row["p50"], 1),
              round(row["p99"], 1), row["failed"], round(row["ref"]), round(row["ratio"], 2)] for row in rows])],
            description="A server on loopback answering client threads for a fixed time each, against the same "
            "queries answered in process by one thread.")


def measure(port: int, users: list[str], clients: list[int], args: argparse.Namespace,
            reference: dict[int, float]) -> list[dict]:
    def single(count: int) -> tuple[str, str, None]:
        return "GET", f"/recommend?user={users[count % len(users)]}&k={args.k}", None

    def batched(count: int) -> tuple[str, str, bytes]:
        chunk = [users[(count * args.batch + i) % len(users)] for i in range(args.batch)]
        return "POST", "/recommend", json.dumps({"users": chunk, "k": args.k}).encode()

    rows = []
    for mode, request, per_request in (("GET /recommend (1 user)", single, 1),
                                       (f"POST /recommend ({args.batch} users)", batched, args.batch)):
        for count in clients:
            Load(port, count, request).run(1.0)  # warm-up: connections, first pages of the index
            load = Load(port, count, request)
            elapsed = load.run(args.seconds)
            latencies = np.array(load.latencies) * 1000
            rps = len(latencies) / elapsed
            rows.append({"mode": mode, "clients": count, "rps": rps, "ups": rps * per_request,
                         "p50": float(np.percentile(latencies, 50)), "p99": float(np.percentile(latencies, 99)),
                         "failed": load.failures, "ref": reference[per_request],
                         "ratio": rps * per_request / reference[per_request]})
    return rows


if __name__ == "__main__":
    main()
