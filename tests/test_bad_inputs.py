"""Bad input, table-driven: every case goes through a real command-line entry point and must end in one
readable error line that names the problem, a non-zero exit status, and no Python traceback; with
``debug=true`` the traceback is shown."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import compose_train
from twotower.commands import eval as eval_app
from twotower.commands import reindex, retrieve
from twotower.commands import train as train_app
from twotower.data.synthetic import planted_interactions
from twotower.run import RunPaths, read_vectors, write_vectors
from twotower.training.staging import exclusive
from twotower.training.train import train

GOOD = planted_interactions(n_users=60, n_items=40, n_clusters=4, interactions_per_user=8, seed=5)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("finished")
    GOOD.write_csv(folder / "log.csv")
    train(compose_train(folder / "run", "data=interactions", f"data.path={folder / 'log.csv'}",
                                  "trainer.max_epochs=1", "model.dim=8"))
    return folder / "run"


def write_log(frame: pl.DataFrame, name: str = "log.csv") -> Callable[[Path], str]:
    def make(folder: Path) -> str:
        path = folder / name
        if name.endswith(".parquet"):
            frame.write_parquet(path)
        elif name.endswith(".ndjson"):
            frame.write_ndjson(path)
        else:
            frame.write_csv(path)
        return str(path)
    return make


def write_text(text: str | bytes, name: str) -> Callable[[Path], str]:
    def make(folder: Path) -> str:
        path = folder / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(path)
    return make


def damaged_run(damage: Callable[[Path], None]) -> Callable[[Path, Path], str]:
    """A copy of the finished run with something broken in it."""
    def make(folder: Path, run: Path) -> str:
        copy = folder / "copy"
        shutil.copytree(run, copy)
        damage(copy)
        return str(copy)
    return make


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(data))


def edit_meta(run: Path) -> None:
    meta = json.loads((run / "index" / "meta.json").read_text())
    meta["score"] = "cosine" if meta["score"] == "dot" else "dot"  # the other metric
    (run / "index" / "meta.json").write_text(json.dumps(meta))


def drop_manifest_key(key: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        manifest = json.loads((run / "run.json").read_text())
        del manifest[key]
        (run / "run.json").write_text(json.dumps(manifest))
    return damage


def reversed_vectors(side: str) -> Callable[[Path], None]:
    """Another run's vectors, as far as anyone can tell from the file: same ids, shape and format."""
    def damage(run: Path) -> None:
        path = run / "embeddings" / f"{side}.parquet"
        ids, vectors = read_vectors(path)
        write_vectors(ids, vectors[::-1], path)
    return damage


def quoted(make: Callable[[Path], str]) -> Callable[[Path], str]:
    """A path with characters Hydra's override grammar reads specially (brackets), quoted for it."""
    return lambda folder: f'"{make(folder)}"'


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def with_rating(values: list) -> pl.DataFrame:
    return pl.DataFrame({"user_id": [1, 2, 3], "item_id": [1, 2, 3], "rating": values})


TRAIN = "train"
TRAIN_CASES = [
    # (case, data file maker, extra overrides, expected message)
    ("missing file", lambda f: str(f / "nope.csv"), [], r"interaction file not found: .*nope\.csv"),
    ("index settings checked before training", write_log(GOOD), ["index.n_trees=0"], r"index\.n_trees must be an integer >= 1"),
    ("unreadable parquet", write_text(b"this is not parquet" * 10, "log.parquet"), [], r"cannot read .*log\.parquet as parquet"),
    ("unknown format", write_text("a,b\n", "log.xlsx"), [], r"cannot tell the format of .*log\.xlsx"),
    ("missing item column", write_log(GOOD.rename({"item_id": "movie"})), [], r"missing column\(s\) \['item_id'\].*'movie'"),
    ("misnamed user column", write_log(GOOD), ["data.user_col=customer"], r"missing column\(s\) \['customer'\]"),
    ("empty file", write_text("", "log.csv"), [], r"log\.csv is empty"),
    ("header only", write_text("user_id,item_id\n", "log.csv"), [], r"header but no rows"),
    ("all-negative labels", write_log(GOOD.with_columns(label=pl.lit(0))), [], r"every label is <= 0"),
    ("non-numeric rating", write_log(with_rating(["5", "good", "3"])), [], r"'rating' has 1 missing or non-numeric value\(s\), e\.g\. \['good'\]"),
    ("NaN rating", write_log(with_rating([5.0, float("nan"), 3.0]), "log.parquet"), [], r"'rating' has 1 missing or non-numeric"),
    ("null ids", write_text("user_id,item_id\n1,2\n,3\n2,3\n", "log.csv"), [], r"'user_id' has 1 empty \(null\) value"),
    ("fractional number ids", write_log(pl.DataFrame({"user_id": [1.5, 2.0], "item_id": [2, 3]}), "log.parquet"), [], r"'user_id' holds non-integer numbers"),
    ("unparseable timestamps", write_log(GOOD.with_columns(timestamp=pl.lit("yesterday"))), [], r"'timestamp' holds values that are neither numbers nor dates"),
    ("corrupt gzip", write_text(b"\x1f\x8b\x08garbage", "log.csv.gz"), [], r"cannot read .*log\.csv\.gz"),
    ("every user has one interaction", write_log(GOOD.unique("user_id")), ["split=temporal"], r"validation split is empty"),
    ("rating threshold without ratings", write_log(GOOD), ["data.min_rating=4"], r"min_rating=4 is set but the log has no rating column"),
    ("no rating reaches the threshold", write_log(with_rating([1, 2, 3])), ["data.min_rating=4"], r"no interaction has a rating >= 4"),
    ("temporal split without timestamps", write_log(GOOD.drop("timestamp")), ["split=temporal"], r"split=temporal needs the order of each user's interactions"),
    ("presplit without files", write_log(GOOD), ["split=presplit"], r"split=presplit needs separate files"),
    ("split fractions over 1", write_log(GOOD), ["split.valid_fraction=0.6", "split.test_fraction=0.5"], r"split fractions must .* sum to less than 1"),
    ("zero negatives", write_log(GOOD), ["sampler.n_negatives=0"], r"sampler\.n_negatives must be an integer >= 1, got 0"),
    ("unknown sampler distribution", write_log(GOOD), ["sampler.distribution=zipf"], r"sampler\.distribution must be one of uniform, popularity; got 'zipf'"),
    ("negative temperature", write_log(GOOD), ["model.temperature=-1"], r"model\.temperature must be auto or a number > 0, got -1"),
    ("unknown feature column", write_log(GOOD), ["model/item_tower=features", "model.item_tower.features=[genre]"], r"item feature\(s\) \['genre'\] not in the item metadata"),
    ("resume from a missing checkpoint", write_log(GOOD), ["ckpt_path=last"], r"checkpoint to resume from not found: .*last\.ckpt"),
    ("path is not a pattern", quoted(lambda f: write_log(GOOD, "log1.csv")(f).replace("log1", "log[1]")), [], r"interaction file not found: .*log\[1\]\.csv"),
    ("file without a header line", write_text("1\t2\t5\n2\t3\t4\n", "log.tsv"), [], r"log\.tsv: missing column\(s\) .* the file seems to have no header line .*: set data\.has_header=false \(and data\.user_col / data\.item_col to column_"),
    ("header repeated mid-file", write_text("user_id,item_id\n1,2\n2,3\nuser_id,item_id\n3,4\n", "log.csv"), [], r"line 4 repeats the header \(user_id, item_id\)"),
    ("one number spelled as two ids", write_text("user_id,item_id\n5,1\n 5.0,2\nabc,3\n", "log.csv"), [], r"'user_id' writes one number as several ids, e\.g\. \['5', '5\.0'\]"),
    ("zero epochs", write_log(GOOD), ["trainer.max_epochs=0"], r"trainer\.max_epochs must be an integer >= 1"),
    ("zero steps", write_log(GOOD), ["trainer.max_steps=0"], r"trainer\.max_steps must be an integer >= 1 \(or -1: no limit\), got 0"),
    ("monitor that is not logged", write_log(GOOD), ["monitor=val/ndcg@200"], r"monitor=val/ndcg@200 is not a metric the run logs; choose one of \[.*'val/ndcg@20'"),
    ("a coverage monitor for the prior's choice", write_log(GOOD), ["monitor=val/coverage@20"], r"model\.popularity_prior=auto chooses the weight by each user's val/coverage@(20|\d+), which is not a per-user metric"),
    ("zero cut-off", write_log(GOOD), ["model.ks=[0]"], r"ranking cut-offs must be a non-empty list of integers >= 1, got \[0\]"),
    ("rating threshold that is not a number", write_log(with_rating([5, 4, 3])), ["data.min_rating=abc"], r"data\.min_rating must be a number or null, got 'abc'"),
    ("trainer setting Lightning refuses", write_log(GOOD), ["trainer.limit_val_batches=0.0001"], r"trainer settings: .*limit_val_batches"),
    ("no validation users", write_log(GOOD), ["datamodule.val_users=0"], r"datamodule\.val_users must be an integer >= 1 \(or null: every user\)"),
    ("catalogue sampled from zero items", write_log(GOOD), ["loss.sample_above=0"], r"loss\.sample_above must be an integer >= 1"),
]

RUN_CASES = [
    # (case, entry point, run-dir maker or None for the finished run, arguments, expected message)
    ("retrieve: missing run directory", retrieve, lambda f, r: str(f / "nope"), ["user=1"], r"run directory not found"),
    ("retrieve: unfinished run", retrieve, damaged_run(lambda run: (run / "run.json").unlink()), ["user=1"], r"not a finished run directory \(run\.json missing\)"),
    ("retrieve: unknown user", retrieve, None, ["user=123456"], r"unknown user id\(s\) \[123456\]"),
    ("retrieve: unknown item", retrieve, None, ["item=123456"], r"unknown item id\(s\) \[123456\]"),
    ("retrieve: k = 0", retrieve, None, ["user=1", "k=0"], r"k must be a positive integer, got 0"),
    ("retrieve: k < 0", retrieve, None, ["item=1", "k=-5"], r"k must be a positive integer, got -5"),
    ("retrieve: two queries", retrieve, None, ["user=1", "item=1"], r"give exactly one of user=ID, item="),
    ("retrieve: unknown output", retrieve, None, ["user=1", "output=xml"], r"output must be one of \('table', 'json', 'csv', 'parquet'\)"),
    ("retrieve: users file without user_id", retrieve, None, ["users_file=USERS"], r"no column 'user_id' of user ids .*users_column="),
    ("retrieve: truncated index file", retrieve, damaged_run(lambda run: truncate(run / "index" / "items.ann")), ["user=1"], r"items\.ann has \d+ bytes, not \d+ \(truncated or replaced\)"),
    ("retrieve: corrupt index file", retrieve, damaged_run(lambda run: flip_bytes(run / "index" / "items.ann")), ["user=1"], r"items\.ann is damaged"),
    ("retrieve: index metadata of another model", retrieve, damaged_run(edit_meta), ["user=1"], r"score '(dot|cosine)' but the model scores by '(cosine|dot)'"),
    ("retrieve: index of other vectors", retrieve, damaged_run(lambda run: shutil.copy(run / "embeddings" / "users.parquet", run / "embeddings" / "items.parquet")), ["user=1"], r"embeddings and vocabularies disagree|does not match this run"),
    ("retrieve: missing index metadata", retrieve, damaged_run(lambda run: (run / "index" / "meta.json").unlink()), ["user=1"], r"meta\.json missing"),
    ("retrieve: corrupt embeddings file", retrieve, damaged_run(lambda run: truncate(run / "embeddings" / "items.parquet")), ["user=1"], r"items\.parquet does not match this run"),
    ("retrieve: user vectors of another run", retrieve, damaged_run(reversed_vectors("users")), ["user=1"], r"users\.parquet does not match this run"),
    ("retrieve: item vectors of another run, exact search", retrieve, damaged_run(reversed_vectors("items")), ["user=1", "index=exact"], r"items\.parquet does not match this run"),
    ("retrieve: run.json missing a key", retrieve, damaged_run(drop_manifest_key("score")), ["user=1"], r"run\.json lacks \['score'\]"),
    ("retrieve: run.json without fingerprints", retrieve, damaged_run(drop_manifest_key("fingerprints")), ["user=1"], r"run\.json lacks \['fingerprints'\]"),
    ("retrieve: zero-padded id of numeric ids", retrieve, None, ["users_file=PADDED"], r"unknown user id\(s\) \['007'\]"),
    ("retrieve: binary users file", retrieve, None, ["users_file=BINARY"], r"binary\.txt: not a text file of user ids"),
    ("retrieve: empty users file", retrieve, None, ["users_file=EMPTY"], r"empty\.txt: holds no user ids"),
    ("eval: unknown holdout", eval_app, None, ["holdout=train"], r"holdout must be 'valid' or 'test', got 'train'"),
    ("eval: file of unknown users", eval_app, None, ["path=STRANGERS"], r"no interaction in the file has a user and an item known to the run"),
    ("eval: the test split the final model saw", eval_app, None, [], r"trained on the test split .*metrics/train\.json"),
    ("eval: the valid split the final model saw", eval_app, None, ["holdout=valid"], r"trained on the valid split"),
    ("eval: the run's own log", eval_app, None, ["path=OWNLOG"], r"every interaction in .* is one the run trained"),
    ("eval: vectors of another run", eval_app, damaged_run(reversed_vectors("users")), ["path=STRANGERS"], r"users\.parquet does not match this run"),
    ("eval: zero cut-off", eval_app, None, ["ks=[0]", "path=STRANGERS"], r"ranking cut-offs must be a non-empty list of integers >= 1"),
    ("eval: no cut-off", eval_app, None, ["ks=[]", "path=STRANGERS"], r"ranking cut-offs must be a non-empty list"),
    ("index: unfinished run", reindex, damaged_run(lambda run: (run / "run.json").unlink()), [], r"not a finished run directory"),
    ("index: zero trees", reindex, None, ["index.n_trees=0"], r"index\.n_trees must be an integer >= 1, got 0"),
    ("index: negative trees", reindex, None, ["index.n_trees=-5"], r"index\.n_trees must be an integer >= 1, got -5"),
    ("index: zero search budget", reindex, None, ["index.search_k_factor=0"], r"index\.search_k_factor must be"),
    ("index: zero search_k", reindex, None, ["index.search_k=0"], r"index\.search_k must be an integer >= 1 \(or null\)"),
    ("index: item vectors of another run", reindex, damaged_run(reversed_vectors("items")), [], r"items\.parquet does not match this run"),
]


def invoke(module, arguments: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
           ) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", [module.__name__, *arguments])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    return exit_info.value.code, capsys.readouterr().err


def assert_one_clean_error(code: int, stderr: str, expected: str) -> None:
    assert code not in (0, None)
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert re.search(expected, errors[0]), errors[0]


@pytest.mark.parametrize(("case", "make", "overrides", "expected"), TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_training_input(case: str, make: Callable, overrides: list[str], expected: str, tmp_path: Path,
                        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    arguments = ["data=interactions", f"data.path={make(tmp_path)}", f"hydra.run.dir={tmp_path / 'run'}",
                 "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "logger=none", *overrides]
    code, stderr = invoke(train_app, arguments, capsys, monkeypatch)
    assert_one_clean_error(code, stderr, expected)
    assert not (tmp_path / "run" / "run.json").exists()


@pytest.mark.parametrize(("case", "module", "make", "arguments", "expected"), RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_run_directory_input(case: str, module, make: Callable | None, arguments: list[str], expected: str,
                             tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = make(tmp_path, finished_run) if make else str(finished_run)
    files = {"USERS": ("users.csv", b"customer\n1\n"), "PADDED": ("padded.txt", b"007\n1\n"),
             "BINARY": ("binary.txt", bytes(range(256))), "EMPTY": ("empty.txt", b"\n  \n")}
    for name, content in files.values():
        (tmp_path / name).write_bytes(content)
    pl.DataFrame({"user_id": [99991], "item_id": [99992]}).write_csv(tmp_path / "strangers.csv")
    replacements = {key: str(tmp_path / name) for key, (name, _) in files.items()}
    replacements |= {"STRANGERS": str(tmp_path / "strangers.csv"), "OWNLOG": str(finished_run.parent / "log.csv")}
    for key, value in replacements.items():
        arguments = [argument.replace(key, value) for argument in arguments]
    before = snapshot(Path(run_dir)) if Path(run_dir).is_dir() else {}
    code, stderr = invoke(module, [f"run_dir={run_dir}", *arguments], capsys, monkeypatch)
    assert_one_clean_error(code, stderr, expected)
    assert (snapshot(Path(run_dir)) if Path(run_dir).is_dir() else {}) == before  # nothing changed


def test_a_run_directory_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "taken").write_text("someone's notes")
    code, stderr = invoke(train_app, [f"hydra.run.dir={tmp_path / 'taken'}"], capsys, monkeypatch)
    assert_one_clean_error(code, stderr, r"hydra\.run\.dir=.*taken is a file; the run directory must be a folder")
    assert (tmp_path / "taken").read_text() == "someone's notes"


def test_a_second_training_into_a_directory_in_use_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    GOOD.write_csv(tmp_path / "log.csv")
    with exclusive(RunPaths(tmp_path / "run")):  # as a first training holds it
        code, stderr = invoke(train_app, ["data=interactions", f"data.path={tmp_path / 'log.csv'}",
                                          f"hydra.run.dir={tmp_path / 'run'}", "logger=none"], capsys, monkeypatch)
    assert_one_clean_error(code, stderr, r"run is in use by another training \(pid \d+\)")
    # the first training's lock goes with it, and the refused attempt writes nothing into the directory in use
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == [".hydra"]


TYPOS = [
    (train_app, ["model.dimm=3"], r"model\.dimm is not an option; did you mean model\.dim\?"),
    (train_app, ["+model.dimm=3"], r"model\.dimm is not an option of TwoTowerModel: did you mean model\.dim\?"),
    (train_app, ["+model.dim=3"], r"model\.dim exists already: set it without the \+"),
    (train_app, ["split=temporall"], r"split=temporall is not a choice of split .*did you mean split=temporal\?"),
    (train_app, ["loss=hinge"], r"loss=hinge is not a choice of loss \(choose one of bce, bpr, catalogue"),
    (train_app, ["model/user_tower=idd"], r"did you mean model/user_tower=id\?"),
    (train_app, ["model.dim=[1"], r"cannot read the options as given"),
    (train_app, ["data=interactions"], r"^error: data\.path is required"),
    (train_app, ["data=interactions", "data.path=LOG", "data.has_header=maybe"], r"data\.has_header must be true or false, got 'maybe'"),
    (train_app, ["data=interactions", "data.path=LOG", "datamodule.batch_size=big"], r"datamodule\.batch_size must be an integer, got 'big'"),
    (train_app, ["data=interactions", "data.path=LOG", "index.exact_when_faster=sometimes"], r"index\.exact_when_faster must be true or false, got 'sometimes'"),
    (retrieve, ["run_dir=RUN", "kk=3"], r"kk is not an option; did you mean k\?"),
]


@pytest.mark.parametrize(("module", "arguments", "expected"), TYPOS, ids=[" ".join(case[1]) for case in TYPOS])
def test_config_typos_and_wrong_kinds_are_one_line_with_the_nearest_option(
        module, arguments: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    GOOD.write_csv(tmp_path / "log.csv")
    arguments = [a.replace("LOG", str(tmp_path / "log.csv")).replace("RUN", str(tmp_path)) for a in arguments]
    code, stderr = invoke(module, [*arguments, f"hydra.run.dir={tmp_path / 'run'}", "trainer.max_epochs=1"]
                          if module is train_app else arguments, capsys, monkeypatch)
    assert code == 2
    assert_one_clean_error(code, stderr, expected)


def test_debug_flag_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["twotower-retrieve", f"run_dir={tmp_path / 'nope'}", "user=1", "debug=true"])
    with pytest.raises(SystemExit) as exit_info:
        retrieve.main()
    assert exit_info.value.code != 0
    assert "Traceback" in capsys.readouterr().err


def test_repeated_interactions_count_once(tmp_path: Path) -> None:
    doubled = pl.concat([GOOD, GOOD])
    doubled.write_csv(tmp_path / "log.csv")
    with gzip.open(tmp_path / "log.csv.gz", "wb") as handle:
        handle.write(doubled.write_csv().encode())
    from twotower.data.interactions import deduplicate, positives
    from twotower.data.readers import InteractionFileReader

    for name in ("log.csv", "log.csv.gz"):
        frame = positives(InteractionFileReader(str(tmp_path / name)).read())
        assert deduplicate(frame.rename({"user_id": "user", "item_id": "item"})).height == GOOD.height
