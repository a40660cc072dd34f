"""twotower-serve: the retrieval API as an HTTP service (FastAPI on uvicorn; the ``serve`` extra).

    twotower-serve run_dir=DIR                           # http://127.0.0.1:8000, OpenAPI page at /docs
    twotower-serve run_dir=DIR host=0.0.0.0 port=9000 limits.max_k=100
    TWOTOWER_ADMIN_TOKEN=secret twotower-serve run_dir=DIR   # + POST /admin/reload, /admin/items
    kill -HUP PID                                        # load the run again (a symlink repointed, say)

Every setting is checked, and the port tried, before the run is loaded; a bad one is one line on stderr
and exit status 2. The service (``twotower.serving.service``) is imported only once the settings are good, so the
core package works without FastAPI installed.
"""

from __future__ import annotations

import importlib.util

import hydra
from omegaconf import DictConfig, OmegaConf

from twotower import checks
from twotower.commands.cli import answer_help, check_options, reported_errors
from twotower.errors import TwoTowerError
from twotower.serving.service.settings import ServeSettings, check_port


def serve(cfg: DictConfig) -> None:
    values = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    settings = ServeSettings.checked(values, index=checks.instantiate("index", cfg.index) if cfg.get("index") else None)
    missing = [name for name in ("fastapi", "uvicorn", "prometheus_client") if importlib.util.find_spec(name) is None]
    if missing:
        raise TwoTowerError(f"twotower-serve needs {' and '.join(missing)}: pip install 'twotower[serve]'")
    check_port(settings.host, settings.port)
    from twotower.serving.service.app import run_service

    run_service(settings)


@hydra.main(version_base="1.3", config_path="pkg://twotower.conf", config_name="serve")
def app(cfg: DictConfig) -> None:
    with reported_errors(cfg.debug):
        check_options(cfg, "serve")
        serve(cfg)


def main() -> None:
    answer_help("twotower-serve", "serve")
    app()


if __name__ == "__main__":
    main()
