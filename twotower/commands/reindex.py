"""twotower-index: rebuild a run's index with other settings, without retraining.

    twotower-index run_dir=DIR index.n_trees=100 index.search_k_factor=10
    twotower-index run_dir=DIR index=exact

The new index replaces the old one only when it is complete; its recall@10 against exact search (on the
task retrieval serves: each user's seen items left out), build time and size are printed and saved in
``DIR/index/report.json``.
"""

from __future__ import annotations

import json

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from twotower.artifacts import RunPaths, check_fingerprints, read_manifest, run_path
from twotower.commands.cli import register_resolvers, reported_errors
from twotower.embeddings import read_vectors
from twotower.index import build_index, index_report
from twotower.retrieval import read_seen

register_resolvers()


def reindex(cfg: DictConfig) -> dict:
    paths = RunPaths(run_path(cfg.run_dir))
    index = instantiate(cfg.index)  # settings checked before anything is read or replaced
    manifest = read_manifest(paths)
    check_fingerprints(paths, manifest)  # a rebuild never blesses vectors the run did not export
    _, users = read_vectors(paths.embeddings("users"))
    _, items = read_vectors(paths.embeddings("items"))
    meta = build_index(index, items, manifest["score"], paths.index, checkpoint=manifest["checkpoint_fingerprint"])
    seen = read_seen(paths, len(users))
    return index_report(index, users, items, seen, meta, paths.index, cfg.index_recall_queries, cfg.seed)


@hydra.main(version_base="1.3", config_path="pkg://twotower.conf", config_name="reindex")
def main(cfg: DictConfig) -> None:
    with reported_errors(cfg.debug):
        print(json.dumps(reindex(cfg), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
