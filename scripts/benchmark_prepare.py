"""Out-of-core preparation against the in-memory data path: time and peak memory on large logs.

    python scripts/make_synthetic.py --interactions 10_000_000 --out data/synthetic-10m.parquet
    python scripts/benchmark_prepare.py data/synthetic-10m.parquet data/synthetic-100m/ --train-on 0 1 \
        [--out docs/benchmarks/prepare.json]

For each log (a Parquet file, or a folder of them): ``twotower-prepare`` in a fresh process, its wall time and
its peak resident memory (the kernel's high-water mark of that process), and, for logs up to
``--in-memory-up-to`` rows, the in-memory path (``InteractionDataModule.setup`` and its loaders, what every DDP
process does without preparation) measured the same way in a fresh process, side by side.

Then training throughput on the logs ``--train-on`` names (the first by default): one epoch of ``--steps`` steps of
``loss=softmax`` (pairs, batches of ``--batch-size``) through ``twotower-train``, from the log in memory in one
process (logs of at most ``--in-memory-up-to`` rows), and from its prepared shards in one and in two processes
(``trainer=ddp``, gloo on CPU): interactions per second over the epoch (its line in ``train.log``, a small
validation included) and the peak resident memory of the largest process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
from results import markdown, table, write_results

IN_MEMORY = """
import sys
from twotower.data.datamodule import InteractionDataModule
from twotower.data.readers import InteractionFileReader
from twotower.data.sampling import NegativeSampler
from twotower.data.splits import RandomSplit

datamodule = InteractionDataModule(InteractionFileReader(sys.argv[1]), RandomSplit(), NegativeSampler())
datamodule.setup("fit")
datamodule.train_dataloader(), datamodule.val_dataloader()
"""


def measured(command: list[str]) -> tuple[float, int]:
    """Wall seconds and peak resident bytes of ``command``, run as a child process of its own."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command[:3]} failed: {process.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss * 1024  # kilobytes on Linux


def epoch_seconds(run_dir: Path) -> float:
    """The seconds of the selection's first epoch, from its line in the run's ``train.log``."""
    line = next(line for line in (run_dir / "train.log").read_text().splitlines() if "selection, epoch 1/1" in line)
    return float(line.rsplit("·", 1)[1].split()[0])


def throughput(log: Path, folder: Path, steps: int, batch_size: int, in_memory: bool) -> list[list[object]]:
    """Interactions per second and the largest process's peak memory, from prepared shards and (``in_memory``)
    with the whole log in memory."""
    prepared = folder / "prepared"
    measured([sys.executable, "-m", "twotower.commands.prepare", f"data.path={log}", f"out={prepared}", "shards=8"])
    common = ["loss=softmax", f"datamodule.batch_size={batch_size}", "datamodule.val_users=100",
              "trainer.max_epochs=1", f"trainer.limit_train_batches={steps}", "final_fit=false", "test=false",
              "model.temperature=0.15", "model.dim=64", "progress=lines", "show_similar_to=null",
              "index=exact"]
    variants = {"in memory, 1 process": [f"data.path={log}", "data=interactions"]} if in_memory else {}
    variants |= {"prepared, 1 process": [f"data.path={prepared}", "data=prepared"],
                 "prepared, 2 processes": [f"data.path={prepared}", "data=prepared", "trainer=ddp"]}
    rows = []
    for name, overrides in variants.items():
        run_dir = folder / name.replace(" ", "").replace(",", "-")
        seconds, peak = measured([sys.executable, "-m", "twotower.commands.train", *overrides, *common,
                                  f"hydra.run.dir={run_dir}"])
        processes = 2 if "trainer=ddp" in overrides else 1
        rows.append([name, steps, round(processes * steps * batch_size / epoch_seconds(run_dir)), round(peak / 1e9, 2),
                     round(seconds, 1)])
        print(markdown(TRAIN_COLUMNS, rows[-1:]), flush=True)
    return rows


TRAIN_COLUMNS = ["data path", "steps per process", "interactions/s", "largest process's peak RSS (GB)",
                 "whole command (s)"]


def rows_of(path: Path) -> int:
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    return pl.scan_parquet(files).select(pl.len()).collect().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", type=Path, nargs="+")
    parser.add_argument("--in-memory-up-to", type=int, default=20_000_000,
                        help="measure the in-memory path on logs of at most this many rows")
    parser.add_argument("--steps", type=int, default=200, help="training steps per process in the throughput runs")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--no-training", action="store_true", help="measure preparation only")
    parser.add_argument("--train-on", type=int, nargs="+", default=[0],
                        help="the logs (by their place among LOGS, from 0) to measure training on; the in-memory path "
                             "only on those of at most --in-memory-up-to rows")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    columns = ["log rows", "prepare (s)", "prepare peak RSS (GB)", "shards", "in-memory setup (s)",
               "in-memory peak RSS (GB)"]
    rows = []
    for log in args.logs:
        count = rows_of(log)
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "prepared"
            seconds, peak = measured([sys.executable, "-m", "twotower.commands.prepare", f"data.path={log}",
                                      f"out={out}"])
            shards = len(json.loads((out / "prepared.json").read_text())["shards"])
        row = [count, round(seconds, 1), round(peak / 1e9, 2), shards, "-", "-"]
        if count <= args.in_memory_up_to and log.is_file():
            seconds, peak = measured([sys.executable, "-c", IN_MEMORY, str(log)])
            row[4:] = [round(seconds, 1), round(peak / 1e9, 2)]
        rows.append(row)
        print(markdown(columns, rows[-1:]), flush=True)
    print(markdown(columns, rows))
    tables = [table("twotower-prepare against the in-memory data path", columns, rows,
                    "Peak RSS is each fresh process's high-water mark, imports included. The in-memory path reads "
                    "the whole log into every process; twotower-prepare holds the vocabularies and one shard.")]
    for place in [] if args.no_training else args.train_on:
        count = rows[place][0]
        with tempfile.TemporaryDirectory() as folder:
            trained = throughput(args.logs[place], Path(folder), args.steps, args.batch_size,
                                 in_memory=count <= args.in_memory_up_to)
        print(markdown(TRAIN_COLUMNS, trained))
        tables.append(table(f"Training throughput on the {count:,}-row log", TRAIN_COLUMNS, trained,
                            "Two processes share the machine's 2 cores, so they show the data path's overhead, not "
                            "a speed-up; the peak RSS is the largest process's, its share of the log included."))
    if args.out:
        write_results(args.out, "Preparing large logs", tables,
                      description="Synthetic logs from scripts/make_synthetic.py (Parquet), on a 2-core CPU.")


if __name__ == "__main__":
    main()
