"""The service as an ASGI app, and the process that serves it (one, or several workers)."""

import asyncio
import json
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from twotower.errors import ConfigError, DataError, RunError, TwoTowerError, UnknownIdError
from twotower.serving.service import apidocs
from twotower.serving.service.admin import admin_routes
from twotower.serving.service.metrics import RequestMetrics
from twotower.serving.service.middleware import Guard, json_error
from twotower.serving.service.routes import query_routes, status_routes
from twotower.serving.service.settings import ServeSettings
from twotower.serving.service.state import Served, load_checked

log = logging.getLogger("twotower")

SETTINGS_VARIABLE = "TWOTOWER_SERVE_SETTINGS"  # how worker processes get the checked settings


def validation_message(errors: list[dict[str, Any]]) -> str:
    """One line for pydantic's errors: where each is (``query.k``, ``body.users``) and what is wrong."""
    parts = [f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in errors[:5]]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


# The status of each kind of error (``twotower.errors``): an id the run does not know is not found; a value the
# package cannot use is unprocessable; a served run that is damaged is the service's own fault.
STATUS = {UnknownIdError: 404, ConfigError: 422, DataError: 422, RunError: 500}


def status_of(error: TwoTowerError) -> int:
    return next((status for kind, status in STATUS.items() if isinstance(error, kind)), 422)


def add_error_handlers(app: FastAPI) -> None:
    """Bad requests get a 4xx ``{"error": "..."}`` naming the problem: 404 for ids the run does not know, 422
    for values out of range, 400 for a body that is not JSON (413, oversized, comes from ``Guard``); a damaged
    run gets a 500 that says what is damaged."""

    @app.exception_handler(TwoTowerError)
    async def refused(request: Request, error: TwoTowerError) -> JSONResponse:
        return json_error(status_of(error), str(error))

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


def create_app(settings: ServeSettings, served: Served) -> Guard:
    """FastAPI routes inside the body limit and the request metrics; SIGHUP reloads the served run."""

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
                  lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.get("/docs", include_in_schema=False, response_class=HTMLResponse)
    def docs() -> str:  # served from here, without the CDN FastAPI's own page needs
        return apidocs.page(app.openapi())

    add_error_handlers(app)
    metrics = RequestMetrics(served)
    app.include_router(query_routes(served, settings.limits))
    if settings.admin_token is not None:
        app.include_router(admin_routes(served, settings))
    app.include_router(status_routes(served, metrics))
    # The API's paths (routers' routes are nested) and the app's own (the OpenAPI page).
    metrics.paths = set(app.openapi()["paths"]) | {route.path for route in app.routes if hasattr(route, "path")}
    return Guard(app, metrics, settings.limits.max_body_bytes)


def app_from_environment() -> Guard:
    """The app of one worker process when there are several (uvicorn's factory): loads the run itself."""
    settings = ServeSettings.from_dict(json.loads(os.environ[SETTINGS_VARIABLE]))
    return create_app(settings, Served(load_checked(settings.run_dir, settings.index), settings.index))


def run_service(settings: ServeSettings) -> None:
    """Load the run (a failure is the command's error), then serve until SIGINT or SIGTERM."""
    loaded = load_checked(settings.run_dir, settings.index)
    log.info("serving %s (%d items) on http://%s:%d (API at /docs)", Path(settings.run_dir),
             len(loaded.retriever.run.item_vocab), settings.host, settings.port)
    common = {"host": settings.host, "port": settings.port, "log_level": settings.log_level,
              "access_log": settings.access_log}
    if settings.workers == 1:
        uvicorn.run(create_app(settings, Served(loaded, settings.index)), **common)
        return
    del loaded  # each worker loads its own; this one only proved the run loads
    os.environ[SETTINGS_VARIABLE] = json.dumps(settings.as_dict())
    uvicorn.run("twotower.serving.service.app:app_from_environment", factory=True, workers=settings.workers,
                timeout_worker_healthcheck=600, **common)
