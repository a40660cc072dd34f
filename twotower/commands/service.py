"""The HTTP retrieval service behind ``twotower-serve``: FastAPI endpoints over a ``Retriever`` that can be
swapped for another run, and given new items, while it serves.

Endpoints (JSON; the OpenAPI page is ``/docs``):

- ``GET /recommend?user=ID&k=10`` and ``GET /similar?item=ID_OR_TITLE&k=10``: the list of
  ``{"id", "score"(, "title")}`` that ``twotower-retrieve ... output=json`` prints; ``POST`` forms take a
  batch of users or items. ``allow``/``deny``, ``exclude_seen`` and ``unknown`` are the Python API's.
- ``GET /health`` (the process answers), ``GET /ready`` (a run is loaded), ``GET /metrics``.
- With an admin token only: ``POST /admin/reload`` (another run, or the same again), ``POST /admin/items``
  and ``POST /admin/items/remove`` (see ``twotower.live_items``), ``POST /admin/catalogue/save`` (those
  changes into the run directory: a reload keeps them, and ``twotower-index run_dir=DIR`` folds the added
  items into the index, which a reload then serves them from).

Swaps: every request reads the current state once, so it finishes on the retriever it started with; a new
run is loaded and checked beside the old one and then put in place in one assignment; a run that fails to
load leaves the old one serving and the reason in ``/metrics`` (and the admin answer). SIGHUP loads the
served run directory again (a symlink a deploy has repointed, say).

Bad requests get a 4xx JSON ``{"error": "..."}`` naming the problem: 404 for ids the run does not know,
422 for values out of range, 400 for a body that is not JSON, 413 for an oversized body.
"""

import asyncio
import hmac
import json
import logging
import os
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import polars as pl
import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from twotower.commands.retrieve import rows_for
from twotower.commands.serve import ServeSettings, as_dict, from_dict
from twotower.errors import TwoTowerError
from twotower.retrieval import HISTORY_UNKNOWN_POLICIES, UNKNOWN_POLICIES, Retriever

log = logging.getLogger("twotower")

SETTINGS_VARIABLE = "TWOTOWER_SERVE_SETTINGS"  # how worker processes get the checked settings
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Ids as JSON gives them: integers that fit the vocabularies' Int64, or strings. Floats and booleans are
# refused rather than read as ids.
ItemId = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)] | StrictStr
Unknown = Literal[UNKNOWN_POLICIES]


class ItemScore(BaseModel):
    id: int | str
    score: float
    title: str | None = None


class UserResult(BaseModel):
    user: int | str
    items: list[ItemScore]


class ItemResult(BaseModel):
    item: int | str
    items: list[ItemScore]


class RecommendResults(BaseModel):
    results: list[UserResult]


class HistoryResults(BaseModel):
    results: list[list[ItemScore]]  # one list per history, in the request's order


class SimilarResults(BaseModel):
    results: list[ItemResult]


@dataclass(frozen=True)
class Loaded:
    """One served run: replaced whole by a swap, so a request sees one run throughout."""

    retriever: Retriever
    run_dir: str  # as given, so that SIGHUP reads it again (a symlink may point elsewhere by then)
    loaded_at: float
    load_seconds: float
    index_recall: float | None


def load_checked(run_dir: str, index: str | None) -> Loaded:
    """Load a run and answer one query of each kind with it before it may take traffic."""
    started = time.perf_counter()
    retriever = Retriever.load(run_dir, index=index)
    if len(retriever.user_vocab) == 0 or len(retriever.item_vocab) < 2:
        raise TwoTowerError(f"{run_dir}: nothing to serve ({len(retriever.user_vocab)} users, "
                            f"{len(retriever.item_vocab)} items)")
    retriever.recommend(retriever.user_vocab.ids[0], k=1)
    retriever.similar_items(retriever.item_vocab.ids[0], k=1)
    return Loaded(retriever, run_dir, time.time(), round(time.perf_counter() - started, 3),
                  index_recall(retriever.paths.index))


def index_recall(folder: Path) -> float | None:
    """The recall@10 that ``twotower-index`` measured for this index, if it did (only a report, so a missing
    or unreadable one is no reason to refuse the run)."""
    try:
        return json.loads((folder / "report.json").read_text()).get("recall@10_vs_exact")
    except (OSError, ValueError, AttributeError):
        return None


class Served:
    """The run being served, and the changes to it (swaps, added and removed items), one at a time."""

    def __init__(self, loaded: Loaded, index: str | None) -> None:
        self.current = loaded  # read once per request; assigned only once a new run is loaded and checked
        self.index = index
        self.swaps = 0
        self.last_error: str | None = None
        self.changing = threading.Lock()

    def swap(self, run_dir: str | None = None) -> Loaded:
        """Serve ``run_dir`` (by default the served one, read again) if it loads; else keep the old run and
        raise ``TwoTowerError`` saying why. Items added to the old run are not carried over (their vectors
        belong to the old model's space) unless they were saved into its directory and it is loaded again."""
        with self.changing:
            run_dir = run_dir or self.current.run_dir
            try:
                loaded = load_checked(run_dir, self.index)
            except Exception as error:  # whatever breaks the new run, the old one goes on serving
                self.last_error = f"{run_dir}: {error}"
                raise TwoTowerError(f"cannot load {run_dir} ({error}); still serving "
                                    f"{self.current.run_dir}") from error
            self.current = loaded
            self.swaps += 1
            self.last_error = None
            return loaded

    def reload_logged(self) -> None:
        """What SIGHUP does: load the served run directory again, saying how it went on the log."""
        try:
            loaded = self.swap()
        except TwoTowerError as error:
            log.error("reload failed: %s", error)
            return
        log.info("now serving %s (%d items, loaded in %.1f s)", loaded.run_dir, len(loaded.retriever.item_vocab),
                 loaded.load_seconds)


class Metrics:
    """Request counts, errors and latency quantiles per endpoint, over the last ``window`` requests of each.

    Only the event loop's thread records and reads them, so they need no lock."""

    def __init__(self, window: int = 10_000) -> None:
        self.paths: set[str] = set()  # the app's routes, once they are all there
        self.started = time.time()
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.server_errors: Counter[str] = Counter()
        self.latencies: dict[str, deque[float]] = {}
        self.window = window

    def record(self, path: str, status: int, seconds: float) -> None:
        path = path if path in self.paths else "other"  # unknown paths must not grow the table
        self.requests[path] += 1
        self.errors[path] += status >= 400
        self.server_errors[path] += status >= 500
        self.latencies.setdefault(path, deque(maxlen=self.window)).append(seconds * 1000)

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


def json_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Guard:
    """The outermost layer: refuses bodies over the limit (413) before the app reads them, and times and
    counts every request, 500s included."""

    def __init__(self, app: FastAPI, metrics: Metrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app fails before it answers

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            body = await self._body(scope, receive)
            if body is None:
                too_big = json_error(413, f"request body over {self.max_body_bytes} bytes (limits.max_body_bytes)")
                await too_big(scope, receive, sending)
            else:
                await self.app(scope, self._replay(body, receive), sending)
        finally:
            self.metrics.record(scope["path"], status, time.perf_counter() - started)

    async def _body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole request body, or None once it passes the limit (declared or counted)."""
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left: the app will see it too
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return None
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    @staticmethod
    def _replay(body: bytes, receive: Receive) -> Receive:
        given = False

        async def replaying() -> Message:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replaying


def item_rows(retriever: Retriever, ids: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
    """What ``twotower-retrieve output=json`` prints; added items take their titles from the buffer."""
    return rows_for(retriever.item_vocab, ids, scores, retriever.describe_items(ids) if retriever.live.ids else None)


def features_frame(retriever: Retriever, features: list[dict[str, Any]]) -> pl.DataFrame:
    """The new items' features, one row each; names the run's item tower does not read are refused rather
    than ignored (the tower would embed the item from nothing)."""
    known = {spec["name"] for spec in getattr(retriever.model().item_tower, "specs", [])}
    unknown = sorted({name for row in features for name in row} - known)
    if known and unknown:
        raise TwoTowerError(f"unknown item feature(s) {unknown}; this run's item tower reads {sorted(known)}")
    try:
        return pl.DataFrame(features, strict=False)
    except (pl.exceptions.PolarsError, TypeError, ValueError) as error:  # values no column type can hold
        raise TwoTowerError(f"the new items' features cannot form a table: {error}") from error


def validation_message(errors: list[dict[str, Any]]) -> str:
    """One line for pydantic's errors: where each is (``query.k``, ``body.users``) and what is wrong."""
    parts = [f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in errors[:5]]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TwoTowerError)
    async def unknown_id(request: Request, error: TwoTowerError) -> JSONResponse:
        return json_error(404, str(error))  # from a query, a TwoTowerError is an id or title the run lacks

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        malformed = any(problem["type"] == "json_invalid" for problem in error.errors())
        return json_error(400 if malformed else 422, validation_message(list(error.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, error: Exception) -> JSONResponse:
        # Starlette raises the error again once this answer is sent, so the server logs its traceback.
        return json_error(500, f"internal error ({type(error).__name__}); see the service's log")


def add_query_routes(app: FastAPI, served: Served, settings: ServeSettings) -> None:
    limits = settings.limits
    default_k = min(10, limits.max_k)
    K = Annotated[int, Field(ge=1, le=limits.max_k)]
    Ids = Annotated[list[ItemId], Field(max_length=limits.max_ids)]
    Batch = Annotated[list[ItemId], Field(min_length=1, max_length=limits.max_batch)]
    QueryK = Annotated[int, Query(ge=1, le=limits.max_k)]
    QueryIds = Annotated[list[str] | None, Query(max_length=limits.max_ids)]

    class RecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        users: Batch
        k: K = default_k
        exclude_seen: bool = True
        allow: Ids | None = None
        deny: Ids | None = None
        unknown: Unknown = "error"

    class HistoryRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        histories: Annotated[list[Ids], Field(min_length=1, max_length=limits.max_batch)]
        k: K = default_k
        allow: Ids | None = None
        deny: Ids | None = None
        unknown: Literal[HISTORY_UNKNOWN_POLICIES] = "error"

    class SimilarRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        items: Batch
        k: K = default_k
        allow: Ids | None = None
        deny: Ids | None = None

    @app.get("/recommend", response_model=list[ItemScore], response_model_exclude_none=True)
    def recommend(user: str, k: QueryK = default_k, exclude_seen: bool = True, allow: QueryIds = None,
                  deny: QueryIds = None, unknown: Unknown = "error") -> list[dict[str, Any]]:
        """Top-k items for one user, without the items they already have."""
        retriever = served.current.retriever
        ids, scores = retriever.recommend(user, k=k, exclude_seen=exclude_seen, allow=allow, deny=deny,
                                          unknown=unknown)
        return item_rows(retriever, ids, scores)

    @app.post("/recommend", response_model=RecommendResults, response_model_exclude_none=True)
    def recommend_batch(request: RecommendRequest) -> dict[str, Any]:
        """Top-k items for each user of a batch."""
        retriever = served.current.retriever
        results = retriever.recommend(list(request.users), k=request.k, exclude_seen=request.exclude_seen,
                                      allow=request.allow, deny=request.deny, unknown=request.unknown)
        return {"results": [{"user": user, "items": item_rows(retriever, ids, scores)}
                            for user, (ids, scores) in zip(request.users, results, strict=True)]}

    @app.post("/recommend_from_history", response_model=HistoryResults, response_model_exclude_none=True)
    def recommend_from_history(request: HistoryRequest) -> dict[str, Any]:
        """Top-k items for each history (a list of item ids: a new user, a live session), without its items;
        runs trained with model=history."""
        retriever = served.current.retriever
        results = retriever.recommend_from_history([list(history) for history in request.histories], k=request.k,
                                                   allow=request.allow, deny=request.deny, unknown=request.unknown)
        return {"results": [item_rows(retriever, ids, scores) for ids, scores in results]}

    @app.get("/similar", response_model=list[ItemScore], response_model_exclude_none=True)
    def similar(item: str, k: QueryK = default_k, allow: QueryIds = None, deny: QueryIds = None
                ) -> list[dict[str, Any]]:
        """The k items closest to an item id or title (not itself)."""
        retriever = served.current.retriever
        ids, scores = retriever.similar_items(item, k=k, allow=allow, deny=deny)
        return item_rows(retriever, ids, scores)

    @app.post("/similar", response_model=SimilarResults, response_model_exclude_none=True)
    def similar_batch(request: SimilarRequest) -> dict[str, Any]:
        """The k items closest to each item (id or title) of a batch."""
        retriever = served.current.retriever
        results = retriever.similar_items(list(request.items), k=request.k, allow=request.allow, deny=request.deny)
        return {"results": [{"item": item, "items": item_rows(retriever, ids, scores)}
                            for item, (ids, scores) in zip(request.items, results, strict=True)]}


def add_status_routes(app: FastAPI, served: Served, metrics: Metrics) -> None:
    @app.get("/health")
    async def health() -> dict[str, str]:
        """The process is up and answering."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> dict[str, Any]:
        """A run is loaded and serving (the service starts listening only once it is)."""
        current = served.current
        return {"ready": True, "run_dir": current.run_dir, "items": len(current.retriever.item_vocab),
                "users": len(current.retriever.user_vocab)}

    @app.get("/metrics")
    async def run_metrics() -> dict[str, Any]:
        """Requests, errors and latency quantiles per endpoint, and the run being served."""
        current = served.current
        retriever = current.retriever
        run = {
            "run_dir": current.run_dir,
            "score": retriever.manifest["score"],
            "users": len(retriever.user_vocab),
            "items": len(retriever.item_vocab),
            "dim": int(retriever.item_vectors.shape[1]),
            "index": retriever.index.backend,
            "index_recall@10": current.index_recall,
            "added_items": retriever.live.n_added,
            "removed_items": retriever.live.n_removed,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(current.loaded_at)),
            "load_seconds": current.load_seconds,
            "swaps": served.swaps,
            "last_swap_error": served.last_error,
        }
        return {**metrics.snapshot(), "run": run}


def add_admin_routes(app: FastAPI, served: Served, settings: ServeSettings) -> None:
    expected = f"Bearer {settings.admin_token}".encode()
    Batch = Annotated[list[ItemId], Field(min_length=1, max_length=settings.limits.max_batch)]

    def authorised(authorization: Annotated[str | None, Header()] = None) -> None:
        if authorization is None or not hmac.compare_digest(authorization.encode(), expected):
            raise HTTPException(401, "admin endpoints need the header 'Authorization: Bearer TOKEN' "
                                     "with the service's admin token")

    class ReloadRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        run_dir: str | None = None

    class NewItem(BaseModel):
        model_config = ConfigDict(extra="forbid")
        id: ItemId
        vector: list[float] | None = None
        features: dict[str, Any] | None = None
        title: str | None = None

    class AddRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        items: Annotated[list[NewItem], Field(min_length=1, max_length=settings.limits.max_batch)]

    class RemoveRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        ids: Batch

    admin = [Depends(authorised)]

    @app.post("/admin/reload", dependencies=admin)
    def reload(request: ReloadRequest) -> dict[str, Any]:
        """Load a run directory (by default the served one again) beside the served one, then switch."""
        try:
            loaded = served.swap(request.run_dir)
        except TwoTowerError as error:
            raise HTTPException(422, str(error)) from error
        return {"run_dir": loaded.run_dir, "items": len(loaded.retriever.item_vocab),
                "users": len(loaded.retriever.user_vocab), "load_seconds": loaded.load_seconds}

    @app.post("/admin/items", dependencies=admin)
    def add_items(request: AddRequest) -> dict[str, Any]:
        """Add items to the served catalogue without a rebuild: each with its ``vector`` (the run's space) or
        its ``features`` (for the run's item feature tower)."""
        items = request.items
        given = {(item.vector is not None, item.features is not None) for item in items}
        if given not in ({(True, False)}, {(False, True)}):
            raise HTTPException(422, "give every new item a vector, or every one its features (one of the two)")
        ids = [item.id for item in items]
        titles = [item.title for item in items]
        with served.changing:  # not into a run that is being swapped out
            retriever = served.current.retriever
            try:
                if items[0].vector is not None:
                    retriever.add_items(ids, [item.vector for item in items], titles=titles)
                else:
                    retriever.add_items(ids, features=features_frame(retriever, [item.features for item in items]),
                                        titles=titles)
            except TwoTowerError as error:
                raise HTTPException(422, str(error)) from error
            except pl.exceptions.PolarsError as error:  # a value of the wrong shape for its feature
                raise HTTPException(422, f"the new items' features do not fit the run's item tower: "
                                         f"{str(error).splitlines()[0]}") from error
            return {"added": len(items), "added_items": retriever.live.n_added}

    @app.post("/admin/items/remove", dependencies=admin)
    def remove_items(request: RemoveRequest) -> dict[str, Any]:
        """Take items (the run's or added ones) out of every answer, without a rebuild."""
        with served.changing:
            retriever = served.current.retriever
            retriever.remove_items(list(request.ids))  # unknown ids: 404 naming them
            return {"removed": len(request.ids), "removed_items": retriever.live.n_removed,
                    "added_items": retriever.live.n_added}

    @app.post("/admin/catalogue/save", dependencies=admin)
    def save_catalogue() -> dict[str, Any]:
        """Write the added and removed items into the served run directory: a reload keeps them, and
        ``twotower-index run_dir=DIR`` folds the added ones into the index (a reload then serves the folded
        index)."""
        with served.changing:  # into the run being served, not one being swapped out
            current = served.current
            try:
                return {"run_dir": current.run_dir, **current.retriever.save_catalogue()}
            except TwoTowerError as error:
                raise HTTPException(422, str(error)) from error


def create_app(settings: ServeSettings, served: Served) -> Guard:
    """The service as an ASGI app: FastAPI routes inside the body limit and the request metrics."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        hangup = hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread()
        if hangup:  # the reload runs on a worker thread: the loop keeps answering meanwhile
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, served.reload_logged))
        yield
        if hangup:
            loop.remove_signal_handler(signal.SIGHUP)

    app = FastAPI(title="twotower", summary="Two-tower retrieval: recommendations and similar items",
                  lifespan=lifespan)
    add_error_handlers(app)
    add_query_routes(app, served, settings)
    if settings.admin_token is not None:
        add_admin_routes(app, served, settings)
    metrics = Metrics()
    add_status_routes(app, served, metrics)
    metrics.paths = {route.path for route in app.routes}
    return Guard(app, metrics, settings.limits.max_body_bytes)


def app_from_environment() -> Guard:
    """The app of one worker process when there are several (uvicorn's factory): loads the run itself."""
    settings = from_dict(json.loads(os.environ[SETTINGS_VARIABLE]))
    return create_app(settings, Served(load_checked(settings.run_dir, settings.index), settings.index))


def run_service(settings: ServeSettings) -> None:
    """Load the run (a failure is the command's error), then serve until SIGINT or SIGTERM."""
    loaded = load_checked(settings.run_dir, settings.index)
    log.info("serving %s (%d items) on http://%s:%d (API at /docs)", Path(settings.run_dir),
             len(loaded.retriever.item_vocab), settings.host, settings.port)
    common = {"host": settings.host, "port": settings.port, "log_level": settings.log_level,
              "access_log": settings.access_log}
    if settings.workers == 1:
        uvicorn.run(create_app(settings, Served(loaded, settings.index)), **common)
        return
    del loaded  # each worker loads its own; this one only proved the run loads
    os.environ[SETTINGS_VARIABLE] = json.dumps(as_dict(settings))
    uvicorn.run("twotower.commands.service:app_from_environment", factory=True, workers=settings.workers,
                timeout_worker_healthcheck=600, **common)
