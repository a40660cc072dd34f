"""twotower-serve: the retrieval API as an HTTP service (FastAPI on uvicorn; the ``serve`` extra).

    twotower-serve run_dir=DIR                           # http://127.0.0.1:8000, OpenAPI page at /docs
    twotower-serve run_dir=DIR host=0.0.0.0 port=9000 limits.max_k=100
    TWOTOWER_ADMIN_TOKEN=secret twotower-serve run_dir=DIR   # + POST /admin/reload, /admin/items
    kill -HUP PID                                        # load the run again (a symlink repointed, say)

Every setting is checked, and the port tried, before the run is loaded; a bad one is one line on stderr
and exit status 2. The endpoints live in ``twotower.commands.service``, which is imported only here, so the core
package works without FastAPI installed.
"""

from __future__ import annotations

import importlib.util
import socket
from dataclasses import dataclass
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from twotower.commands.cli import index_choice, reported_errors
from twotower.errors import TwoTowerError

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
ADMIN_TOKEN_VARIABLE = "TWOTOWER_ADMIN_TOKEN"


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; anything more is answered 413 or 422, before any work is done."""

    max_k: int = 1000
    max_batch: int = 1000
    max_ids: int = 10000
    max_body_bytes: int = 1048576


@dataclass(frozen=True)
class ServeSettings:
    """``conf/serve.yaml``, checked; the defaults are the YAML's."""

    run_dir: str
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    index: str | None = None
    admin_token: str | None = None
    limits: Limits = Limits()
    log_level: str = "warning"
    access_log: bool = False


def _whole(value: object, name: str, low: int, high: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise TwoTowerError(f"{name} must be an integer {bound}, got {value!r}")
    return value


def settings_from(cfg: DictConfig) -> ServeSettings:
    """The checked settings of a composed ``serve`` config; raises ``TwoTowerError`` naming a bad one."""
    if OmegaConf.is_missing(cfg, "run_dir") or not str(cfg.run_dir or "").strip():
        raise TwoTowerError("give the run to serve: twotower-serve run_dir=DIR")
    if not isinstance(cfg.host, str) or not cfg.host:
        raise TwoTowerError(f"host must be a host name or address, got {cfg.host!r}")
    if cfg.log_level not in LOG_LEVELS:
        raise TwoTowerError(f"log_level must be one of {LOG_LEVELS}, got {cfg.log_level!r}")
    if not isinstance(cfg.access_log, bool):
        raise TwoTowerError(f"access_log must be true or false, got {cfg.access_log!r}")
    token = cfg.admin_token
    if token is not None and (not isinstance(token, str) or len(token) < 8):
        raise TwoTowerError(f"admin_token must be a string of at least 8 characters (or null: no admin "
                            f"endpoints); set it with {ADMIN_TOKEN_VARIABLE}")
    workers = _whole(cfg.workers, "workers", 1, 64)
    if workers > 1 and token is not None:
        raise TwoTowerError("the admin endpoints would change one worker of several: use workers=1 with "
                            "admin_token, or SIGHUP the main process to reload every worker")
    limits = Limits(**{name: _whole(cfg.limits[name], f"limits.{name}", 1) for name in Limits.__dataclass_fields__})
    return ServeSettings(run_dir=str(cfg.run_dir), host=cfg.host, port=_whole(cfg.port, "port", 1, 65535),
                         workers=workers, index=index_choice(cfg.get("index")), admin_token=token, limits=limits,
                         log_level=cfg.log_level, access_log=cfg.access_log)


def check_port(host: str, port: int) -> None:
    """Fail now, in one line, if the address cannot be listened on (taken, or not this machine's)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, protocol, _, address = infos[0]
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as error:
        raise TwoTowerError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error


def require_serve_extra() -> None:
    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise TwoTowerError(f"twotower-serve needs {' and '.join(missing)}: pip install 'twotower[serve]'")


def serve(cfg: DictConfig) -> None:
    settings = settings_from(cfg)
    require_serve_extra()
    check_port(settings.host, settings.port)
    from twotower.commands.service import run_service

    run_service(settings)


def as_dict(settings: ServeSettings) -> dict[str, Any]:
    """The settings as plain values (what worker processes are handed)."""
    return {**settings.__dict__, "limits": dict(settings.limits.__dict__)}


def from_dict(values: dict[str, Any]) -> ServeSettings:
    return ServeSettings(**{**values, "limits": Limits(**values["limits"])})


@hydra.main(version_base="1.3", config_path="pkg://twotower.conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    with reported_errors(cfg.debug):
        serve(cfg)


if __name__ == "__main__":
    main()
