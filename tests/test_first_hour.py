"""A user's first hour, through the real commands: what used to fail silently, send output elsewhere, end
without a verdict or stop with a traceback. (What the data readers say about the log is in
``test_data_warnings.py``.)"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.test_bad_inputs import invoke
from twotower.commands import eval as eval_app
from twotower.commands import plot, retrieve, sweep
from twotower.data.synthetic import planted_interactions

N_USERS, N_ITEMS = 150, 60


def write_log(folder: Path) -> tuple[Path, Path]:
    """A log with a shop's own column names, and a table of item titles (two items share one)."""
    log = planted_interactions(n_users=N_USERS, n_items=N_ITEMS, n_clusters=4, interactions_per_user=10, seed=3)
    log = log.rename({"user_id": "customer", "item_id": "product"})
    log.write_csv(folder / "shop.csv")
    titles = [f"Product {i}" for i in range(N_ITEMS)]
    titles[7] = titles[8] = "Twin product"
    pl.DataFrame({"product": np.arange(N_ITEMS), "title": titles}).write_csv(folder / "products.csv")
    return folder / "shop.csv", folder / "products.csv"


def train_arguments(folder: Path, run_dir: Path, *extra: str) -> list[str]:
    log, products = write_log(folder)
    return ["data=interactions", f"data.path={log}", "data.user_col=customer", "data.item_col=product",
            f"data.item_info_path={products}", f"hydra.run.dir={run_dir}", "trainer.max_epochs=20",
            "trainer.enable_progress_bar=false", "model.dim=16", *extra]


@pytest.fixture(scope="module")
def shop_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shop")
    completed = subprocess.run([sys.executable, "-m", "twotower.commands.train",
                                *train_arguments(folder, folder / "run")], capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    (folder / "stdout.txt").write_text(completed.stdout)
    return folder / "run"


def retrieved(arguments: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
              ) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["twotower-retrieve", *arguments])
    try:
        retrieve.main()
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_run_ends_with_its_verdict_and_the_next_commands(shop_run: Path) -> None:
    stdout = (shop_run.parent / "stdout.txt").read_text()
    rows = {line.split()[0]: [float(value) for value in re.findall(r"\d\.\d{4}", line)]
            for line in stdout.splitlines() if line.startswith(("validation", "test"))}
    metrics = json.loads((shop_run / "metrics" / "train.json").read_text())
    assert rows["validation"] == pytest.approx([metrics["val/recall@20"], metrics["val/ndcg@20"],
                                                metrics["val/popularity/recall@20"],
                                                metrics["val/popularity/ndcg@20"]], abs=1e-4)
    assert rows["test"][:2] == pytest.approx([metrics["test/recall@20"], metrics["test/ndcg@20"]], abs=1e-4)
    assert metrics["val/ndcg@20"] > metrics["val/popularity/ndcg@20"]  # the planted groups beat popularity
    assert "exported model: trained on train + valid + test" in stdout and "time: data" in stdout
    assert f"twotower-retrieve run_dir={shop_run} user=ID" in stdout and "index: annoy" in stdout


def test_routine_lines_are_not_warnings_and_framework_noise_is_gone(tmp_path: Path) -> None:
    completed = subprocess.run([sys.executable, "-m", "twotower.commands.train",
                                *train_arguments(tmp_path, tmp_path / "run", "trainer.max_epochs=1")],
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    output = completed.stdout + completed.stderr
    for noise in ("GPU available", "TPU available", "Restoring states", "weights_only", "[WARNING]"):
        assert noise not in output, noise
    log = (tmp_path / "run" / "train.log").read_text()
    again = subprocess.run([sys.executable, "-m", "twotower.commands.train",
                            *train_arguments(tmp_path, tmp_path / "run", "trainer.max_epochs=1")],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "holds a finished run: this one replaces it" in again.stdout + again.stderr
    kept = (tmp_path / "run" / "train.log").read_text()  # the finished run's story first, the new one after it
    assert kept.startswith(log) and log.count("===== ") == 1 and kept.count("===== ") == 2
    assert kept.count("Run finished:") == 2


def test_output_goes_where_it_is_sent_in_the_format_its_name_says(shop_run: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("one.csv", "one.json", "one.parquet"):
        code, out, _ = retrieved([f"run_dir={shop_run}", "user=3", "k=4", f"output_file={tmp_path / name}"], capsys,
                                 monkeypatch)
        assert code == 0 and out == ""
    as_csv = pl.read_csv(tmp_path / "one.csv")
    assert pl.read_parquet(tmp_path / "one.parquet").equals(as_csv)
    assert json.loads((tmp_path / "one.json").read_text()) == as_csv.to_dicts()
    code, _, err = retrieved([f"run_dir={shop_run}", "user=3", f"output_file={tmp_path / 'one.xml'}"], capsys,
                             monkeypatch)
    assert code == 2 and "cannot tell the format" in err and not (tmp_path / "one.xml").exists()
    code, _, err = retrieved([f"run_dir={shop_run}", "user=3", "output=csv", f"output_file={tmp_path / 'x.json'}"],
                             capsys, monkeypatch)
    assert code == 2 and "output=csv but output_file" in err


def test_a_users_file_with_unknown_ids_fails_whole_skips_or_falls_back_with_a_mark(
        shop_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    pl.DataFrame({"customer": ["3", "4", "999999"]}).write_csv(tmp_path / "users.csv")
    base = [f"run_dir={shop_run}", f"users_file={tmp_path / 'users.csv'}", "users_column=customer", "k=3"]
    code, _, err = retrieved(base, capsys, monkeypatch)
    assert code == 2 and "999999" in err and "unknown=skip" in err
    code, out, _ = retrieved([*base, "unknown=skip", "output=json"], capsys, monkeypatch)
    assert code == 0 and {row["user_id"] for row in json.loads(out)} == {3, 4}  # numbers, as in the run
    code, out, _ = retrieved([*base, "unknown=popular", "output=json"], capsys, monkeypatch)
    rows = json.loads(out)
    assert code == 0 and [row.get("fallback") for row in rows if row["user_id"] == 999999] == ["popular"] * 3
    assert all(row.get("fallback") is None or row["user_id"] == 999999 for row in rows)
    assert all(isinstance(row["item_id"], int) for row in rows)


def test_the_command_line_takes_allow_deny_and_a_title(shop_run: Path, capsys: pytest.CaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = retrieved([f"run_dir={shop_run}", "user=3", "k=3", "allow=[1,2,5,9]", "output=json"], capsys,
                             monkeypatch)
    assert code == 0 and {row["id"] for row in json.loads(out)} <= {1, 2, 5, 9}
    code, out, _ = retrieved([f"run_dir={shop_run}", "user=3", "k=50", "deny=[1,2]", "output=json"], capsys,
                             monkeypatch)
    assert code == 0 and not {1, 2} & {row["id"] for row in json.loads(out)}
    code, out, _ = retrieved([f"run_dir={shop_run}", "item=Product 5", "k=3"], capsys, monkeypatch)
    assert code == 0 and "most similar to 'Product 5'" in out
    code, _, err = retrieved([f"run_dir={shop_run}", "item=Twin product"], capsys, monkeypatch)
    assert code == 2 and "'Twin product' [7], 'Twin product' [8]; give the id" in err


def test_latest_is_the_newest_run_under_outputs(shop_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = retrieved(["run_dir=latest", "user=3"], capsys, monkeypatch)
    assert code == 2 and "no finished run under" in err
    import shutil

    shutil.copytree(shop_run, tmp_path / "outputs" / "2026-01-01" / "10-00-00")
    code, out, _ = retrieved(["run_dir=latest", "user=3", "k=2", "output=json"], capsys, monkeypatch)
    assert code == 0 and len(json.loads(out)) == 2


@pytest.mark.parametrize(("module", "arguments", "expected"), [
    (retrieve, ["user=1"], r"run_dir is required: give it on the command line, e\.g\. run_dir=DIR"),
    (eval_app, [], r"run_dir is required"),
    (plot, [], r"run_dir is required"),
    (retrieve, ["run_dir=RUN", "user=3", "+unknown_setting=popular"], r"unknown option\(s\) \['unknown_setting'\]"),
])
def test_left_out_and_made_up_options_are_one_line(module, arguments: list[str], expected: str, shop_run: Path,
                                                   capsys: pytest.CaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    code, stderr = invoke(module, [argument.replace("RUN", str(shop_run)) for argument in arguments], capsys,
                          monkeypatch)
    assert code == 2 and "Traceback" not in stderr and re.search(expected, stderr), stderr


def test_a_log_too_small_for_the_default_monitor_trains(tmp_path: Path) -> None:
    """Three users and twelve items: the cut-offs stop at 12, and so does the metric that selects the model."""
    pl.DataFrame({"user_id": np.repeat([1, 2, 3], 10),
                  "item_id": [(user + item) % 12 for user in range(3) for item in range(10)]}).write_csv(
        tmp_path / "toy.csv")
    completed = subprocess.run([sys.executable, "-m", "twotower.commands.train", "data=interactions",
                                f"data.path={tmp_path / 'toy.csv'}", f"hydra.run.dir={tmp_path / 'run'}",
                                "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "show_similar_to=null"],
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    assert json.loads((tmp_path / "run" / "run.json").read_text())["monitor"] == "val/ndcg@12"


def test_ctrl_c_exits_130_naming_the_resume_command_and_the_resume_keeps_the_log(tmp_path: Path) -> None:
    arguments = train_arguments(tmp_path, tmp_path / "run", "trainer.max_epochs=400", "callbacks.early_stopping=null",
                                "show_similar_to=null", "trainer.log_every_n_steps=1")
    # Ctrl-C reaches the child as from a terminal, even where this test runs in the background (whose
    # processes are started with SIGINT ignored, and pass that on).
    process = subprocess.Popen([sys.executable, "-m", "twotower.commands.train", *arguments],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    hint = stderr.strip().splitlines()[-1].strip()
    assert hint.startswith("twotower-train ") and "ckpt_path=last" in hint and "Traceback" not in stderr, stderr
    epochs = pl.read_csv(tmp_path / "run" / "logs" / "metrics.csv")["epoch"].drop_nulls().unique().to_list()
    assert epochs, stderr
    resumed = [argument for argument in hint.split()[1:]]
    resumed = [a.replace("trainer.max_epochs=400", f"trainer.max_epochs={max(epochs) + 3}") for a in resumed]
    completed = subprocess.run([sys.executable, "-m", "twotower.commands.train", *resumed],
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    metrics = pl.read_csv(tmp_path / "run" / "logs" / "metrics.csv")
    logged = metrics["epoch"].drop_nulls().unique().sort().to_list()
    # the earlier epochs are kept, and the epoch the interrupt cut short stands once, as trained again
    assert logged[: len(epochs)] == sorted(epochs) and max(logged) > max(epochs), (epochs, logged, completed.stderr)
    steps = metrics.filter(pl.col("train/loss_step").is_not_null()).select("epoch", "step")
    assert steps.height == steps.unique().height, steps
    log = (tmp_path / "run" / "train.log").read_text()  # both attempts, the interrupted one saying how to go on
    assert log.count("===== ") == 2 and "interrupted; continue with: twotower-train" in log
    assert log.count("Run finished:") == 1


def test_a_sweep_summary_refuses_a_metric_no_job_reports(shop_run: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    import shutil

    job = tmp_path / "sweep" / "0"
    shutil.copytree(shop_run, job)
    (job / ".hydra").mkdir(exist_ok=True)
    (job / ".hydra" / "overrides.yaml").write_text("- model.dim=16\n")
    with pytest.raises(SystemExit, match=r"no job reports recall@20; choose one of .*val/recall@20"):
        sweep.main([str(tmp_path / "sweep"), "--metric", "recall@20"])
    assert not (tmp_path / "sweep" / "summary.csv").exists()


@pytest.mark.parametrize(("module", "own", "foreign"), [
    (retrieve, "users_column=", "sampler"), (eval_app, "holdout=", "sampler"), (plot, "projector=", "loss"),
])
def test_help_lists_the_commands_own_options_with_descriptions(module, own: str, foreign: str,
                                                               capsys: pytest.CaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["cmd", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and own in out and f"  {foreign} " not in out
    described = out.split(f"\n  {own}", 1)[1].splitlines()[1]
    assert described.startswith("      ") and described.strip()  # a line of description under the option


def test_a_user_the_ratings_filter_dropped_is_explained(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    log = planted_interactions(n_users=80, n_items=40, n_clusters=4, seed=5).with_columns(rating=pl.lit(5, pl.Int64))
    low = pl.DataFrame({"user_id": [685, 685], "item_id": [1, 2], "rating": [2, 1]})
    pl.concat([log.select("user_id", "item_id", "rating"), low]).write_csv(tmp_path / "ratings.csv")
    completed = subprocess.run([sys.executable, "-m", "twotower.commands.train", "data=interactions",
                                f"data.path={tmp_path / 'ratings.csv'}", "data.min_rating=4",
                                f"hydra.run.dir={tmp_path / 'run'}", "trainer.max_epochs=1",
                                "trainer.enable_progress_bar=false", "show_similar_to=null"],
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    said = completed.stdout + completed.stderr
    assert "1 user(s)" in said and "'685'" in said  # the log says what the filter dropped
    code, _, err = retrieved([f"run_dir={tmp_path / 'run'}", "user=685"], capsys, monkeypatch)
    assert code == 2 and "685 is in the log but was left out (ratings below data.min_rating=4)" in err


def test_a_sweep_key_the_loss_never_reads_is_named(tmp_path: Path) -> None:
    completed = subprocess.run([sys.executable, "-m", "twotower.commands.train", *train_arguments(
        tmp_path, tmp_path / "run", "trainer.max_epochs=1", "sampler.n_negatives=4", "show_similar_to=null")],
        capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    assert "sampler.n_negatives: not used by loss=catalogue" in completed.stdout + completed.stderr


def test_a_retrain_replaces_the_old_plots(shop_run: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(shop_run, run)
    (run / "plots").mkdir()
    (run / "plots" / "items-genre.png").write_bytes(b"an old map")
    arguments = train_arguments(tmp_path, run, "trainer.max_epochs=1", "show_similar_to=null")
    completed = subprocess.run([sys.executable, "-m", "twotower.commands.train", *arguments], capture_output=True,
                               text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    assert not (run / "plots").exists()  # a map of the old vectors would be a map of another model


def test_plot_names_the_package_to_install(shop_run: Path, capsys: pytest.CaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "umap" else real(name, *a))
    code, stderr = invoke(plot, [f"run_dir={shop_run}", "method=umap"], capsys, monkeypatch)
    assert code == 2 and "pip install umap-learn" in stderr


def test_progress_bars_name_their_phase_and_count_epochs_from_one(tmp_path: Path) -> None:
    arguments = [a for a in train_arguments(tmp_path, tmp_path / "run", "trainer.max_epochs=2",
                                            "show_similar_to=null") if "enable_progress_bar" not in a]
    completed = subprocess.run([sys.executable, "-m", "twotower.commands.train", *arguments], capture_output=True,
                               text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    output = completed.stdout + completed.stderr
    assert "selection, epoch 1/2" in output and "selection, epoch 2/2" in output and "final fit, epoch 1/" in output
    assert "epoch 0" not in output
    # sent to a pipe: one line per epoch, no bars redrawn with carriage returns
    assert "\r" not in output and output.count("selection, epoch 1/2: loss ") == 1


@pytest.mark.slow
def test_the_scripted_first_hour_does_what_it_says() -> None:
    completed = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "scripts" / "first_hour.py")],
                               capture_output=True, text=True, timeout=1200)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "first hour: every step did what it says" in completed.stdout
