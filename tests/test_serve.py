"""twotower-serve over real HTTP: the server runs as a subprocess on a free local port, on runs written with
the library's own writers (no training), and every answer is checked against the in-process Python API."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest
from hydra import compose, initialize_config_module
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import train_feature_run
from twotower.index import AnnoyIndex, ExactIndex
from twotower.serving.catalogue import rebuild_index
from twotower.serving.retrieval import Retriever
from twotower.serving.service.settings import Limits, ServeSettings
from twotower.training.vector_run import write_vector_run

TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
B_OFFSET = 1_000_000  # run B's item ids start here, so an answer tells which run gave it


@pytest.fixture(scope="module")
def run_a(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12,000 titled items: beyond the default search budget, so queries go through the Annoy trees."""
    return write_vector_run(tmp_path_factory.mktemp("serve") / "a", AnnoyIndex(), n_users=60, n_items=12_000,
                            titles=True)


@pytest.fixture(scope="module")
def run_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same user ids, other items (ids from ``B_OFFSET``), other vectors: the run to swap to."""
    return write_vector_run(tmp_path_factory.mktemp("serve") / "b", ExactIndex(), n_users=60, n_items=3000,
                            seed=1, item_id_offset=B_OFFSET)


@pytest.fixture(scope="module")
def api(run_a: Path) -> Retriever:
    return Retriever.load(run_a)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """``python -m twotower.commands.serve`` on a free port, with its log in a file (a full pipe would stall it)."""

    def __init__(self, run_dir: Path, log: Path, *overrides: str, token: str | None = TOKEN) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {key: value for key, value in os.environ.items() if key != "TWOTOWER_ADMIN_TOKEN"}
        if token is not None:
            env["TWOTOWER_ADMIN_TOKEN"] = token
        with log.open("w") as sink:
            self.process = subprocess.Popen([sys.executable, "-m", "twotower.commands.serve", f"run_dir={run_dir}",
                                             f"port={self.port}", *overrides], stdout=sink, stderr=sink, env=env)
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def wait_ready(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if self.client.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError(f"the server was not ready in {seconds} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def start(tmp_path: Path) -> Iterator:
    """Starts servers and stops every one of them, whatever the test did."""
    servers: list[Server] = []

    def starting(run_dir: Path, *overrides: str, token: str | None = TOKEN) -> Server:
        servers.append(Server(run_dir, tmp_path / f"server-{len(servers)}.log", *overrides, token=token))
        servers[-1].wait_ready()
        return servers[-1]

    yield starting
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def server(run_a: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server on run A for the read-only checks (small limits, so that the limits can be tested)."""
    started = Server(run_a, tmp_path_factory.mktemp("logs") / "server.log", "limits.max_k=50",
                     "limits.max_batch=20", "limits.max_ids=100", "limits.max_body_bytes=20000")
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()


def rows(retriever: Retriever, result: tuple) -> list[dict]:
    return result.records()


def test_python_defaults_equal_the_yaml() -> None:
    with initialize_config_module(config_module="twotower.conf", version_base="1.3"):
        cfg = compose("serve", overrides=["run_dir=x"])
    defaults = ServeSettings(run_dir="x")
    for name in ("host", "port", "workers", "index", "log_level", "access_log"):
        assert cfg.get(name) == getattr(defaults, name), name
    assert dict(cfg.limits) == Limits().__dict__
    assert defaults.admin_token is None and "TWOTOWER_ADMIN_TOKEN" in str(cfg._get_node("admin_token"))


def test_recommend_answers_as_the_python_api(server: Server, api: Retriever) -> None:
    users = api.run.user_vocab.ids.to_list()[:8]
    for user in users:
        answer = server.client.get("/recommend", params={"user": user, "k": 10})
        assert answer.status_code == 200 and answer.json() == rows(api, api.recommend(user, k=10))
    user = users[0]
    top, _ = api.recommend(user, k=5)
    pool = api.run.item_vocab.ids.to_list()[:40]
    for params, expected in [
        ({"exclude_seen": "false"}, api.recommend(user, k=5, exclude_seen=False)),
        ({"deny": [str(i) for i in top[:2]]}, api.recommend(user, k=5, deny=top[:2].tolist())),
        ({"allow": pool}, api.recommend(user, k=5, allow=pool)),
    ]:
        assert server.client.get("/recommend", params={"user": user, "k": 5, **params}).json() == rows(api, expected)
    popular = server.client.get("/recommend", params={"user": "newcomer", "k": 5, "unknown": "popular"})
    assert popular.json() == rows(api, api.recommend("newcomer", k=5, unknown="popular"))
    batch = server.client.post("/recommend", json={"users": users, "k": 7, "deny": top[:2].tolist()})
    expected = api.recommend(users, k=7, deny=top[:2].tolist())
    assert batch.status_code == 200
    assert batch.json() == {"results": [{"user": user, "items": rows(api, result)}
                                        for user, result in zip(users, expected, strict=True)]}


def test_similar_answers_as_the_python_api(server: Server, api: Retriever) -> None:
    items = api.run.item_vocab.ids.to_list()[:5]
    for item in items:
        assert server.client.get("/similar", params={"item": item, "k": 10}).json() == \
            rows(api, api.similar_items(item, k=10))
    title = f"Item {items[1]}"
    assert server.client.get("/similar", params={"item": title, "k": 4}).json() == \
        rows(api, api.similar_items(title, k=4))
    batch = server.client.post("/similar", json={"items": [items[0], title], "k": 3, "deny": items[2:]})
    expected = api.similar_items([items[0], title], k=3, deny=items[2:])
    assert batch.json() == {"results": [{"item": item, "items": rows(api, result)}
                                        for item, result in zip([items[0], title], expected, strict=True)]}


def test_health_ready_and_metrics(server: Server, run_a: Path) -> None:
    assert server.client.get("/health").json() == {"status": "ok"}
    assert server.client.get("/ready").json() == {"ready": True, "run_dir": str(run_a), "items": 12_000,
                                                  "users": 60}
    metrics = server.client.get("/metrics/json").json()
    assert metrics["requests"] >= 1 and metrics["endpoints"]["/recommend"]["requests"] >= 1
    assert metrics["endpoints"]["/recommend"]["p50_ms"] <= metrics["endpoints"]["/recommend"]["p99_ms"]
    assert metrics["run"]["run_dir"] == str(run_a) and metrics["run"]["index"] == "annoy"
    assert "index_recall@10" in metrics["run"] and metrics["run"]["swaps"] == 0
    assert server.client.get("/docs").status_code == 200
    assert "/recommend" in server.client.get("/openapi.json").json()["paths"]


def test_metrics_are_prometheus_text(server: Server) -> None:
    """What a Prometheus server scrapes: request counters by endpoint and status, a latency histogram whose
    buckets add up to its count, and the served run's gauges and swap counters."""
    server.client.get("/recommend", params={"user": "u1", "k": 3})
    server.client.get("/recommend", params={"user": "nobody"})
    answer = server.client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(answer.text)}
    requests = {(sample.labels["endpoint"], sample.labels["status"]): sample.value
                for sample in families["twotower_requests"].samples if sample.name.endswith("_total")}
    assert requests[("/recommend", "200")] >= 1 and requests[("/recommend", "404")] >= 1
    latency = [sample for sample in families["twotower_request_duration_seconds"].samples
               if sample.labels.get("endpoint") == "/recommend"]
    infinite = next(s.value for s in latency if s.name.endswith("_bucket") and s.labels["le"] == "+Inf")
    count = next(s.value for s in latency if s.name.endswith("_count"))
    assert infinite == count == sum(requests[key] for key in requests if key[0] == "/recommend")
    assert families["twotower_items"].samples[0].value == 12_000
    assert families["twotower_swaps"].samples[0].value == 0


@pytest.mark.parametrize(("method", "path", "payload", "status", "names"), [
    ("GET", "/recommend?user=nobody", None, 404, "nobody"),
    ("GET", "/recommend?user=u1&deny=999999999", None, 404, "999999999"),
    ("GET", "/similar?item=no+such+thing", None, 404, "no such thing"),
    ("GET", "/recommend?user=u1&k=0", None, 422, "query.k"),
    ("GET", "/recommend?user=u1&k=51", None, 422, "query.k"),
    ("GET", "/recommend?user=u1&k=ten", None, 422, "query.k"),
    ("GET", "/recommend?user=u1&unknown=maybe", None, 422, "query.unknown"),
    ("GET", "/recommend", None, 422, "query.user"),
    ("GET", "/similar?item=0&allow=" + "&allow=".join(map(str, range(101))), None, 422, "query.allow"),
    ("POST", "/recommend", b'{"users": ["u1"', 400, "JSON"),
    ("POST", "/recommend", {"users": []}, 422, "body.users"),
    ("POST", "/recommend", {"users": ["u1"] * 21}, 422, "body.users"),
    ("POST", "/recommend", {"users": ["u1"], "k": 2.5}, 422, "body.k"),
    ("POST", "/recommend", {"users": [1.5]}, 422, "body.users"),
    ("POST", "/recommend", {"users": ["u1"], "colour": "red"}, 422, "colour"),
    ("POST", "/recommend", {"users": ["u1", "ghost"]}, 404, "ghost"),
    ("POST", "/similar", {"items": [0, 123456789]}, 404, "123456789"),
    ("POST", "/similar", {"items": [0], "allow": list(range(0, 7 * 101, 7))}, 422, "body.allow"),
    ("POST", "/recommend", {"users": ["u1"], "deny": ["x" * 50] * 500}, 413, "max_body_bytes"),
    ("POST", "/admin/reload", {}, 401, "Authorization"),
    ("POST", "/admin/catalogue/save", {}, 401, "Authorization"),
    ("GET", "/nowhere", None, 404, "Not Found"),
])
def test_bad_requests_get_a_4xx_json_error_naming_the_problem(server: Server, method: str, path: str,
                                                               payload: object, status: int, names: str) -> None:
    content = payload if isinstance(payload, bytes) else None
    body = None if isinstance(payload, bytes) or payload is None else payload
    answer = server.client.request(method, path, json=body, content=content,
                                   headers={"content-type": "application/json"} if content else None)
    assert answer.status_code == status, answer.text
    assert names in answer.json()["error"]


def test_chunked_oversized_body_and_no_server_errors(server: Server) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted as the body arrives
        yield b'{"users": ['
        for _ in range(5000):
            yield b'"u1", '
        yield b'"u1"]}'

    answer = server.client.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert answer.status_code == 413 and "max_body_bytes" in answer.json()["error"]
    metrics = server.client.get("/metrics/json").json()
    assert metrics["errors"] > 0 and metrics["server_errors"] == 0


def test_added_items_are_returned_and_removed_items_never(server: Server, run_a: Path) -> None:
    local = Retriever.load(run_a)  # the same changes in process: the answers must agree
    user = "u3"
    user_vector = local.run.user_vectors[local.run.user_vocab.lookup([user])[0]]
    # A new item pointing where the user does (scaled: a cosine run stores it as a unit vector) comes first.
    new = [{"id": 5, "vector": (3 * user_vector).tolist(), "title": "Fresh arrival"},
           {"id": 12, "vector": (-user_vector).tolist()}]
    assert server.client.post("/admin/items", json={"items": new}, headers=ADMIN).json()["added_items"] == 2
    local.add_items([5, 12], [entry["vector"] for entry in new], titles=["Fresh arrival", None])
    answer = server.client.get("/recommend", params={"user": user, "k": 5}).json()
    assert answer[0] == {"id": 5, "score": pytest.approx(1.0, abs=1e-5), "title": "Fresh arrival"}
    result = local.recommend(user, k=5)
    assert answer == result.records()
    assert 12 not in result.ids  # the opposite direction: not recommended
    assert server.client.get("/similar", params={"item": "Fresh arrival", "k": 3}).json()[0]["id"] != 5
    item = answer[-1]["id"]
    allowed = server.client.get("/recommend", params={"user": user, "k": 2, "allow": [12, item]}).json()
    assert [row["id"] for row in allowed] == [item, 12]  # an allow list reaches added items too
    # Removing: an index item and an added one are never returned again, by any endpoint.
    top = answer[1]["id"]
    removed = server.client.post("/admin/items/remove", json={"ids": [5, top]}, headers=ADMIN)
    assert removed.json() == {"removed": 2, "removed_items": 1, "added_items": 1}
    again = server.client.post("/recommend", json={"users": [user], "k": 20}).json()["results"][0]["items"]
    assert not {5, top} & {row["id"] for row in again}
    assert server.client.get("/similar", params={"item": 5}).status_code == 404
    bad = server.client.post("/admin/items", json={"items": [{"id": 19, "vector": [1.0, 2.0]}]}, headers=ADMIN)
    assert bad.status_code == 422 and "dimension 16" in bad.json()["error"]
    taken = server.client.post("/admin/items", json={"items": [{"id": 7, "vector": user_vector.tolist()}]},
                               headers=ADMIN)
    assert taken.status_code == 422 and "[7]" in taken.json()["error"]
    # Reloading the run starts from its exported catalogue again.
    assert server.client.post("/admin/reload", json={}, headers=ADMIN).status_code == 200
    assert server.client.get("/recommend", params={"user": user, "k": 5}).json()[0]["id"] != 5


def test_saved_items_survive_a_reload_and_a_fold(start, run_a: Path, tmp_path: Path) -> None:
    """Saved into the run directory, the changes outlive a reload; folded by a rebuild, they are still served."""
    run = Path(shutil.copytree(run_a, tmp_path / "run"))
    live = start(run)
    local = Retriever.load(run)
    user_vector = local.run.user_vectors[local.run.user_vocab.lookup(["u3"])[0]]
    top = live.client.get("/recommend", params={"user": "u3", "k": 1}).json()[0]["id"]
    new = {"items": [{"id": 5, "vector": user_vector.tolist(), "title": "Fresh arrival"}]}
    assert live.client.post("/admin/items", json=new, headers=ADMIN).status_code == 200
    assert live.client.post("/admin/items/remove", json={"ids": [top]}, headers=ADMIN).status_code == 200
    saved = live.client.post("/admin/catalogue/save", headers=ADMIN)
    assert saved.json() == {"run_dir": str(run), "added_items": 1, "removed_items": 1, "saved_rows": 1,
                            "indexed_rows": 0}
    before = live.client.get("/recommend", params={"user": "u3", "k": 10}).json()
    assert before[0]["id"] == 5 and top not in {row["id"] for row in before}
    for fold in (False, True):
        if fold:
            rebuild_index(run, AnnoyIndex())
        assert live.client.post("/admin/reload", json={}, headers=ADMIN).status_code == 200
        answer = live.client.get("/recommend", params={"user": "u3", "k": 10}).json()
        assert [row["id"] for row in answer] == [row["id"] for row in before]
        assert answer[0]["title"] == "Fresh arrival"
        reloaded = Retriever.load(run)
        assert answer == reloaded.recommend("u3", k=10).records()
        assert reloaded.catalogue.indexed == fold  # after the fold, the index holds the saved item


def test_items_added_from_features_over_http(start, tmp_path: Path) -> None:
    """A feature tower embeds new items from their features alone; the answers equal the Python API's."""
    run_dir = train_feature_run(tmp_path)
    live = start(run_dir)
    new = {"items": [{"id": 1000, "features": {"genre": "g1"}, "title": "new g1"}, {"id": 1001, "features": {}}]}
    assert live.client.post("/admin/items", json=new, headers=ADMIN).status_code == 200
    local = Retriever.load(run_dir)
    local.add_items([1000, 1001], features=pl.DataFrame({"genre": ["g1", None]}), titles=["new g1", None])
    user, pool = local.run.user_vocab.ids[0], [1000, 1001, *local.run.item_vocab.ids.to_list()[:10]]
    answer = live.client.get("/recommend", params={"user": user, "k": 6, "allow": pool}).json()
    assert answer == local.recommend(user, k=6, allow=pool).records()
    assert {1000, 1001} <= {row["id"] for row in live.client.get("/recommend", params={
        "user": user, "k": 100}).json()}  # every item is in a catalogue of 82
    for features, names in [({"colour": "red"}, "colour"), ({"genre": ["g1", "g2"]}, "features")]:
        refused = live.client.post("/admin/items", json={"items": [{"id": 1002, "features": features}]},
                                   headers=ADMIN)
        assert refused.status_code == 422 and names in refused.json()["error"]


def test_swap_under_load_drops_no_request(start, run_a: Path, run_b: Path, tmp_path: Path) -> None:
    live = start(run_a)
    users = [f"u{i}" for i in range(60)]
    failures: list[str] = []
    answers: list[tuple[float, list[int]]] = []
    stop = threading.Event()

    def hammer(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=live.url, timeout=30) as client:
            while not stop.is_set():
                try:
                    response = client.get("/recommend", params={"user": users[rng.integers(60)], "k": 10})
                    if response.status_code != 200:
                        failures.append(f"{response.status_code}: {response.text}")
                    else:
                        answers.append((time.monotonic(), [row["id"] for row in response.json()]))
                except httpx.HTTPError as error:
                    failures.append(repr(error))

    threads = [threading.Thread(target=hammer, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    sent_at = time.monotonic()
    swapped = live.client.post("/admin/reload", json={"run_dir": str(run_b)}, headers=ADMIN)
    swapped_at = time.monotonic()
    time.sleep(1.0)
    # A run that fails to load leaves B serving, and says why.
    (tmp_path / "broken").mkdir()
    refused = live.client.post("/admin/reload", json={"run_dir": str(tmp_path / "broken")}, headers=ADMIN)
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join()
    assert swapped.status_code == 200, swapped.text
    assert not failures, failures[:3]
    # Requests in flight during the swap may finish on either run; a margin leaves them out.
    before = [ids for at, ids in answers if at < sent_at]
    after = [ids for at, ids in answers if at > swapped_at + 0.5]
    assert before and all(max(ids) < B_OFFSET for ids in before)
    assert len(after) > 10 and all(min(ids) >= B_OFFSET for ids in after)  # the new run answers after the swap
    assert refused.status_code == 422 and "still serving" in refused.json()["error"]
    metrics = live.client.get("/metrics/json").json()
    assert metrics["run"]["run_dir"] == str(run_b) and metrics["run"]["swaps"] == 1
    assert "broken" in metrics["run"]["last_swap_error"] and metrics["server_errors"] == 0


def test_sighup_reloads_and_admin_is_off_without_a_token(start, run_a: Path) -> None:
    plain = start(run_a, token=None)
    assert plain.client.post("/admin/reload", json={}, headers=ADMIN).status_code == 404
    assert plain.client.post("/admin/items", json={"items": []}, headers=ADMIN).status_code == 404
    plain.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while plain.client.get("/metrics/json").json()["run"]["swaps"] < 1:
        assert time.monotonic() < deadline, "SIGHUP did not reload the run"
        time.sleep(0.1)
    assert plain.client.get("/recommend", params={"user": "u1"}).status_code == 200


@pytest.mark.parametrize(("overrides", "message"), [
    ([], "run_dir"),
    (["run_dir=RUN", "port=http"], "port must be an integer"),
    (["run_dir=RUN", "port=70000"], "port must be an integer"),
    (["run_dir=RUN", "limits.max_k=0"], "limits.max_k"),
    (["run_dir=RUN", "workers=2", "admin_token=long-enough-token"], "workers=1"),
    (["run_dir=RUN", "admin_token=short"], "admin_token"),
    (["run_dir=/no/such/run"], "run directory not found"),
])
def test_bad_config_is_one_line_and_exit_status_2(overrides: list[str], message: str, run_a: Path) -> None:
    command = [sys.executable, "-m", "twotower.commands.serve", *[o.replace("RUN", str(run_a)) for o in overrides]]
    if not any(o.startswith("port=") for o in overrides):
        command.append(f"port={free_port()}")
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and message in done.stderr and "Traceback" not in done.stderr


def test_the_core_package_needs_no_fastapi(run_a: Path) -> None:
    """Without the extra, the library imports and twotower-serve says which extra to install."""
    script = ("import sys; sys.modules['fastapi'] = None; sys.modules['uvicorn'] = None\n"
              "import twotower, twotower.serving.retrieval, twotower.commands.serve\n"
              f"sys.argv = ['twotower-serve', 'run_dir={run_a}']\n"
              "twotower.commands.serve.main()")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "pip install 'twotower[serve]'" in done.stderr, done.stderr
