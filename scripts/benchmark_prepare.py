"""Out-of-core preparation against the in-memory data path: time and peak memory on large logs.

    python scripts/make_synthetic.py --interactions 10_000_000 --out data/synthetic-10m.parquet
    python scripts/benchmark_prepare.py data/synthetic-10m.parquet data/synthetic-100m/ \
        [--out docs/benchmarks/prepare.json]

For each log (a Parquet file, or a folder of them): ``twotower-prepare`` in a fresh process, its wall time and
its peak resident memory (the kernel's high-water mark of that process), and, for logs up to
``--in-memory-up-to`` rows, the in-memory path (``InteractionDataModule.setup`` and its loaders, what every DDP
process does without preparation) measured the same way in a fresh process, side by side.
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


def rows_of(path: Path) -> int:
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    return pl.scan_parquet(files).select(pl.len()).collect().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", type=Path, nargs="+")
    parser.add_argument("--in-memory-up-to", type=int, default=20_000_000,
                        help="measure the in-memory path on logs of at most this many rows")
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
    if args.out:
        write_results(args.out, "Preparing large logs", [table(
            "twotower-prepare against the in-memory data path", columns, rows,
            "Peak RSS is each fresh process's high-water mark, imports included. The in-memory path reads the "
            "whole log into every process; twotower-prepare holds the vocabularies and one shard.")],
            description="Synthetic logs from scripts/make_synthetic.py (Parquet), on a 2-core CPU.")


if __name__ == "__main__":
    main()
