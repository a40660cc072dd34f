"""twotower-train: train a two-tower model, export its vectors, build its index, report its metrics.

    twotower-train                                   # the bundled Wikipedia book sample
    twotower-train data=interactions data.path=log.csv model.dim=128 loss=bpr
    twotower-train -m model.dim=32,64 loss=bpr,softmax

``train(cfg)`` is the plain function behind the command; it returns the run's metrics, and the command
returns the monitored validation metric so Hydra sweepers can optimise it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from twotower.artifacts import RunPaths, write_json, write_text
from twotower.cli import quiet_framework_notices, register_resolvers, reported_errors
from twotower.data.datamodule import InteractionDataModule
from twotower.embeddings import write_vectors
from twotower.errors import TwoTowerError
from twotower.index import build_index, fingerprint, recall_against_exact
from twotower.module import TwoTowerModel
from twotower.retrieval import Retriever

log = logging.getLogger("twotower")
register_resolvers()
quiet_framework_notices()


def checkpoint_to_resume(ckpt_path: str | None, paths: RunPaths) -> str | None:
    if ckpt_path in (None, ""):
        return None
    path = paths.last_checkpoint if ckpt_path == "last" else Path(ckpt_path)
    if not path.exists():
        raise TwoTowerError(f"checkpoint to resume from not found: {path}")
    return str(path)


def export(model: TwoTowerModel, datamodule: InteractionDataModule, paths: RunPaths) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    with torch.no_grad():
        users = model.all_user_vectors().float().cpu().numpy()
        items = model.all_item_vectors().float().cpu().numpy()
    write_vectors(datamodule.user_vocab.ids, users, paths.embeddings("users"))
    write_vectors(datamodule.item_vocab.ids, items, paths.embeddings("items"))
    return users, items


def index_report(index: Any, users: np.ndarray, items: np.ndarray, meta: dict, paths: RunPaths,
                 n_queries: int, seed: int) -> dict[str, Any]:
    """Recall@10 of the built index against exact search on a sample of users, with its cost."""
    rng = np.random.default_rng(seed)
    sample = users[rng.choice(len(users), size=min(n_queries, len(users)), replace=False)]
    size = sum(f.stat().st_size for f in paths.index.iterdir() if f.is_file())
    report = {
        "backend": meta["backend"],
        "recall@10_vs_exact": round(recall_against_exact(index, sample, items, k=10), 4) if len(sample) else None,
        "queries": len(sample),
        "build_seconds": meta["build_seconds"],
        "size_bytes": size,
    }
    write_json(report, paths.index / "report.json")
    return report


def train(cfg: DictConfig) -> dict[str, float]:
    """Train, test, export and index one configuration; returns its metrics."""
    paths = RunPaths(Path(cfg.run_dir))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule: InteractionDataModule = instantiate(cfg.datamodule)
    datamodule.setup("fit")
    model: TwoTowerModel = instantiate(cfg.model, n_users=datamodule.n_users, n_items=datamodule.n_items)
    callbacks = [instantiate(callback) for callback in (cfg.get("callbacks") or {}).values()]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    resume = checkpoint_to_resume(cfg.ckpt_path, paths)
    if trainer.is_global_zero:
        write_text(OmegaConf.to_yaml(cfg, resolve=True), paths.config)
        datamodule.save(paths)

    trainer.fit(model, datamodule=datamodule, ckpt_path=resume)
    best_path = Path(trainer.checkpoint_callback.best_model_path or paths.last_checkpoint)
    # Metrics of the selected checkpoint, not of the last epoch.
    metrics = trainer.validate(model, datamodule=datamodule, ckpt_path=str(best_path), verbose=False)[0]
    if cfg.test:
        metrics |= trainer.test(model, datamodule=datamodule, ckpt_path=str(best_path), verbose=False)[0]
    metrics = {name: float(value) for name, value in metrics.items()}
    if not trainer.is_global_zero:
        return metrics

    best = TwoTowerModel.load_from_checkpoint(best_path, map_location="cpu")
    users, items = export(best, datamodule, paths)
    index = instantiate(cfg.index)
    meta = build_index(index, items, best.hparams.score, paths.index, checkpoint=fingerprint(best_path))
    report = index_report(index, users, items, meta, paths, cfg.index_recall_queries, cfg.seed)
    log.info("index: %s, recall@10 vs exact %s on %d queries, built in %.1fs", report["backend"],
             report["recall@10_vs_exact"], report["queries"], report["build_seconds"])
    write_json(metrics, paths.metrics("train"))
    write_json({
        "names": datamodule.names,
        "score": best.hparams.score,
        "dim": best.hparams.dim,
        "n_users": datamodule.n_users,
        "n_items": datamodule.n_items,
        "checkpoint": os.path.relpath(best_path, paths.root),
        "checkpoint_fingerprint": meta["checkpoint_fingerprint"],
        "monitor": cfg.monitor,
        "metrics": metrics,
    }, paths.manifest)
    log.info("run directory: %s", paths.root)
    example = datamodule.example_item if cfg.show_similar_to == "auto" else cfg.show_similar_to
    if example is not None:
        show_similar(paths, example, cfg.show_k)
    return metrics


def show_similar(paths: RunPaths, item: object, k: int) -> None:
    retriever = Retriever.load(paths.root)
    ids, scores = retriever.similar_items(item, k=k)
    name = retriever.names["item"]
    anchor = retriever.item_vocab.resolve(item)
    print(f"\n{name.capitalize()}s closest to '{retriever.item_vocab.ids[anchor]}':")
    titles = retriever.describe_items(ids)
    for rank, (id_, title, score) in enumerate(zip(ids, titles, scores, strict=True), start=1):
        label = title if title is not None and title != id_ else id_
        print(f"{rank:3d}. {label}  ({score:.3f})")


@hydra.main(version_base="1.3", config_path="pkg://twotower.conf", config_name="train")
def main(cfg: DictConfig) -> float:
    with reported_errors(cfg.get("debug", False)):
        return train(cfg)[cfg.monitor]


if __name__ == "__main__":
    main()
