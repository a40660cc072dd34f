"""Benchmark results as data: what a benchmark script writes for the documentation's benchmark page (the
schema is in ``docs/hooks/generate.py``), with the machine, the command and the code version it measured."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

DOCS_RESULTS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


def machine() -> str:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()}-core {platform.machine()} CPU ({platform.processor() or 'unknown'}), {device}"


def version() -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# The code measured: read when the benchmark starts, not when it ends (the tree may change meanwhile).
VERSION = version()


def table(title: str, columns: list[str], rows: list[list[Any]], notes: str | None = None) -> dict[str, Any]:
    return {"title": title, "columns": columns, "rows": rows, **({"notes": notes} if notes else {})}


def markdown(columns: list[str], rows: list[list[Any]]) -> str:
    """A table as Markdown, for the terminal and the README (integers with thousands separators)."""
    cells = [[f"{cell:,}" if isinstance(cell, int) and not isinstance(cell, bool) else str(cell) for cell in row]
             for row in rows]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def write_results(path: Path, benchmark: str, tables: list[dict[str, Any]], description: str | None = None) -> None:
    """``path``: a JSON file of the benchmark page's schema, for the run of this process's command."""
    results = {"benchmark": benchmark, "command": shlex.join(["python", *sys.argv]), "machine": machine(),
               "version": VERSION, "date": datetime.date.today().isoformat(),
               **({"description": description} if description else {}), "tables": tables}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {path}")
