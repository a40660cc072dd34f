"""The admin endpoints, which exist only when the service has an admin token ("Authorization: Bearer TOKEN"):
``POST /admin/reload`` (another run, or the same again), ``/admin/items`` and ``/admin/items/remove`` (the
catalogue changes of ``twotower.serving.catalogue``), ``/admin/catalogue/save`` (those changes into the run
directory: a reload keeps them, and ``twotower-index run_dir=DIR`` folds the added items into the index)."""

import hmac
from typing import Annotated, Any

import polars as pl
from fastapi import APIRouter, Depends, Header, HTTPException

from twotower.errors import TwoTowerError
from twotower.serving.retrieval import Retriever
from twotower.serving.service.schemas import ReloadRequest, request_models
from twotower.serving.service.settings import ServeSettings
from twotower.serving.service.state import Served


def features_frame(retriever: Retriever, features: list[dict[str, Any]]) -> pl.DataFrame:
    """The new items' features, one row each; names the run's item tower does not read are refused rather
    than ignored (the tower would embed the item from nothing)."""
    known = set(retriever.item_features())
    unknown = sorted({name for row in features for name in row} - known)
    if known and unknown:
        raise TwoTowerError(f"unknown item feature(s) {unknown}; this run's item tower reads {sorted(known)}")
    try:
        return pl.DataFrame(features, strict=False)
    except (pl.exceptions.PolarsError, TypeError, ValueError) as error:  # values no column type can hold
        raise TwoTowerError(f"the new items' features cannot form a table: {error}") from error


def admin_routes(served: Served, settings: ServeSettings) -> APIRouter:
    expected = f"Bearer {settings.admin_token}".encode()

    def authorised(authorization: Annotated[str | None, Header()] = None) -> None:
        if authorization is None or not hmac.compare_digest(authorization.encode(), expected):
            raise HTTPException(401, "admin endpoints need the header 'Authorization: Bearer TOKEN' "
                                     "with the service's admin token")

    router = APIRouter(prefix="/admin", dependencies=[Depends(authorised)])
    requests = request_models(settings.limits)
    AddRequest, RemoveRequest = requests.add, requests.remove

    @router.post("/reload")
    def reload(request: ReloadRequest) -> dict[str, Any]:
        """Load a run directory (by default the served one again) beside the served one, then switch."""
        try:
            loaded = served.swap(request.run_dir)
        except TwoTowerError as error:
            raise HTTPException(422, str(error)) from error
        return {"run_dir": loaded.run_dir, "items": len(loaded.retriever.run.item_vocab),
                "users": len(loaded.retriever.run.user_vocab), "load_seconds": loaded.load_seconds}

    @router.post("/items")
    def add_items(request: AddRequest) -> dict[str, Any]:
        """Add items to the served catalogue without a rebuild: each with its ``vector`` (the run's space) or
        its ``features`` (for the run's item feature tower)."""
        items = request.items
        given = {(item.vector is not None, item.features is not None) for item in items}
        if given not in ({(True, False)}, {(False, True)}):
            raise HTTPException(422, "give every new item a vector, or every one its features (one of the two)")
        ids, titles = [item.id for item in items], [item.title for item in items]
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
            return {"added": len(items), "added_items": retriever.catalogue.n_added}

    @router.post("/items/remove")
    def remove_items(request: RemoveRequest) -> dict[str, Any]:
        """Take items (the run's or added ones) out of every answer, without a rebuild."""
        with served.changing:
            retriever = served.current.retriever
            retriever.remove_items(list(request.ids))  # unknown ids: 404 naming them
            return {"removed": len(request.ids), **retriever.catalogue.counts()}

    @router.post("/catalogue/save")
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

    return router
