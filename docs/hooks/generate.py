"""MkDocs hook: fill the generated parts of the pages at build time, from ``conf/`` and from benchmark results,
so that the site cannot drift from the configs the commands compose or from the numbers a benchmark wrote.

Markers, each an HTML comment alone on a line of a page:

- ``<!-- options -->``: the reference of every config, from ``twotower.options``: each command's own options,
  its config groups, and a table per choice of each group (option, default, description);
- ``<!-- options CONFIG -->``: the table of one config file, e.g. ``<!-- options data/interactions -->``;
- ``<!-- benchmarks -->``: every result file ``docs/benchmarks/*.json``, those of ``FIRST`` first (quality before
  speed before the rest), the others in file-name order.

A benchmark result file is JSON of this shape (the ``//`` comments are for this page only). The benchmark
scripts write it; every key not marked optional is required, and the build fails naming the file and the key
when one is missing or of the wrong type:

    {
      "benchmark": "Ranking quality",            // its name: the section heading
      "command": "python scripts/benchmark_quality.py --out benchmark-quality.json",   // exactly as run
      "machine": "2-core CPU",                   // where it ran
      "version": "c3d72cd",                      // `git describe --always --dirty` of the code measured
      "date": "2026-11-24",                      // ISO date of the run
      "description": "What was measured, how.",  // optional, Markdown
      "tables": [
        {
          "title": "ml-1m (6,039 users, 3,628 items)",
          "columns": ["model", "Recall@20", "NDCG@20"],
          "rows": [["EASE", 0.282, 0.3858], ["**twotower**", "**0.2881**", 0.3817]],   // one cell per column
          "notes": "Markdown under the table."   // optional
        }
      ]
    }

Cells are strings (Markdown), numbers or null (an empty cell). Numbers are shown as the file writes them
(``0.3570`` keeps its zero); a column whose cells are all numbers is right-aligned. Each table is rendered
with the file's machine, version, date and command under it.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable
from decimal import Decimal
from importlib.metadata import entry_points
from importlib.resources import files
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

from twotower import options as opts

DOCS = Path(__file__).resolve().parents[1]
BENCHMARKS = DOCS / "benchmarks"
MARKER = re.compile(r"^<!--\s*(options|benchmarks)(?:\s+(\S+))?\s*-->\s*$", re.MULTILINE)
# JSON numbers: floats are read as Decimal, so that a cell shows the digits the file wrote.
NUMBER = (int, Decimal)
# Characters Markdown would read as markup in a comment's prose (outside its `code` spans).
MARKUP = str.maketrans({char: f"\\{char}" for char in "\\*_[]|"} | {"<": "&lt;", ">": "&gt;", "&": "&amp;"})


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """Replace each marker of a page with what it stands for."""

    def expand(match: re.Match[str]) -> str:
        kind, argument = match.groups()
        try:
            if kind == "benchmarks":
                return benchmarks_markdown(in_reading_order(BENCHMARKS.glob("*.json")))
            return options_table(argument) if argument else options_reference()
        except (ValueError, KeyError, TypeError) as error:
            raise PluginError(f"{page.file.src_path}: {match.group(0)}: {error}") from error

    return MARKER.sub(expand, markdown)


def on_serve(server: Any, config: Any, builder: Any) -> Any:
    """``mkdocs serve`` rebuilds when a config changes, as it does for a page (benchmarks are under docs/)."""
    server.watch(str(files("twotower.conf")))
    return server


def prose(text: str) -> str:
    """A comment's text as Markdown: its `code` spans kept, any other markup character taken literally."""
    return "".join(part if part.startswith("`") else part.translate(MARKUP) for part in re.split(r"(`[^`]*`)", text))


def code(text: str) -> str:
    """``text`` as an inline code span, whatever backticks it holds."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def summary_markdown(config: str) -> str:
    """A config's opening comment: prose paragraphs, and its indented lines (command examples) as code."""
    blocks: list[str] = []
    examples: list[str] = []
    for paragraph in opts.summary(config):
        if paragraph.startswith(" "):
            examples.append(paragraph)
            continue
        if examples:
            blocks.append(code_block(examples))
            examples = []
        blocks.append(prose(paragraph))
    if examples:
        blocks.append(code_block(examples))
    return "\n\n".join(blocks)


def code_block(lines: list[str], language: str = "text") -> str:
    indent = min(len(line) - len(line.lstrip()) for line in lines)
    return "\n".join([f"```{language}", *(line[indent:] for line in lines), "```"])


def options_table(config: str) -> str:
    """One config file's options as a table (option as the command line names it, default, description)."""
    rows = [f"| {code(opts.cli_key(config, option.key))} | {code(option.default)} | {prose(option.description)} |"
            for option in opts.options(config)]
    if not rows:
        return "No options of its own."
    return "\n".join(["| option | default | description |", "|---|---|---|", *rows])


def commands() -> dict[str, str]:
    """Primary config -> the command that runs it: the installed ``twotower.commands.NAME`` entry points, whose
    module is named after its config (``twotower-index`` runs ``reindex``)."""
    found = {}
    for script in entry_points(group="console_scripts"):
        module = script.value.partition(":")[0]
        if module.startswith("twotower.commands."):
            found[module.rpartition(".")[2]] = script.name
    return found


def config_section(config: str, level: int, title: str, anchor: str) -> list[str]:
    """A heading, the config's opening comment, and its options (for a preset, the file itself)."""
    lines = [f"{'#' * level} {title} {{#{anchor}}}", ""]
    if opts.is_preset(config):
        return [*lines, f"A preset: it sets options of other configs (`conf/{config}.yaml`).", "",
                code_block(opts.source(config).rstrip().splitlines(), "yaml"), ""]
    described = summary_markdown(config)
    return [*lines, *([described, ""] if described else []), options_table(config), ""]


def options_reference() -> str:
    """Every config: the training command and its groups first, each group's choices, then the other commands."""
    names = commands()
    primary = [config for config in opts.configs() if "/" not in config]
    ordered = sorted(primary, key=lambda config: (config != "train", config))
    known = opts.groups()
    lines: list[str] = []
    for config in ordered:
        command = names.get(config, config)
        lines += config_section(config, 2, f"{command} (`conf/{config}.yaml`)", f"command-{config}")
        chosen = opts.default_choices(config)
        if chosen:
            lines += [f"Config groups of `{command}`: pick a file with `GROUP=CHOICE`, set one of its options with "
                      "`GROUP.KEY=VALUE`.", "", "| group | choices | default |", "|---|---|---|"]
            for group, choice in chosen.items():
                links = ", ".join(f"[{code(name)}](#{group}-{name})" for name in known.get(group, []))
                lines.append(f"| [{code(group)}](#group-{group}) | {links} | {code(choice)} |")
            lines.append("")
        if config == "train":
            lines += ["## Config groups {#config-groups}", ""]
            for group, choices in known.items():
                lines += [f"### {code(group + '=')} {{#group-{group}}}", ""]
                for choice in choices:
                    lines += config_section(f"{group}/{choice}", 4, code(f"{group}={choice}"), f"{group}-{choice}")
    return "\n".join(lines)


def cell(value: Any) -> str:
    if value is None:
        return ""
    return str(value).replace("\n", " ").replace("|", "\\|")


def checked(data: Any, path: Path) -> dict[str, Any]:
    """The result file's content, or a ValueError naming what breaks the schema (see the module docstring)."""

    def need(mapping: Any, key: str, kind: type | tuple[type, ...], where: str, optional: bool = False) -> Any:
        if not isinstance(mapping, dict) or (key not in mapping and not optional):
            raise ValueError(f"{path.name}: {where} needs the key {key!r}")
        value = mapping.get(key)
        if (value is None and not optional) or (value is not None and not isinstance(value, kind)):
            raise ValueError(f"{path.name}: {where}{key} must be {kind}, got {value!r}")
        return value

    for key in ("benchmark", "command", "machine", "version", "date"):
        need(data, key, str, "")
    need(data, "description", str, "", optional=True)
    for number, table in enumerate(need(data, "tables", list, "")):
        where = f"tables[{number}]."
        need(table, "title", str, where)
        need(table, "notes", str, where, optional=True)
        columns = need(table, "columns", list, where)
        for row in need(table, "rows", list, where):
            if not isinstance(row, list) or len(row) != len(columns):
                raise ValueError(f"{path.name}: {where}rows: {row!r} does not have one cell per column {columns}")
            if any(value is not None and not isinstance(value, (*NUMBER, str)) for value in row):
                raise ValueError(f"{path.name}: {where}rows: {row!r}: cells are strings, numbers or null")
    return data


def benchmark_table(table: dict[str, Any], result: dict[str, Any]) -> list[str]:
    numeric = [all(isinstance(row[column], NUMBER) for row in table["rows"]) and bool(table["rows"])
               for column in range(len(table["columns"]))]
    lines = [f"### {table['title']}", "",
             "| " + " | ".join(cell(name) for name in table["columns"]) + " |",
             "|" + "|".join("---:" if right else "---" for right in numeric) + "|"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in table["rows"]]
    lines += [""] + ([table["notes"], ""] if table.get("notes") else [])
    lines += [f"<small>{html.escape(result['machine'])}, version {code(result['version'])}, "
              f"{html.escape(result['date'])}: {code(result['command'])}</small>", ""]
    return lines


FIRST = ("quality", "speed")  # what a reader looks for first: how good, then how fast


def in_reading_order(paths: Iterable[Path]) -> list[Path]:
    return sorted(paths, key=lambda path: (FIRST.index(path.stem) if path.stem in FIRST else len(FIRST), path.name))


def benchmarks_markdown(paths: list[Path]) -> str:
    """Every result file as a section: its description, then each of its tables with where it was measured."""
    if not paths:
        return "No benchmark results yet."
    lines: list[str] = []
    for path in paths:
        try:
            result = checked(json.loads(path.read_text(encoding="utf-8"), parse_float=Decimal), path)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path.name}: not JSON: {error}") from error
        lines += [f"## {result['benchmark']} {{#benchmark-{path.stem}}}", ""]
        lines += [result["description"], ""] if result.get("description") else []
        lines += [f"Raw results: [`benchmarks/{path.name}`](benchmarks/{path.name}).", ""]
        for table in result["tables"]:
            lines += benchmark_table(table, result)
    return "\n".join(lines)
