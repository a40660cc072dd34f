"""twotower-sweep: summarise a multirun directory into a table and a plot.

    twotower-train -m model.dim=32,64 loss=bpr,softmax       # jobs in multirun/DATE/TIME/0, 1, ...
    twotower-sweep multirun/DATE/TIME [--metric val/ndcg@20]
    twotower-sweep latest                                     # the newest sweep under multirun/

Writes ``summary.csv``, ``summary.md`` and ``summary.png`` (the metric against each swept parameter) into
the sweep directory and prints the Markdown table: each job's swept values, its validation metric and the
test metrics at the same cut-off, its time, its status, and which job is best. Failed jobs are listed with
their error, unfinished ones as such; neither stops the others from being reported. A multirun of
``twotower-train`` ends with the same table (``SweepSummary``, a Hydra callback).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import polars as pl
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from twotower.files import atomic_path, write_text
from twotower.run import RunPaths

MULTIRUN = Path("multirun")  # where twotower-train -m writes its sweeps unless told otherwise


def read_overrides(folder: Path) -> dict[str, str]:
    overrides = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text()) or []
    return dict(override.lstrip("+~").partition("=")[::2] for override in overrides)


def read_job(folder: Path) -> dict:
    """One job's overrides, status, metrics and seconds."""
    row: dict = {"job": folder.name, **read_overrides(folder)}
    paths = RunPaths(folder)
    if paths.metrics("train").exists():
        row["status"] = "ok"
        row.update(json.loads(paths.metrics("train").read_text()))
        if paths.manifest.exists():
            row["seconds"] = round(sum(json.loads(paths.manifest.read_text()).get("seconds", {}).values()), 1)
    elif paths.metrics("error").exists():
        row["status"] = "failed"
        row["error"] = json.loads(paths.metrics("error").read_text())["error"]
    else:
        row["status"] = "unfinished"
    return row


def collect(sweep_dir: Path) -> tuple[pl.DataFrame, list[str]]:
    """All jobs of a sweep, and the parameters that vary between them."""
    jobs = sorted((f for f in sweep_dir.iterdir() if (f / ".hydra" / "overrides.yaml").exists()),
                  key=lambda f: (len(f.name), f.name))
    if not jobs:
        raise SystemExit(f"error: no sweep jobs (folders with .hydra/overrides.yaml) in {sweep_dir}")
    frame = pl.DataFrame([read_job(job) for job in jobs], infer_schema_length=None)
    keys = dict.fromkeys(key for job in jobs for key in read_overrides(job))
    swept = [key for key in keys if frame[key].n_unique() > 1]
    return frame, swept


def markdown(frame: pl.DataFrame, columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in frame.select(columns).iter_rows():
        cells = [(f"{v:.1f}" if column == "seconds" else f"{v:.4f}") if isinstance(v, float) else
                 ("" if v is None else str(v)) for column, v in zip(columns, row, strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(frame: pl.DataFrame, swept: list[str], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = frame.filter(pl.col("status") == "ok")
    figure, axes = plt.subplots(1, max(len(swept), 1), figsize=(4.5 * max(len(swept), 1), 3.6), squeeze=False)
    for axis, parameter in zip(axes[0], swept or ["job"], strict=True):
        values = done[parameter].cast(pl.String).to_list()
        levels = sorted(set(values), key=lambda v: (float(v) if _is_number(v) else float("inf"), v))
        positions = [levels.index(v) for v in values]
        others = [p for p in swept if p != parameter]
        labels = [", ".join(f"{p}={r[p]}" for p in others) for r in done.iter_rows(named=True)]
        for label in sorted(set(labels), key=_natural):
            chosen = [i for i, lab in enumerate(labels) if lab == label]
            points = sorted((positions[i], done[metric][i]) for i in chosen)
            axis.plot([p for p, _ in points], [m for _, m in points], marker="o", label=label or None)
        axis.set_xticks(range(len(levels)), levels)
        axis.set_xlabel(parameter)
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        if others:
            axis.legend(fontsize=7)
    failed = frame.filter(pl.col("status") != "ok").height
    figure.suptitle(f"{metric} across {frame.height} jobs" + (f" ({failed} failed or unfinished)" if failed else ""))
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=120, format="png")
    plt.close(figure)


def _natural(text: str) -> list:
    """Sort key that orders "dim=8" before "dim=16"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def summarise(sweep_dir: Path, metric: str = "val/ndcg@20") -> pl.DataFrame:
    frame, swept = collect(sweep_dir)
    if metric not in frame.columns:
        if frame.filter(pl.col("status") == "ok").height:  # a typo, not a sweep whose jobs all failed
            known = sorted(c for c in frame.columns if "/" in c and frame.schema[c].is_numeric())
            raise SystemExit(f"error: no job reports {metric}; choose one of {known}")
        frame = frame.with_columns(pl.lit(None, dtype=pl.Float64).alias(metric))
    cut_off = metric.rpartition("@")[2]
    tests = [column for column in (f"test/recall@{cut_off}", f"test/ndcg@{cut_off}") if column in frame.columns]
    extra = [column for column in ("seconds",) if column in frame.columns]
    best = frame.filter(pl.col("status") == "ok").sort(metric, descending=True, nulls_last=True)["job"].head(1)
    frame = frame.with_columns(best=pl.when(pl.col("job").is_in(best.implode())).then(pl.lit("best")).otherwise(
        pl.lit("")))
    columns = ["job", *swept, metric, *tests, *extra, "status", "best"] + (["error"] if "error" in frame.columns
                                                                            else [])
    table = frame.select(columns)
    with atomic_path(sweep_dir / "summary.csv") as temporary:
        table.write_csv(temporary)
    write_text(markdown(table, columns), sweep_dir / "summary.md")
    if table.filter(pl.col("status") == "ok").height:
        plot(frame, swept, metric, sweep_dir / "summary.png")
    return table


def report(sweep_dir: Path, metric: str) -> None:
    """Summarise the sweep and print its table and where it is."""
    table = summarise(sweep_dir, metric)
    print((sweep_dir / "summary.md").read_text(), end="")
    print(f"\n{table.height} jobs in {sweep_dir}; table and plot in {sweep_dir}/summary.*")


def latest_sweep(multirun: Path = MULTIRUN) -> Path:
    """The sweep under ``multirun/`` whose newest job changed last."""
    sweeps = {folder.parent for folder in multirun.glob("*/*/*") if (folder / ".hydra" / "overrides.yaml").exists()}
    if not sweeps:
        sys.exit(f"error: no sweep under {multirun.resolve()} (twotower-train -m writes them there)")
    return max(sweeps, key=lambda sweep: max(job.stat().st_mtime for job in sweep.iterdir()))


class SweepSummary(Callback):
    """Ends a multirun of ``twotower-train`` with its table and its directory."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            report(sweep_dir, config.get("monitor", "val/ndcg@20"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", help="a sweep directory, or latest: the newest under multirun/")
    parser.add_argument("--metric", default="val/ndcg@20")
    args = parser.parse_args(argv)
    sweep_dir = latest_sweep() if args.sweep_dir == "latest" else Path(args.sweep_dir)
    if not sweep_dir.is_dir():
        sys.exit(f"error: sweep directory not found: {sweep_dir}")
    report(sweep_dir, args.metric)


if __name__ == "__main__":
    main()
