"""The shapes of the service's JSON: answers, and requests bounded by the settings' limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from twotower.serving.retrieval import UNKNOWN, USER_UNKNOWN
from twotower.serving.service.settings import Limits

# Ids as JSON gives them: integers that fit the vocabularies' Int64, or strings. Floats and booleans are
# refused rather than read as ids.
ItemId = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)] | StrictStr
Unknown = Literal[USER_UNKNOWN]
HistoryUnknown = Literal[UNKNOWN]


class ItemScore(BaseModel):
    id: int | str
    score: float
    title: str | None = None
    fallback: str | None = None  # "popular" where the most popular items stand in for the model


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


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReloadRequest(Strict):
    run_dir: str | None = None


@dataclass(frozen=True)
class Requests:
    """Request bodies whose sizes the settings bound (a model per endpoint)."""

    recommend: type[BaseModel]
    history: type[BaseModel]
    similar: type[BaseModel]
    add: type[BaseModel]
    remove: type[BaseModel]


def request_models(limits: Limits) -> Requests:
    """The request bodies under ``limits``: batches of at most ``max_batch``, id lists of at most ``max_ids``,
    ``k`` at most ``max_k``."""
    K = Annotated[int, Field(ge=1, le=limits.max_k)]
    default_k = min(10, limits.max_k)
    Ids = Annotated[list[ItemId], Field(max_length=limits.max_ids)]
    Batch = Annotated[list[ItemId], Field(min_length=1, max_length=limits.max_batch)]

    class RecommendRequest(Strict):
        users: Batch
        k: K = default_k
        exclude_seen: bool = True
        allow: Ids | None = None
        deny: Ids | None = None
        unknown: Unknown = "error"

    class HistoryRequest(Strict):
        histories: Annotated[list[Ids], Field(min_length=1, max_length=limits.max_batch)]
        k: K = default_k
        allow: Ids | None = None
        deny: Ids | None = None
        unknown: HistoryUnknown = "error"

    class SimilarRequest(Strict):
        items: Batch
        k: K = default_k
        allow: Ids | None = None
        deny: Ids | None = None

    class NewItem(Strict):
        id: ItemId
        vector: list[float] | None = None
        features: dict[str, Any] | None = None
        title: str | None = None

    class AddRequest(Strict):
        items: Annotated[list[NewItem], Field(min_length=1, max_length=limits.max_batch)]

    class RemoveRequest(Strict):
        ids: Batch

    return Requests(RecommendRequest, HistoryRequest, SimilarRequest, AddRequest, RemoveRequest)
