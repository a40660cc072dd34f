"""The options of the Hydra configs in ``conf/``: each key, its default and the comment that describes it.

The YAML comments in ``conf/`` are where an option is documented, once. The documentation site's
configuration pages and the commands' help text are generated from them here, so that neither can drift from
the configs the commands actually compose. The files are read as text (PyYAML for the structure, line
positions for the comments) rather than composed by Hydra: composition resolves interpolations and drops
comments, and what a reader needs is the default as written (``${run_dir}/checkpoints``, ``???``).

Conventions of ``conf/`` that this module relies on:

- the comment lines directly above a key (no blank line between) describe it, and so does a ``# ...`` after
  its value on the same line;
- a file's opening comment block describes the file (``summary``), never its first key;
- ``defaults``, the ``hydra`` block and Hydra's ``_target_``/``_partial_``/``_convert_`` keys are not
  options; a nested block mapping is a section whose keys are options, and one that builds an object (it has a
  ``_target_``, e.g. ``model.optimizer``) is an option as well, whose default is the class it builds;
- files under ``experiment/`` and ``hparams_search/`` declare ``# @package _global_``: they are presets that
  set other configs' options (``is_preset``), not options of their own.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources import files
from typing import TYPE_CHECKING

import yaml
from yaml.nodes import CollectionNode, MappingNode, Node, ScalarNode

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

# Keys Hydra itself reads: instantiation switches anywhere, composition and Hydra's settings at the top.
HYDRA_KEYS = frozenset({"_target_", "_partial_", "_convert_", "_recursive_", "_args_"})
TOP_LEVEL_SKIPPED = frozenset({"defaults", "hydra"})
# Config groups that configure Hydra itself (launchers, job logging) rather than twotower.
SKIPPED_GROUPS = frozenset({"hydra"})
PRESET_DIRECTIVE = "# @package _global_"
WIDTH = 100

_TRAILING_COMMENT = re.compile(r"\s*:?\s+#\s?(.*)$")


@dataclass(frozen=True)
class Option:
    """One option of a config file, as its YAML text says it.

    ``key`` is dotted and relative to the file (``limits.max_k``; ``n_trees`` in ``index/annoy``: on the
    command line that is ``index.n_trees``, see ``cli_key``). ``default`` is the value as written
    (``10``, ``null``, ``[10, 20]``, ``${run_dir}/logs``). ``description`` is the key's comment in one line,
    ``""`` when it has none.
    """

    key: str
    default: str
    description: str


def _conf() -> Traversable:
    """``conf/``, through the package it installs as, so that editable and regular installs both work."""
    return files("twotower.conf")


def source(config: str) -> str:
    """The YAML text of a config (``"index/annoy"``), read where the package installed ``conf/``."""
    path = _conf()
    for part in f"{config}.yaml".split("/"):
        path = path.joinpath(part)
    if not path.is_file():
        raise ValueError(f"no config {config!r} in conf/ (known: {', '.join(configs())})")
    return path.read_text(encoding="utf-8")


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def _comment_text(line: str) -> str:
    """A comment line without its marker, with the indentation after the marker kept (it marks examples)."""
    text = line.lstrip()[1:]
    return text[1:] if text.startswith(" ") else text


def _header_end(lines: list[str]) -> int:
    """The index of the first line after the file's opening comment block."""
    end = 0
    while end < len(lines) and _is_comment(lines[end]):
        end += 1
    return end


def configs() -> list[str]:
    """Every config's name, as ``options`` takes it: the primary configs (one per command), then each group's."""
    primary = sorted(entry.name.removesuffix(".yaml") for entry in _conf().iterdir()
                     if entry.is_file() and entry.name.endswith(".yaml"))
    return primary + [f"{group}/{choice}" for group, choices in groups().items() for choice in choices]


def groups() -> dict[str, list[str]]:
    """Config group -> its choices (the YAML files in its folder), without Hydra's own groups; a folder inside a
    group's folder is a group of its own (``model/user_tower``)."""
    found = {}

    def walk(folder: Traversable, group: str) -> None:
        choices = sorted(item.name.removesuffix(".yaml") for item in folder.iterdir() if item.name.endswith(".yaml"))
        if choices:
            found[group] = choices
        for entry in folder.iterdir():
            if entry.is_dir() and not entry.name.startswith(("_", ".")):
                walk(entry, f"{group}/{entry.name}")

    for entry in _conf().iterdir():
        if entry.is_dir() and entry.name not in SKIPPED_GROUPS and not entry.name.startswith(("_", ".")):
            walk(entry, entry.name)
    return dict(sorted(found.items()))


def is_preset(config: str) -> bool:
    """Whether the file is a ``_global_`` preset (``experiment=``, ``hparams_search=``): its keys set other
    configs' options, so they are documented where those options are defined."""
    return any(line.strip() == PRESET_DIRECTIVE for line in source(config).splitlines())


def cli_key(config: str, key: str) -> str:
    """The option as the command line names it: a group file's keys live under the group (``index.n_trees``),
    a primary config's and a preset's at the top."""
    group = config.rpartition("/")[0]
    return f"{group.replace('/', '.')}.{key}" if group and not is_preset(config) else key


def summary(config: str) -> list[str]:
    """The file's opening comment as paragraphs: prose lines joined into one line each, while a line indented
    inside the comment (a command example) stays a paragraph of its own, indentation kept, as written."""
    lines = source(config).splitlines()
    paragraphs: list[str] = []
    prose: list[str] = []
    for line in lines[:_header_end(lines)]:
        if line.strip() == PRESET_DIRECTIVE:
            continue
        text = _comment_text(line)
        if text.startswith(" ") or not text.strip():
            paragraphs.extend([" ".join(prose)] if prose else [])
            prose = []
            paragraphs.extend([text.rstrip()] if text.strip() else [])
        else:
            prose.append(text.strip())
    return paragraphs + ([" ".join(prose)] if prose else [])


def _description(lines: list[str], key: Node, value: Node, header_end: int) -> str:
    """The comment lines directly above ``key`` (not the file's opening block) and a trailing comment."""
    above = []
    line = key.start_mark.line - 1
    while line >= header_end and _is_comment(lines[line]):
        above.append(_comment_text(lines[line]))
        line -= 1
    # A block mapping's own line ends with the key; any other value ends on the line its comment is on.
    end = key.end_mark if isinstance(value, MappingNode) and not value.flow_style else value.end_mark
    trailing = _TRAILING_COMMENT.match(lines[end.line][end.column:]) if end.line < len(lines) else None
    parts = [*reversed(above), trailing.group(1) if trailing else ""]
    return " ".join(" ".join(parts).split())


def _default(node: Node, text: str) -> str:
    """A value's YAML text: scalars as written, collections in one line (flow style)."""
    if isinstance(node, ScalarNode):
        return text[node.start_mark.index:node.end_mark.index] or "null"

    def flow(node: Node) -> Node:
        if isinstance(node, CollectionNode):
            node.flow_style = True
            children = [part for pair in node.value for part in pair] if isinstance(node, MappingNode) else node.value
            for child in children:
                flow(child)
        return node

    return yaml.serialize(flow(node), Dumper=yaml.SafeDumper, width=1 << 20).strip()


def _target(node: MappingNode) -> Node | None:
    return next((value for key, value in node.value if key.value == "_target_"), None)


def _walk(node: MappingNode, prefix: str, text: str, lines: list[str], header_end: int) -> Iterator[Option]:
    for key, value in node.value:
        if key.value in HYDRA_KEYS or (not prefix and key.value in TOP_LEVEL_SKIPPED):
            continue
        name = f"{prefix}{key.value}"
        description = _description(lines, key, value, header_end)
        if isinstance(value, MappingNode) and not value.flow_style:
            target = _target(value)
            if target is not None:
                yield Option(name, _default(target, text), description)
            yield from _walk(value, f"{name}.", text, lines, header_end)
        else:
            yield Option(name, _default(value, text), description)


def options(config: str) -> list[Option]:
    """The options of one config file, in file order: ``"retrieve"``, ``"index/annoy"``, ``"model/default"``.

    Only the file's own keys: a file that extends another through ``defaults`` (``model/history``) lists what
    it adds or changes.
    """
    text = source(config)
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is None:  # a file of comments only, e.g. logger/none
        return []
    if not isinstance(root, MappingNode):
        raise ValueError(f"conf/{config}.yaml is not a mapping of options")
    lines = text.splitlines()
    return list(_walk(root, "", text, lines, _header_end(lines)))


def default_choices(config: str) -> dict[str, str]:
    """Group -> the choice a config's ``defaults`` list picks (``"null"`` where none is picked by default),
    leaving out ``override``s of Hydra's own groups and the file's own entries (``_self_``, a base file)."""
    root = yaml.safe_load(source(config)) or {}
    chosen = {}
    for entry in root.get("defaults", []) if isinstance(root, dict) else []:
        if not isinstance(entry, dict):
            continue
        for group, choice in entry.items():
            group = group.removeprefix("override ").strip().lstrip("/")
            if group.split("/")[0] not in SKIPPED_GROUPS:
                chosen[group] = "null" if choice is None else str(choice)
    return chosen


def _wrapped(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False,
                         break_long_words=False)


def help_text(command: str, config: str) -> str:
    """A ``--help`` text for ``command``, whose primary config is ``config``: what the file's opening comment
    says, each of its options with its default and description, and the config groups it picks from."""
    chosen = default_choices(config)
    usage = f"usage: {command} [KEY=VALUE ...]" + (" [GROUP=CHOICE ...]" if chosen else "")
    out = [usage, ""]
    for paragraph in summary(config):
        out.extend([paragraph] if paragraph.startswith(" ") else _wrapped(paragraph, ""))
    out.extend(["", "options:"])
    for option in options(config):
        out.append(f"  {option.key}={option.default}")
        out.extend(_wrapped(option.description, " " * 6))
    if chosen:
        known = groups()
        out.extend(["", "config groups (GROUP=CHOICE; GROUP.KEY=VALUE sets one of the chosen file's options):"])
        width = max(len(group) for group in chosen)
        for group, choice in chosen.items():
            choices = ", ".join(known.get(group, []))
            out.extend(_wrapped(f"{group:<{width}}  {choices} (default: {choice})", "  "))
    out.extend(["", f"{command} --cfg job prints the composed configuration without running."])
    return "\n".join(out) + "\n"
