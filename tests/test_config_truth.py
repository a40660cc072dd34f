"""The configuration tells the truth: every option composes, Python defaults equal the YAML's, the switches
users reach for work without "+", and the progress bar shows a loss that moves."""

import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import twotower.conf
from hydra.utils import get_method, instantiate
from lightning import Callback, Trainer
from omegaconf import OmegaConf

from tests.conftest import compose_train
from twotower.synthetic import planted_interactions
from twotower.train import train

CONF = Path(twotower.conf.__file__).parent  # the package Hydra composes from
NEEDS_PLUGIN = {("hparams_search", "optuna"): "hydra_plugins.hydra_optuna_sweeper"}
OPTIONS = [(group.name, option.stem) for group in sorted(CONF.iterdir()) if group.is_dir() and group.name != "hydra"
           for option in sorted(group.glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_of_every_group_composes(group: str, option: str, tmp_path: Path) -> None:
    plugin = NEEDS_PLUGIN.get((group, option))
    if plugin and importlib.util.find_spec(plugin) is None:
        pytest.skip(f"{plugin} is not installed")
    cfg = compose_train(tmp_path, f"{group}={option}")
    assert cfg.get(group) is not None or group in ("experiment", "hparams_search")


def yaml_and_python_defaults(tmp_path: Path, override: str, key: str) -> list[tuple[str, object, object]]:
    """(name, YAML value, Python default) for each constructor argument the YAML node sets literally."""
    node = compose_train(tmp_path, override)[key] if override else compose_train(tmp_path)[key]
    signature = inspect.signature(get_method(node._target_))
    pairs = []
    for name, parameter in signature.parameters.items():
        if parameter.default is inspect.Parameter.empty or name not in node:
            continue
        value = OmegaConf.to_container(node, resolve=False)[name]
        if isinstance(value, str) and value.startswith("${"):
            continue  # filled from elsewhere in the config (the seed, the data's names)
        default = list(parameter.default) if isinstance(parameter.default, tuple) else parameter.default
        pairs.append((name, value, default))
    return pairs


@pytest.mark.parametrize(("override", "key"), [
    ("", "model"), ("", "datamodule"), ("sampler=uniform", "sampler"),
    ("split=random", "split"), ("split=temporal", "split"), ("index=annoy", "index"), ("index=exact", "index"),
])
def test_python_defaults_equal_the_yaml(override: str, key: str, tmp_path: Path) -> None:
    pairs = yaml_and_python_defaults(tmp_path, override, key)
    assert pairs, "nothing compared"
    differing = [(name, value, default) for name, value, default in pairs
                 if isinstance(value, (int, float, str, bool, list, type(None))) and value != default]
    assert not differing, f"{key}: YAML and Python defaults differ (name, yaml, python): {differing}"


def test_trainer_switches_need_no_plus(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, "trainer.max_steps=7", "trainer.limit_val_batches=0",
                        "trainer.limit_train_batches=0.5", "trainer.gradient_clip_val=1.0", "trainer.precision=32")
    trainer: Trainer = instantiate(cfg.trainer, logger=False)
    assert trainer.max_steps == 7 and trainer.limit_val_batches == 0 and trainer.limit_train_batches == 0.5
    assert trainer.gradient_clip_val == 1.0


@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is not None,
                    reason="the Optuna sweeper is installed")
def test_optuna_search_without_the_extra_says_what_to_install(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "twotower.train", "-m", "hparams_search=optuna",
                             f"hydra.sweep.dir={tmp_path}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "pip install -e '.[sweep]'" in result.stderr.strip().splitlines()[-1]


class ProgressBarLoss(Callback):
    """The loss the progress bar shows after each training batch of the first epoch."""

    def __init__(self) -> None:
        self.shown: list[float] = []

    def on_train_batch_end(self, trainer: Trainer, *args: object) -> None:
        if trainer.current_epoch == 0:
            self.shown.append(float(trainer.progress_bar_metrics["train/loss_step"]))


def test_progress_bar_loss_moves_within_a_short_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    planted_interactions(n_users=200, n_items=100, n_clusters=5, seed=2).write_csv(tmp_path / "log.csv")
    watcher = ProgressBarLoss()
    real = instantiate

    def with_watcher(config, *args, **kwargs):  # add the watcher to the selection run's callbacks
        if "callbacks" in kwargs and config.get("_target_") == "lightning.pytorch.Trainer":
            kwargs["callbacks"] = [*kwargs["callbacks"], watcher]
        return real(config, *args, **kwargs)

    monkeypatch.setattr("twotower.train.instantiate", with_watcher)
    train(compose_train(tmp_path / "run", "data=interactions", f"data.path={tmp_path / 'log.csv'}",
                        "trainer.max_epochs=1", "final_fit=false", "datamodule.batch_size=64"))
    # ~40 steps in the epoch, fewer than the logger's interval of 50: the bar still shows a new value every
    # 10 steps.
    assert 30 <= len(watcher.shown) < 50
    assert len(set(watcher.shown)) >= len(watcher.shown) // 10, watcher.shown
