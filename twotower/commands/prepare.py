"""twotower-prepare: read a log out of core, split it, and write it as Parquet shards for many processes.

    twotower-prepare data.path=log.parquet out=prepared/ shards=8
    twotower-prepare data.path='logs/*.parquet' out=prepared/ split=temporal
    twotower-train data=prepared data.path=prepared/ trainer=ddp

The work is ``twotower.data.prepared.prepare``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from twotower import checks
from twotower.commands.cli import answer_help, check_options, quiet_framework_notices, reported_errors
from twotower.data.prepared import prepare
from twotower.data.readers import InteractionFileReader
from twotower.errors import ConfigError

quiet_framework_notices()


@hydra.main(version_base="1.3", config_path="pkg://twotower.conf", config_name="prepare")
def app(cfg: DictConfig) -> None:
    with reported_errors(cfg.debug):
        check_options(cfg, "prepare")
        reader = checks.instantiate("data", cfg.data)
        if not isinstance(reader, InteractionFileReader):
            raise ConfigError("twotower-prepare reads one interaction table (data=interactions): CSV, TSV, NDJSON, "
                              "Parquet, or a folder or glob of Parquet files")
        prepare(reader, instantiate(cfg.split), Path(cfg.out).expanduser(), cfg.shards,
                checks.flag("keep_order", cfg.keep_order))


def main() -> None:
    answer_help("twotower-prepare", "prepare")
    app()


if __name__ == "__main__":
    main()
