"""twotower-index: rebuild a run's index with other settings, without retraining.

    twotower-index run_dir=DIR index.n_trees=100 index.search_k_factor=10
    twotower-index run_dir=DIR index=exact

The new index replaces the old one only when it is complete; its recall@10 against exact search (on the
task retrieval serves: each user's seen items left out), build time and size are printed and saved in
``DIR/index/report.json``. Items added after training and saved to the run's catalogue
(``Retriever.save_catalogue``, ``POST /admin/catalogue/save``) are folded in: the index holds them after the
run's own items, and a run loaded afterwards (a reload) serves them from it.
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from twotower import checks
from twotower.commands.cli import answer_help, check_options, reported_errors
from twotower.serving.catalogue import rebuild_index


@hydra.main(version_base="1.3", config_path="pkg://twotower.conf", config_name="reindex")
def app(cfg: DictConfig) -> None:
    with reported_errors(cfg.debug):
        check_options(cfg, "reindex")
        index = checks.instantiate("index", cfg.index)  # settings checked before anything is read or replaced
        print(json.dumps(rebuild_index(cfg.run_dir, index, cfg.index_recall_queries, cfg.seed), indent=2,
                         sort_keys=True))


def main() -> None:
    answer_help("twotower-index", "reindex")
    app()


if __name__ == "__main__":
    main()
