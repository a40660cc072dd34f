"""The documentation: the site builds without a warning, its configuration reference covers every option in
conf/, every option is described there, and a command's help text lists its options."""

from __future__ import annotations

import html
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from twotower import options as opts

ROOT = Path(__file__).resolve().parents[1]
BUILD_SECONDS = 300


def described_configs() -> list[str]:
    """The configs whose keys are options of their own (presets only set other configs' options)."""
    return [config for config in opts.configs() if not opts.is_preset(config)]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built once in strict mode (any warning fails it) into a temporary folder."""
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason="the docs extra is not installed")
    site_dir = tmp_path_factory.mktemp("site")
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
                           cwd=ROOT, capture_output=True, text=True, timeout=BUILD_SECONDS,
                           env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stdout}\n{build.stderr}"
    return site_dir


@pytest.fixture(scope="module")
def hook() -> ModuleType:
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    spec = importlib.util.spec_from_file_location("docs_hook", ROOT / "docs" / "hooks" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_site_builds_in_strict_mode(site: Path) -> None:
    assert (site / "index.html").is_file()
    assert (site / "api" / "retrieval" / "index.html").is_file()


def test_configuration_page_lists_every_option(site: Path) -> None:
    page = (site / "configuration" / "index.html").read_text(encoding="utf-8")
    missing = [opts.cli_key(config, option.key) for config in described_configs() for option in opts.options(config)
               if f"<code>{html.escape(opts.cli_key(config, option.key))}</code>" not in page]
    assert not missing, f"options of conf/ missing from the configuration page: {missing}"
    assert "<!-- options" not in page


def test_every_option_is_described() -> None:
    offenders = [f"{opts.cli_key(config, option.key)} (conf/{config}.yaml)" for config in described_configs()
                 for option in opts.options(config) if not option.description]
    assert not offenders, ("options without a comment in conf/ (add one on the line above the key):\n  "
                           + "\n  ".join(offenders))


def test_benchmark_tables_come_from_the_result_files(site: Path) -> None:
    page = (site / "benchmarks" / "index.html").read_text(encoding="utf-8")
    results = sorted((ROOT / "docs" / "benchmarks").glob("*.json"))
    assert results, "no benchmark results committed"
    for path in results:
        result = json.loads(path.read_text(encoding="utf-8"))
        for expected in (result["machine"], f"<code>{result['version']}</code>", html.escape(result["command"]),
                         html.escape(result["tables"][0]["title"])):
            assert expected in page, f"{path.name}: {expected!r} is not on the benchmarks page"
    assert "<!-- benchmarks" not in page


def test_a_malformed_benchmark_file_is_refused(hook: ModuleType) -> None:
    result = {"benchmark": "b", "command": "c", "version": "v", "date": "d",
              "tables": [{"title": "t", "columns": ["a", "b"], "rows": [[1, 2]]}]}
    with pytest.raises(ValueError, match="machine"):
        hook.checked(result, Path("broken.json"))
    result["machine"] = "m"
    result["tables"][0]["rows"].append([1])
    with pytest.raises(ValueError, match="one cell per column"):
        hook.checked(result, Path("broken.json"))


def test_options_skip_hydra_keys_and_recurse_into_mappings() -> None:
    keys = {option.key: option for option in opts.options("model/default")}
    assert keys["optimizer.lr"].default == "0.01"
    assert keys["ks"].default == "[10, 20]"
    assert not any(part.startswith("_") and part.endswith("_") for key in keys for part in key.split("."))
    train = [option.key for option in opts.options("train")]
    assert not any(key.split(".")[0] in ("defaults", "hydra") for key in train)
    assert "datamodule.batch_size" in train


def test_help_text_lists_every_retrieve_option() -> None:
    text = opts.help_text("twotower-retrieve", "retrieve")
    assert text.startswith("usage: twotower-retrieve")
    for option in opts.options("retrieve"):
        assert f"\n  {option.key}={option.default}\n" in text
        assert not option.description or option.description.split()[0] in text
    assert max(len(line) for line in text.splitlines()) <= opts.WIDTH


def test_the_readme_headline_is_the_benchmark_pages(tmp_path: Path) -> None:
    """The README's benchmark table holds the rows of the committed quality results, so it cannot drift."""
    import json

    results = json.loads((Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "quality.json").read_text())
    headline = results["tables"][0]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme[readme.index("<!-- headline -->"):readme.index("<!-- /headline -->")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in block.splitlines()[3:] if line.strip()]
    assert rows == [[str(cell) for cell in row] for row in headline["rows"]]
    assert block.splitlines()[1] == "| " + " | ".join(headline["columns"]) + " |"
