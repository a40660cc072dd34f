"""The end of a training run, in words: how good the selected model is beside popularity, what the exported
model learnt from, where the time went, where the files are, and what to run next."""

from __future__ import annotations

import shlex

from omegaconf import DictConfig

from twotower.index import read_report
from twotower.run import Run

PHASES = {"data": "data", "selection": "selection", "evaluation": "evaluation", "final_fit": "final fit",
          "export_and_index": "export and index"}


def seconds_text(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def metrics_table(metrics: dict[str, float], k: int) -> list[str]:
    """Recall and NDCG at ``k`` of the model and of popularity, on validation and on test."""
    rows = [f"{'':12}{'Recall@' + str(k):>12}{'NDCG@' + str(k):>12}{'popularity':>24}"]
    for stage, label in (("val", "validation"), ("test", "test")):
        if f"{stage}/ndcg@{k}" not in metrics:
            continue
        popular = [metrics.get(f"{stage}/popularity/{name}@{k}") for name in ("recall", "ndcg")]
        baseline = " / ".join(f"{value:.4f}" for value in popular) if None not in popular else "-"
        rows.append(f"{label:12}{metrics[f'{stage}/recall@{k}']:>12.4f}{metrics[f'{stage}/ndcg@{k}']:>12.4f}"
                    f"{baseline:>24}")
    return rows


def summary(run: Run) -> str:
    """The summary of a finished run, for the terminal."""
    manifest, root = run.manifest, shlex.quote(str(run.root))
    metrics = manifest.metrics
    k = max((int(name.rpartition("@")[2]) for name in metrics if name.startswith("val/ndcg@")), default=20)
    selected = int(metrics.get("selected_epochs", 0))
    lines = ["", f"Run finished: {run.root}", "", *metrics_table(metrics, k), ""]
    if selected:
        lines.append(f"selected model: epoch {selected}, trained on train (the metrics above; popularity: the most "
                     "popular training items, on the same splits)")
    chosen = [f"{option}={record['value']:g}" for option, record in manifest.chosen.items()
              if record.get("why") != "given"]
    if chosen:
        lines.append(f"left to the run: {', '.join(chosen)} (run.json's chosen says why)")
    if manifest.checkpoint != manifest.selected_checkpoint:
        lines.append(f"exported model: trained on {' + '.join(manifest.trained_on)} "
                     f"({int(metrics.get('final_fit_epochs', 0))} more epochs), {manifest.n_users:,} "
                     f"{manifest.names['user']}s and {manifest.n_items:,} {manifest.names['item']}s")
    times = " · ".join(f"{name} {seconds_text(manifest.seconds[phase])}" for phase, name in PHASES.items()
                       if phase in manifest.seconds)
    lines.append(f"time: {times}" + (f" (on {manifest.device})" if manifest.device else ""))
    report = read_report(run.paths.index)
    if report:
        qps = f" at {report['qps']:,} queries/s" if report.get("qps") else ""
        if report.get("chosen") == "exact search" and report["backend"] != "exact":
            lines.append(f"index: {report['backend']} built, but exact search serves{qps} "
                         f"({report.get('why_exact') or 'chosen by the build'})")
        else:
            lines.append(f"index: {report['backend']}, {report.get('chosen', '')}: recall@10 "
                         f"{report['recall@10_vs_exact']} against exact search{qps}")
    lines += ["", f"files: vectors {root}/embeddings · index {root}/index · metrics {root}/metrics/train.json",
              "next:",
              f"  twotower-retrieve run_dir={root} user=ID          # recommendations for a {manifest.names['user']}",
              f"  twotower-retrieve run_dir={root} item=ID_OR_TITLE # similar {manifest.names['item']}s",
              f"  twotower-eval run_dir={root} path=LATER_LOG.csv   # score it on later interactions",
              f"  twotower-serve run_dir={root}                     # the HTTP API"]
    return "\n".join(lines)


def configuration(cfg: DictConfig) -> str:
    """What a run was asked to do, in one line (the whole of it is in ``DIR/config.yaml``)."""
    def target(node: DictConfig) -> str:
        return str(node.get("_target_", "?")).rpartition(".")[2]

    data = cfg.data
    source = data.get("path") or target(data)
    model = cfg.model
    return (f"configuration: data {source} ({target(data)}), split {target(cfg.split)}; model dim {model.dim}, "
            f"score {model.score}, temperature {model.temperature}, user tower {target(model.user_tower)}, "
            f"item tower {target(model.item_tower)}; loss {target(cfg.loss)}; at most {cfg.trainer.max_epochs} "
            f"epochs, batches of {cfg.datamodule.batch_size}, seed {cfg.seed}; index {target(cfg.index)} "
            f"(the whole configuration: {cfg.run_dir}/config.yaml)")
