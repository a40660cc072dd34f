"""No documented command can rot: every command in a fenced shell block of the README and the documentation
is checked (its options composed against the real configs, its script run with ``--help``), and the README's
quick start is run on a tiny log."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from tests.test_serve import free_port
from twotower.data.synthetic import planted_interactions

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
CONFIGS = {"twotower-train": "train", "twotower-eval": "eval", "twotower-retrieve": "retrieve",
           "twotower-index": "reindex", "twotower-serve": "serve", "twotower-plot": "plot"}
# Shell words that are not options of the command they follow.
NOT_OPTIONS = ("--help", "-h", "--cfg", "job", "-m", "--multirun")
# Options whose configs come from a Hydra plugin of an extra (the sweep extra), which may not be installed.
PLUGINS = {"hydra/launcher=slurm": "hydra_plugins.hydra_submitit_launcher",
           "hydra/launcher=parallel": "hydra_plugins.hydra_joblib_launcher",
           "hparams_search=optuna": "hydra_plugins.hydra_optuna_sweeper"}


def shell_commands(page: Path) -> list[str]:
    """The commands of a page's ```bash blocks: one per line, comments and prompts dropped, ``&&`` split."""
    commands = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", page.read_text(), re.DOTALL):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line.strip().removeprefix("$ ")).strip()
            if line and not line.startswith("#"):
                commands += [part.strip() for part in line.split("&&")]
    return commands


def documented(prefix: str) -> list[tuple[str, str]]:
    return [(page.relative_to(ROOT).as_posix(), command) for page in PAGES for command in shell_commands(page)
            if command.split()[0:1] and command.split()[0].endswith(prefix)]


def overrides(words: list[str]) -> list[str]:
    """The Hydra overrides of a command line (sweeps keep their first value: composing checks the key)."""
    found = []
    for word in words:
        if word in NOT_OPTIONS or "=" not in word:
            continue
        key, _, value = word.partition("=")
        found.append(f"{key}={value.split(',')[0]}" if not value.startswith(("[", "{", "'")) else word)
    return found


@pytest.mark.parametrize(("page", "command"), documented("twotower-train") + [
    pair for name in CONFIGS if name != "twotower-train" for pair in documented(name)],
    ids=lambda value: value if isinstance(value, str) and len(value) < 60 else None)
def test_every_documented_command_composes_with_the_real_configs(page: str, command: str) -> None:
    words = shlex.split(command.replace("$(", "(").replace("`", ""))
    if "TWOTOWER_ADMIN_TOKEN=" in words[0]:
        words = words[1:]
    program = words[0]
    if program == "twotower-sweep":
        return
    for option, plugin in PLUGINS.items():
        if option in words and importlib.util.find_spec(plugin) is None:
            pytest.skip(f"{option} needs {plugin} (the sweep extra)")
    assert program in CONFIGS, f"{page}: unknown command {program}"
    from twotower.training.train import register_resolvers

    register_resolvers()
    try:
        with initialize_config_module(config_module="twotower.conf", version_base="1.3"):
            compose(CONFIGS[program], overrides=overrides(words[1:]))
    except (HydraException, OmegaConfBaseException) as error:
        pytest.fail(f"{page}: `{command}` does not compose: {str(error).splitlines()[0]}")


@pytest.mark.parametrize(("page", "command"), [(page, command) for page, command in documented("python")
                                               if "scripts/" in command], ids=lambda value: value[:60])
def test_every_documented_script_exists_and_takes_its_options(page: str, command: str) -> None:
    words = shlex.split(command)
    script = ROOT / next(word for word in words if word.startswith("scripts/"))
    assert script.exists(), f"{page}: {script.name} does not exist"
    help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120,
                               cwd=ROOT)
    assert help_text.returncode == 0, help_text.stderr
    for option in (word.split("=")[0] for word in words if word.startswith("--")):
        assert option in help_text.stdout, f"{page}: {script.name} has no option {option}"


def test_the_readme_quick_start_runs(tmp_path: Path) -> None:
    """The README's three quick-start commands, as written, on a tiny log with the columns they name."""
    readme = shell_commands(ROOT / "README.md")
    quick = [command for command in readme if command.startswith(("twotower-train data=", "twotower-retrieve",
                                                                  "twotower-serve"))]
    assert [command.split()[0] for command in quick] == ["twotower-train", "twotower-retrieve", "twotower-serve"]
    log = planted_interactions(n_users=300, n_items=80, n_clusters=4, seed=2).rename(
        {"user_id": "customer", "item_id": "product"})
    log.write_csv(tmp_path / "clicks.csv")
    bin_dir = Path(sys.executable).parent
    train = [*shlex.split(quick[0]), "trainer.max_epochs=2", "trainer.enable_progress_bar=false"]
    trained = subprocess.run([str(bin_dir / train[0]), *train[1:]], cwd=tmp_path, capture_output=True, text=True,
                             timeout=600)
    assert trained.returncode == 0, trained.stderr
    assert "Run finished" in trained.stdout
    retrieve = shlex.split(quick[1])
    retrieved = subprocess.run([str(bin_dir / retrieve[0]), *retrieve[1:]], cwd=tmp_path, capture_output=True,
                               text=True, timeout=300)
    assert retrieved.returncode == 0 and "Top 10 items for user 196" in retrieved.stdout, retrieved.stderr
    readme = (ROOT / "README.md").read_text()
    snippet = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)[0]  # the Python beside the quick start
    ran = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    port = free_port()
    serve = shlex.split(quick[2])
    server = subprocess.Popen([str(bin_dir / serve[0]), *serve[1:], f"port={port}"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/recommend", params={"user": 196}, timeout=10)
                break
            except httpx.TransportError:
                assert server.poll() is None, server.stderr.read().decode()
                time.sleep(0.2)
        assert answer.status_code == 200 and len(answer.json()) == 10
    finally:
        server.terminate()
        server.wait(timeout=30)
