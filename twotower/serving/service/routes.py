"""The endpoints that answer queries, and the status ones. Each request reads the served run once
(``served.current``), so a swap never changes the run under a request. Answers are ``Result.records()``:
the same lists of ``{"id", "score"(, "title")}`` that ``twotower-retrieve ... output=json`` prints."""

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from twotower.serving.service.metrics import RequestMetrics
from twotower.serving.service.schemas import (
    HistoryResults,
    ItemScore,
    RecommendResults,
    SimilarResults,
    Unknown,
    request_models,
)
from twotower.serving.service.settings import Limits
from twotower.serving.service.state import Served

LISTS = {"response_model_exclude_none": True}


def query_routes(served: Served, limits: Limits) -> APIRouter:
    router = APIRouter()
    requests = request_models(limits)
    RecommendRequest, HistoryRequest, SimilarRequest = requests.recommend, requests.history, requests.similar
    default_k = min(10, limits.max_k)
    QueryK = Annotated[int, Query(ge=1, le=limits.max_k)]
    QueryIds = Annotated[list[str] | None, Query(max_length=limits.max_ids)]

    @router.get("/recommend", response_model=list[ItemScore], **LISTS)
    def recommend(user: str, k: QueryK = default_k, exclude_seen: bool = True, allow: QueryIds = None,
                  deny: QueryIds = None, unknown: Unknown = "error") -> list[dict[str, Any]]:
        """Top-k items for one user, without the items they already have."""
        return served.current.retriever.recommend(user, k=k, exclude_seen=exclude_seen, allow=allow, deny=deny,
                                                  unknown=unknown).records()

    @router.post("/recommend", response_model=RecommendResults, **LISTS)
    def recommend_batch(request: RecommendRequest) -> dict[str, Any]:
        """Top-k items for each user of a batch."""
        results = served.current.retriever.recommend(list(request.users), k=request.k,
                                                     exclude_seen=request.exclude_seen, allow=request.allow,
                                                     deny=request.deny, unknown=request.unknown)
        return {"results": [{"user": user, "items": result.records()}
                            for user, result in zip(request.users, results, strict=True)]}

    @router.post("/recommend_from_history", response_model=HistoryResults, **LISTS)
    def recommend_from_history(request: HistoryRequest) -> dict[str, Any]:
        """Top-k items for each history (a list of item ids: a new user, a live session), without its items;
        runs trained with model=history."""
        results = served.current.retriever.recommend_from_history(
            [list(history) for history in request.histories], k=request.k, allow=request.allow, deny=request.deny,
            unknown=request.unknown)
        return {"results": [result.records() for result in results]}

    @router.get("/similar", response_model=list[ItemScore], **LISTS)
    def similar(item: str, k: QueryK = default_k, allow: QueryIds = None, deny: QueryIds = None
                ) -> list[dict[str, Any]]:
        """The k items closest to an item id or title (not itself)."""
        return served.current.retriever.similar_items(item, k=k, allow=allow, deny=deny).records()

    @router.post("/similar", response_model=SimilarResults, **LISTS)
    def similar_batch(request: SimilarRequest) -> dict[str, Any]:
        """The k items closest to each item (id or title) of a batch."""
        results = served.current.retriever.similar_items(list(request.items), k=request.k, allow=request.allow,
                                                         deny=request.deny)
        return {"results": [{"item": item, "items": result.records()}
                            for item, result in zip(request.items, results, strict=True)]}

    return router


def status_routes(served: Served, metrics: RequestMetrics) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health() -> dict[str, str]:
        """The process is up and answering."""
        return {"status": "ok"}

    @router.get("/ready")
    async def ready() -> dict[str, Any]:
        """A run is loaded and serving (the service starts listening only once it is)."""
        current = served.current
        return {"ready": True, "run_dir": current.run_dir, "items": len(current.retriever.run.item_vocab),
                "users": len(current.retriever.run.user_vocab)}

    @router.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        """Requests, errors, latency histograms, the served run and its swaps, in the Prometheus text format."""
        return Response(metrics.prometheus(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @router.get("/metrics/json")
    async def run_metrics() -> dict[str, Any]:
        """Requests, errors and latency quantiles per endpoint, and the run being served."""
        current = served.current
        run = {
            **current.retriever.about(),
            "run_dir": current.run_dir,
            "index_recall@10": current.index_recall,
            "loaded_at": time_text(current.loaded_at),
            "load_seconds": current.load_seconds,
            "swaps": served.swaps,
            "last_swap_error": served.last_error,
        }
        return {**metrics.snapshot(), "run": run}

    return router


def time_text(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(seconds))
