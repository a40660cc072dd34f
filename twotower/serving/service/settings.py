"""What ``twotower-serve`` is told (``conf/serve.yaml``), checked before anything is loaded: a bad setting is
one line naming it. Imports no web framework, so the command can refuse a bad setting without the extra."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twotower import checks
from twotower.errors import ConfigError
from twotower.index import Backend, backend_from

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
    """``conf/serve.yaml``, checked; the defaults are the YAML's. ``index``: None for the run's own index,
    or the backend to search with (``index=exact``, or the run's kind with other query settings)."""

    run_dir: str
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    index: Backend | None = None
    admin_token: str | None = None
    limits: Limits = field(default_factory=Limits)
    log_level: str = "warning"
    access_log: bool = False

    @classmethod
    def checked(cls, values: Mapping[str, Any], index: Backend | None = None) -> ServeSettings:
        """Settings from plain values (the composed config), refusing a bad one with ``TwoTowerError``."""
        run_dir = values.get("run_dir")
        if not isinstance(run_dir, str) or not run_dir.strip() or run_dir == "???":
            raise ConfigError("give the run to serve: twotower-serve run_dir=DIR")
        host, log_level, access_log = values.get("host"), values.get("log_level"), values.get("access_log")
        if not isinstance(host, str) or not host:
            raise ConfigError(f"host must be a host name or address, got {host!r}")
        checks.choice("log_level", log_level, LOG_LEVELS)
        checks.flag("access_log", access_log)
        token = values.get("admin_token")
        if token is not None and (not isinstance(token, str) or len(token) < 8):
            raise ConfigError(f"admin_token must be a string of at least 8 characters (or null: no admin "
                              f"endpoints); set it with {ADMIN_TOKEN_VARIABLE}")
        workers = checks.integer("workers", values.get("workers"), 1, 64)
        if workers > 1 and token is not None:
            raise ConfigError("the admin endpoints would change one worker of several: use workers=1 with "
                              "admin_token, or SIGHUP the main process to reload every worker")
        limits = values.get("limits") or {}
        limits = Limits(**{name: checks.integer(f"limits.{name}", limits.get(name), 1)
                           for name in Limits.__dataclass_fields__})
        return cls(run_dir=run_dir, host=host, port=checks.integer("port", values.get("port"), 1, 65535),
                   workers=workers, index=index, admin_token=token, limits=limits, log_level=log_level,
                   access_log=access_log)

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain values (what worker processes are handed)."""
        index = None if self.index is None else {"backend": self.index.backend, "params": self.index.params()}
        return {**self.__dict__, "limits": dict(self.limits.__dict__), "index": index}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ServeSettings:
        index = values["index"] and backend_from(values["index"]["backend"], values["index"]["params"])
        return cls(**{**values, "limits": Limits(**values["limits"]), "index": index})


def check_port(host: str, port: int) -> None:
    """Fail now, in one line, if the address cannot be listened on (taken, or not this machine's)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, protocol, _, address = infos[0]
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as error:
        raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error
