"""The configuration tells the truth: every option composes, Python defaults equal the YAML's, the switches
users reach for work without "+", and the progress bar shows a loss that moves."""

import importlib.util
import inspect
import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import twotower.conf
from hydra.utils import get_method, instantiate
from lightning import Callback, Trainer
from omegaconf import OmegaConf

from tests.conftest import compose_train
from twotower.commands.train import main as train_main
from twotower.data.synthetic import planted_interactions
from twotower.errors import TwoTowerError
from twotower.training.train import train

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
    # "auto" is decided by the log's shape (twotower.training.sizing, pinned in test_sizing.py), not a Python default.
    differing = [(name, value, default) for name, value, default in pairs
                 if isinstance(value, (int, float, str, bool, list, type(None))) and value not in (default, "auto")]
    assert not differing, f"{key}: YAML and Python defaults differ (name, yaml, python): {differing}"


def test_trainer_switches_need_no_plus(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, "trainer.max_steps=7", "trainer.limit_val_batches=0",
                        "trainer.limit_train_batches=0.5", "trainer.gradient_clip_val=1.0", "trainer.precision=32")
    trainer: Trainer = instantiate(cfg.trainer, logger=False)
    assert trainer.max_steps == 7 and trainer.limit_val_batches == 0 and trainer.limit_train_batches == 0.5
    assert trainer.gradient_clip_val == 1.0


def test_optuna_search_without_the_extra_says_what_to_install(capsys: pytest.CaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def without_optuna(name: str, *args: object) -> object:  # as in an environment without the sweep extra
        return None if name.startswith("hydra_plugins.hydra_optuna") else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_optuna)
    monkeypatch.setattr(sys, "argv", ["twotower-train", "-m", "hparams_search=optuna"])
    with pytest.raises(SystemExit) as exit_info:
        train_main()
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in stderr
    assert "pip install -e '.[sweep]'" in stderr.strip().splitlines()[-1]


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

    monkeypatch.setattr("twotower.training.fitting.instantiate", with_watcher)
    train(compose_train(tmp_path / "run", "data=interactions", f"data.path={tmp_path / 'log.csv'}",
                        "trainer.max_epochs=1", "final_fit=false", "loss=softmax", "datamodule.batch_size=64"))
    # ~40 steps in the epoch (of pairs), fewer than the logger's interval of 50: the bar still shows a new
    # value every 10 steps.
    assert 30 <= len(watcher.shown) < 50
    assert len(set(watcher.shown)) >= len(watcher.shown) // 10, watcher.shown


LOGGER_FILES = {  # logger config -> a file it must write, relative to the run directory
    "csv": "logs/metrics.csv",
    "tensorboard": "logs/tensorboard/events.out.tfevents.*",
    "mlflow": "logs/mlflow.db",
    "wandb": "logs/wandb/offline-run-*/run-*.wandb",
}
LOGGER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",), "wandb": ("wandb",)}


@pytest.mark.parametrize("logger", sorted(LOGGER_FILES))
def test_every_logger_writes_its_files(logger: str, tmp_path: Path) -> None:
    packages = LOGGER_PACKAGES.get(logger, ())
    if packages and not any(importlib.util.find_spec(name) for name in packages):
        pytest.skip(f"{logger} needs {' or '.join(packages)}, which is not installed")
    planted_interactions(n_users=80, n_items=40, n_clusters=4, seed=1).write_csv(tmp_path / "log.csv")
    cfg = compose_train(tmp_path / "run", "data=interactions", f"data.path={tmp_path / 'log.csv'}", f"logger={logger}",
                        "trainer.max_epochs=2", "model.dim=8", "show_similar_to=null", "final_fit=false")
    train(cfg)
    written = list((tmp_path / "run").glob(LOGGER_FILES[logger]))
    assert written and all(path.stat().st_size > 0 for path in written), sorted((tmp_path / "run").rglob("*"))
    if logger == "mlflow":  # the validation metric reached the store ('@' is not allowed in MLflow's names)
        with sqlite3.connect(written[0]) as store:
            keys = {key for (key,) in store.execute("select distinct key from metrics")}
        assert "val/ndcg20" in keys, keys


def test_scheduler_and_weight_decay_reach_the_optimizer(tmp_path: Path) -> None:
    planted_interactions(n_users=80, n_items=40, n_clusters=4, seed=1).write_csv(tmp_path / "log.csv")
    train(compose_train(tmp_path / "run", "data=interactions", f"data.path={tmp_path / 'log.csv'}", "scheduler=cosine",
                        "model.weight_decay=0.001", "trainer.max_epochs=3", "model.dim=8", "show_similar_to=null",
                        "final_fit=false", "callbacks.early_stopping.patience=10"))
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    group = state["optimizer_states"][0]["param_groups"][0]
    assert group["weight_decay"] == 0.001
    # Cosine over trainer.max_epochs=3 from lr 0.01 down to eta_min=0, stepped once per finished epoch.
    schedule = state["lr_schedulers"][0]
    assert schedule["T_max"] == 3 and schedule["last_epoch"] >= 1
    assert group["lr"] == pytest.approx(0.01 * (1 + math.cos(math.pi * schedule["last_epoch"] / 3)) / 2)


def test_adam_is_fused_unless_clipping_under_mixed_precision_forbids_it(tmp_path: Path) -> None:
    planted_interactions(n_users=80, n_items=40, n_clusters=4, seed=1).write_csv(tmp_path / "log.csv")
    common = ["data=interactions", f"data.path={tmp_path / 'log.csv'}", "trainer.max_epochs=1", "model.dim=8",
              "show_similar_to=null", "final_fit=false"]
    for name, extra, fused in [("plain", [], True),
                               ("clipped", ["trainer.gradient_clip_val=1.0", "trainer.precision=bf16-mixed"], None)]:
        train(compose_train(tmp_path / name, *common, *extra))
        state = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        assert state["optimizer_states"][0]["param_groups"][0]["fused"] is fused, name


def test_an_optimizer_without_fused_asks_to_drop_it(tmp_path: Path) -> None:
    planted_interactions(n_users=80, n_items=40, n_clusters=4, seed=1).write_csv(tmp_path / "log.csv")
    cfg = compose_train(tmp_path / "run", "data=interactions", f"data.path={tmp_path / 'log.csv'}",
                        "model.optimizer._target_=torch.optim.RMSprop", "trainer.max_epochs=1", "model.dim=8",
                        "show_similar_to=null", "final_fit=false")
    with pytest.raises(TwoTowerError, match=r"~model\.optimizer\.fused"):
        train(cfg)


def test_two_trial_optuna_sweep_runs_end_to_end(tmp_path: Path) -> None:
    if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
        pytest.skip("the Optuna sweeper is not installed (pip install -e '.[sweep]')")
    planted_interactions(n_users=80, n_items=40, n_clusters=4, seed=1).write_csv(tmp_path / "log.csv")
    result = subprocess.run(
        [sys.executable, "-m", "twotower.commands.train", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2",
         "hydra.sweeper.sampler.n_startup_trials=2", "data=interactions", f"data.path={tmp_path / 'log.csv'}",
         "trainer.max_epochs=1", "logger=none", "trainer.enable_progress_bar=false", "show_similar_to=null",
         f"hydra.sweep.dir={tmp_path / 'sweep'}"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = sorted((tmp_path / "sweep").glob("[0-9]*/run.json"))
    assert len(trials) == 2
    best = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    values = [json.loads(trial.read_text())["metrics"]["val/ndcg@20"] for trial in trials]
    assert best.best_value == pytest.approx(max(values))


def test_evaluation_does_not_import_lightning() -> None:
    code = "import sys, twotower.commands.eval; print(sorted(m for m in sys.modules if m.split('.')[0] == 'lightning'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr[-2000:]
