"""What the service measures: requests, errors and latency per endpoint, and the run being served.

``/metrics`` gives them in the Prometheus text format (counters, a latency histogram, the run's gauges and
its swap counters), for a monitoring stack to scrape; ``/metrics/json`` gives the same requests as counts
and latency quantiles over the last ``window`` requests of each endpoint, with the run, for a person.
Only the event loop's thread records and reads the windows, so they need no lock.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterator
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client import Counter as PrometheusCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from twotower.serving.service.state import Served

# Seconds; a retrieval answer takes about a millisecond, a large batch or a swap's first request far more.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestMetrics:
    """Every answered request, by endpoint (an unknown path counts as ``other``, so it cannot grow the table)."""

    def __init__(self, served: Served, window: int = 10_000) -> None:
        self.paths: set[str] = set()  # the app's routes, once they are all there
        self.started = time.time()
        self.window = window
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.server_errors: Counter[str] = Counter()
        self.latencies: dict[str, deque[float]] = {}
        self.registry = CollectorRegistry()
        self._answered = PrometheusCounter("twotower_requests", "HTTP requests answered, by endpoint and status",
                                           ["endpoint", "status"], registry=self.registry)
        self._latency = Histogram("twotower_request_duration_seconds", "Time to answer a request, by endpoint",
                                  ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(ServedCollector(served))

    def record(self, path: str, status: int, seconds: float) -> None:
        path = path if path in self.paths else "other"
        self.requests[path] += 1
        self.errors[path] += status >= 400
        self.server_errors[path] += status >= 500
        self.latencies.setdefault(path, deque(maxlen=self.window)).append(seconds * 1000)
        self._answered.labels(endpoint=path, status=str(status)).inc()
        self._latency.labels(endpoint=path).observe(seconds)

    def prometheus(self) -> bytes:
        return generate_latest(self.registry)

    def snapshot(self) -> dict[str, Any]:
        def quantiles(values: list[float]) -> dict[str, float | None]:
            if not values:
                return {"p50_ms": None, "p90_ms": None, "p99_ms": None}
            p50, p90, p99 = np.percentile(values, [50, 90, 99])
            return {"p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3), "p99_ms": round(float(p99), 3)}

        every = [value for window in self.latencies.values() for value in window]
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "requests": sum(self.requests.values()),
            "errors": sum(self.errors.values()),
            "server_errors": sum(self.server_errors.values()),
            "latency": quantiles(every),
            "endpoints": {path: {"requests": self.requests[path], "errors": self.errors[path],
                                 **quantiles(list(self.latencies[path]))} for path in sorted(self.requests)},
        }


class ServedCollector(Collector):
    """The served run's gauges and the swap counters, read at each scrape."""

    def __init__(self, served: Served) -> None:
        self.served = served

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        current = self.served.current
        about = current.retriever.about()
        gauge = GaugeMetricFamily
        yield gauge("twotower_items", "Items the served run was trained on", about["items"])
        yield gauge("twotower_users", "Users the served run knows", about["users"])
        yield gauge("twotower_added_items", "Items added to the served catalogue since loading", about["added_items"])
        yield gauge("twotower_removed_items", "Run items taken out of the served catalogue", about["removed_items"])
        yield gauge("twotower_loaded_timestamp_seconds", "When the served run was loaded", current.loaded_at)
        yield gauge("twotower_load_duration_seconds", "How long the served run took to load", current.load_seconds)
        if current.index_recall is not None:
            yield gauge("twotower_index_recall", "Recall@10 of the index against exact search, measured at build",
                        current.index_recall)
        yield CounterMetricFamily("twotower_swaps", "Runs put in service by a reload", self.served.swaps)
        yield CounterMetricFamily("twotower_failed_swaps", "Reloads refused, the old run still serving",
                                  self.served.failed_swaps)
