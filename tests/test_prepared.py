"""Prepared logs (twotower-prepare): shards of whole users written out of core, read a share per process, and a
two-process rehearsal of training from them (DDP on CPU over gloo)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.conftest import compose_train
from twotower.data import prepared as prepared_module
from twotower.data.batches import EpochBatchSampler, PairBatch, ShardedChunks, planned_process
from twotower.data.datamodule import InteractionDataModule
from twotower.data.prepared import MANIFEST, PreparedShards, prepare
from twotower.data.readers import InteractionFileReader
from twotower.data.sampling import NegativeSampler
from twotower.data.splits import RandomSplit, TemporalSplit
from twotower.data.synthetic import planted_interactions
from twotower.data.user_items import UserItems
from twotower.errors import ConfigError, DataError, TwoTowerError
from twotower.model.losses import SampledSoftmaxLoss
from twotower.model.module import TwoTowerModel
from twotower.serving.retrieval import Retriever
from twotower.training.build import build_datamodule, planned_processes
from twotower.training.evaluation import evaluate_vectors
from twotower.training.train import train


@pytest.fixture(scope="module")
def log_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A planted log with repeated pairs and rows that are not positives (label 0)."""
    frame = planted_interactions(n_users=300, n_items=120, n_clusters=6, seed=3)
    frame = pl.concat([frame, frame.head(200)]).with_columns(
        label=pl.when(pl.int_range(pl.len()) % 17 == 0).then(0).otherwise(1))
    path = tmp_path_factory.mktemp("log") / "log.parquet"
    frame.write_parquet(path)
    return path


def pairs(frame: pl.DataFrame, users: pl.Series, items: pl.Series) -> set[tuple[int, int]]:
    return set(zip(users.gather(frame["user"]).to_list(), items.gather(frame["item"]).to_list(), strict=True))


def test_a_prepared_log_holds_whole_users_in_disjoint_shards_covering_what_the_whole_log_trains_on(
        tmp_path: Path, log_file: Path) -> None:
    manifest = prepare(InteractionFileReader(str(log_file)), RandomSplit(seed=0), tmp_path / "prepared", shards=3)
    prepared = PreparedShards(str(tmp_path / "prepared"))
    users, items = prepared.vocabularies()
    # The same id rule as the in-memory path: the same vocabularies, index for index.
    whole = InteractionDataModule(InteractionFileReader(str(log_file)), RandomSplit(seed=0), NegativeSampler())
    whole.setup()
    assert users.ids.to_list() == whole.user_vocab.ids.to_list()
    assert items.ids.to_list() == whole.item_vocab.ids.to_list()
    shard_users = [set(pl.concat(prepared.read([i]).values())["user"].to_list()) for i in range(3)]
    assert all(not (a & b) for k, a in enumerate(shard_users) for b in shard_users[k + 1:])
    assert set().union(*shard_users) == set(range(len(users)))
    # Together the shards hold every positive pair once: the pairs the in-memory path splits.
    everything = pl.concat(prepared.read([0, 1, 2]).values())
    assert everything.height == everything.unique(["user", "item"]).height
    in_memory = pl.concat(whole.splits.values())
    assert pairs(everything, users.ids, items.ids) == pairs(in_memory, whole.user_vocab.ids, whole.item_vocab.ids)
    assert sum(shard["train"] + shard["valid"] + shard["test"] for shard in manifest["shards"]) == everything.height
    splits = prepared.read([0, 1, 2])
    counts = {name: np.bincount(splits[name]["item"].to_numpy(), minlength=len(items)) for name in splits}
    assert np.array_equal(prepared.item_counts(), counts["train"])
    assert np.array_equal(prepared.item_counts(("train", "valid", "test")), sum(counts.values()))
    # The rows that are not positives (label 0) are kept as the in-memory path keeps them: seen, never offered.
    prepared.copy_non_positive(tmp_path / "non_positive.parquet")
    assert pairs(pl.read_parquet(tmp_path / "non_positive.parquet"), users.ids, items.ids) == \
        pairs(whole.non_positive, whole.user_vocab.ids, whole.item_vocab.ids) != set()


def test_held_out_pairs_of_items_no_shard_trains_on_move_into_train(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    # 400 items for 300 users, 30% held out twice: some items are held out wherever they occur.
    planted_interactions(n_users=300, n_items=400, n_clusters=6, seed=3).write_parquet(tmp_path / "log.parquet")
    with caplog.at_level("INFO", logger="twotower.data.prepared"):
        manifest = prepare(InteractionFileReader(str(tmp_path / "log.parquet")), RandomSplit(0.3, 0.3),
                           tmp_path / "prepared", shards=3)
    assert "valid/test pair(s) of items with no training pair into train" in caplog.text
    splits = PreparedShards(str(tmp_path / "prepared")).read([0, 1, 2])
    held_out = pl.concat([splits["valid"], splits["test"]])
    assert held_out["item"].is_in(splits["train"]["item"].implode()).all()
    assert [sum(shard[name] for shard in manifest["shards"]) for name in ("train", "valid", "test")] == \
        [splits[name].height for name in ("train", "valid", "test")]
    for name in ("train", "valid", "test"):  # each split's item counts, after the move
        counts = np.bincount(splits[name]["item"].to_numpy(), minlength=manifest["items"])
        assert np.array_equal(PreparedShards(str(tmp_path / "prepared")).item_counts((name,)), counts)


def test_a_folder_of_parquet_files_with_text_ids_is_read_by_one_rule_for_the_whole_column(tmp_path: Path) -> None:
    # One file's user ids are all whole numbers, the other's are not: the column is text, "007" stays "007".
    parts = tmp_path / "parts"
    parts.mkdir()
    pl.DataFrame({"user_id": ["007", "7", "007", "7"], "item_id": [1, 2, 3, 1]}).write_parquet(parts / "a.parquet")
    pl.DataFrame({"user_id": ["x", "x", "y", "y"], "item_id": [2, 3, 1, 2]}).write_parquet(parts / "b.parquet")
    prepare(InteractionFileReader(str(parts)), RandomSplit(0.25, 0.25), tmp_path / "prepared", shards=2)
    users, items = PreparedShards(str(tmp_path / "prepared")).vocabularies()
    assert users.ids.to_list() == ["007", "7", "x", "y"]
    assert items.ids.dtype == pl.Int64 and items.ids.to_list() == [1, 2, 3]


def test_a_temporal_preparation_holds_out_each_users_latest(tmp_path: Path) -> None:
    log = pl.DataFrame({"user_id": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4],
                        "item_id": [10, 11, 12, 10, 12, 11, 10, 12, 13, 14, 13, 14, 10, 12],
                        "timestamp": [3, 1, 2, 5, 6, 4, 1, 2, 3, 4, 1, 2, 3, 4]})
    log.write_csv(tmp_path / "log.csv")
    prepare(InteractionFileReader(str(tmp_path / "log.csv")), TemporalSplit(), tmp_path / "prepared", shards=2)
    prepared = PreparedShards(str(tmp_path / "prepared"))
    splits = prepared.read(list(range(prepared.shard_count)))
    users, items = prepared.vocabularies()
    assert pairs(splits["test"], users.ids, items.ids) == {(1, 10), (2, 12), (3, 14), (4, 12)}
    assert pairs(splits["valid"], users.ids, items.ids) == {(1, 12), (2, 10), (3, 13), (4, 10)}


def test_an_interrupted_preparation_leaves_the_finished_one_as_it_was(tmp_path: Path, log_file: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "prepared"
    prepare(InteractionFileReader(str(log_file)), RandomSplit(), out, shards=2)
    before = {path.name: path.read_bytes() for path in out.rglob("*") if path.is_file()}

    def fail(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(prepared_module, "write_shard", fail)
    with pytest.raises(KeyboardInterrupt):
        prepare(InteractionFileReader(str(log_file)), RandomSplit(), out, shards=4)
    assert {path.name: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["prepared"]  # no half-built sibling left


def test_prepared_logs_that_do_not_fit_are_refused_in_one_line(tmp_path: Path, log_file: Path) -> None:
    with pytest.raises(DataError, match="prepare it first with twotower-prepare"):
        PreparedShards(str(tmp_path / "missing"))
    for name in ("one", "two"):
        prepare(InteractionFileReader(str(log_file)), RandomSplit(seed=len(name)), tmp_path / name, shards=2)
    prepared = PreparedShards(str(tmp_path / "one"))
    with pytest.raises(DataError, match=r"has 2 shard\(s\) for 3 processes.*shards=3"):
        prepared.shards_of(2, 3)
    # A shard of another preparation (other vocabularies) mixed in.
    other = pl.DataFrame({"user_id": [1, 2], "item_id": [5, 6]})
    other.write_csv(tmp_path / "other.csv")
    prepare(InteractionFileReader(str(tmp_path / "other.csv")), RandomSplit(0, 0), tmp_path / "other", shards=2)
    shards = tmp_path / "other" / "shards", tmp_path / "one" / "shards"
    shutil.copy(shards[0] / "part-00000.parquet", shards[1] / "part-00001.parquet")
    with pytest.raises(DataError, match="prepared with other vocabularies"):
        prepared.read([0, 1])
    # A folder of another format version.
    manifest = json.loads((tmp_path / "two" / MANIFEST).read_text())
    (tmp_path / "two" / MANIFEST).write_text(json.dumps(manifest | {"format": 0, "version": "0.0.1"}))
    with pytest.raises(DataError, match=r"prepared by twotower 0\.0\.1 in format 0.*prepare the log again"):
        PreparedShards(str(tmp_path / "two"))


def test_the_prepare_command_says_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    pl.DataFrame({"user": [1], "item_id": [2]}).write_csv(tmp_path / "log.csv")
    command = [sys.executable, "-m", "twotower.commands.prepare", f"out={tmp_path / 'prepared'}"]
    missing = subprocess.run([*command, f"data.path={tmp_path / 'log.csv'}"], capture_output=True, text=True)
    assert missing.returncode == 2 and "missing column(s) ['user_id']" in missing.stderr
    assert "Traceback" not in missing.stderr and not (tmp_path / "prepared").exists()
    nothing = subprocess.run([*command, f"data.path={tmp_path / 'logs' / '*.parquet'}"], capture_output=True,
                             text=True)
    assert nothing.returncode == 2 and "nothing matches" in nothing.stderr


def equal_shares(rank: int, world: int, rendezvous: str, counts: list[int], found: dict) -> None:
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world)
    try:
        batches = EpochBatchSampler(counts[rank], own_data=True)
        chunks = ShardedChunks(counts[rank], own_data=True)
        found[rank] = (len(batches), len(list(batches)), list(chunks))
    finally:
        dist.destroy_process_group()


def test_processes_holding_uneven_shares_take_equal_steps_and_rank_all_their_own_users(tmp_path: Path) -> None:
    found = mp.Manager().dict()
    mp.spawn(equal_shares, args=(2, f"file://{tmp_path / 'rendezvous'}", [5, 3], found), nprocs=2)
    assert found[0][:2] == found[1][:2] == (3, 3)  # the fewest batches any process has: nobody waits at the sync
    assert found[0][2] == [0, 1, 2, 3, 4] and found[1][2] == [0, 1, 2]  # evaluation: each its own users, all


def test_training_from_a_prepared_log_in_one_process_exports_every_user(tmp_path: Path, log_file: Path) -> None:
    prepare(InteractionFileReader(str(log_file)), RandomSplit(), tmp_path / "prepared", shards=3)
    metrics = train(compose_train(tmp_path / "run", "data=prepared", f"data.path={tmp_path / 'prepared'}",
                                  "trainer.max_epochs=3", "model.dim=16", "model.temperature=0.15"))
    assert metrics["val/recall@20"] > 1.3 * metrics["val/popularity/recall@20"]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["trained_on"] == ["train", "valid", "test"] and run["n_users"] == 300
    written = pl.concat(pl.read_parquet(tmp_path / "run" / "splits" / f"{name}.parquet")
                        for name in ("train", "valid", "test"))
    assert written.height == pl.concat(PreparedShards(str(tmp_path / "prepared")).read([0, 1, 2]).values()).height


def run_ddp(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "twotower.commands.train", "trainer=ddp", "progress=none",
                           "show_similar_to=null", *overrides], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.mark.slow
def test_two_processes_train_from_their_own_shards_and_agree_with_one(tmp_path: Path, log_file: Path) -> None:
    prepare(InteractionFileReader(str(log_file)), RandomSplit(), tmp_path / "prepared", shards=4)
    run_dir = tmp_path / "run"
    result = run_ddp("data=prepared", f"data.path={tmp_path / 'prepared'}", "trainer.max_epochs=3",
                     "model.temperature=0.15", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "error" not in result.stderr
    log = (run_dir / "train.log").read_text()
    assert "process 0 of 2: shard(s) [0, 2] of 4" in log
    ranks = [json.loads((run_dir / "metrics" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    # Each process ranked its own users; together, the full evaluation of the selected model in one process.
    selected = TwoTowerModel.load_from_checkpoint(run_dir / "checkpoints" / "best.ckpt", map_location="cpu")
    train_split, valid = (pl.read_parquet(run_dir / "splits" / f"{name}.parquet") for name in ("train", "valid"))
    n_users = selected.hparams.n_users
    histories = UserItems.from_frame(train_split, n_users)
    selected.user_tower.load_history(torch.from_numpy(histories.indptr), torch.from_numpy(histories.items))
    weight = json.loads((run_dir / "run.json").read_text())["chosen"]["model.popularity_prior"]["value"]
    with torch.no_grad():  # ranked with the popularity prior chosen by the two processes together
        prior = np.full((n_users, 1), weight * selected.hparams.temperature, np.float32)
        users = np.hstack([selected.all_user_vectors().numpy(), prior])
        items = np.hstack([selected.all_item_vectors().numpy(), selected.item_prior.numpy()[:, None]])
    full = evaluate_vectors(users, items, histories, UserItems.from_frame(valid, n_users))
    assert ranks[0]["val/ndcg@20"] == pytest.approx(full["ndcg@20"], abs=1e-6)
    assert ranks[0]["val/recall@10"] == pytest.approx(full["recall@10"], abs=1e-6)
    # The exported vectors encode every user's whole history, whichever process trained them, and serve.
    retriever = Retriever.load(run_dir)
    assert retriever.run.manifest.n_users == n_users == 300
    every = pl.concat(pl.read_parquet(run_dir / "splits" / f"{n}.parquet") for n in ("train", "valid", "test"))
    final = TwoTowerModel.load_from_checkpoint(run_dir / "checkpoints" / "final.ckpt", map_location="cpu")
    histories = UserItems.from_frame(every.sort("user"), n_users)
    # The exported checkpoint holds every user's history, not only those of the process that saved it.
    assert np.array_equal(final.user_tower.history_indptr.numpy(), histories.indptr)
    with torch.no_grad():
        expected = final.all_user_vectors().numpy()
    exported = np.stack(pl.read_parquet(run_dir / "embeddings" / "users.parquet")["vector"].to_list())
    width = retriever.run.manifest.model_dim
    assert np.allclose(exported[:, :width], expected, atol=1e-5)
    if retriever.run.manifest.prior:  # and the prior over the whole log's counts, not those of process 0's share
        assert np.allclose(exported[:, width:], final.prior_weight)
        counts = np.bincount(every["item"].to_numpy(), minlength=final.hparams.n_items)
        assert np.allclose(retriever.run.item_vectors[:, -1], np.log1p(counts))
        assert np.allclose(final.item_prior.numpy(), np.log1p(counts))
    for user in (retriever.run.user_vocab.ids[0], retriever.run.user_vocab.ids[-1]):
        assert len(retriever.recommend(user, k=5).records()) == 5


def pair_batch(rows: slice, n_items: int = 40, n_negatives: int = 3) -> tuple[PairBatch, torch.Tensor, ...]:
    """Rows ``rows`` of one seeded batch of 12 pairs: the batch and its user, item and negative vectors."""
    generator = torch.Generator().manual_seed(0)
    items = torch.randint(n_items, (12,), generator=generator)
    negatives = torch.randint(n_items, (12, n_negatives), generator=generator)
    valid = torch.rand(12, n_negatives, generator=generator) > 0.2
    log_q = -torch.rand(12, generator=generator), -torch.rand(12, n_negatives, generator=generator)
    vectors = torch.randn(12, 8, generator=generator), torch.randn(n_items, 8, generator=generator)
    users, table = (vector.requires_grad_() for vector in vectors)
    batch = PairBatch(torch.arange(12)[rows], items[rows], negatives[rows], valid[rows], log_q[0][rows],
                      log_q[1][rows])
    return batch, users, table


def gathered_loss(rank: int, world: int, rendezvous: str, first: int, found: dict) -> None:
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world)
    try:
        rows = slice(0, first) if rank == 0 else slice(first, 12)
        batch, users, table = pair_batch(rows)
        loss = SampledSoftmaxLoss()(users[rows], table[batch.items], table[batch.negatives], batch)
        loss.backward()
        found[rank] = (loss.item(), len(batch.items), users.grad.clone(), table.grad.clone())
    finally:
        dist.destroy_process_group()


def test_two_processes_softmax_over_their_gathered_candidates_as_one_process_over_both_batches(
        tmp_path: Path) -> None:
    batch, users, table = pair_batch(slice(None))
    whole = SampledSoftmaxLoss()(users, table[batch.items], table[batch.negatives], batch)
    whole.backward()
    for first in (6, 7):  # halves of 6 and 6, then of 7 and 5 (an epoch's last batches can differ)
        found = mp.Manager().dict()
        mp.spawn(gathered_loss, args=(2, f"file://{tmp_path / f'rendezvous{first}'}", first, found), nprocs=2)
        (loss0, n0, users0, table0), (loss1, n1, users1, table1) = found[0], found[1]
        # The same loss: each process's mean over its rows, weighted by them.
        assert (loss0 * n0 + loss1 * n1) / 12 == pytest.approx(whole.item(), abs=1e-6)
        if first == 6:  # and, averaged over the processes as DDP's all-reduce does, the same gradients
            assert torch.allclose((users0 + users1) / 2, users.grad, atol=1e-6)
            assert torch.allclose((table0 + table1) / 2, table.grad, atol=1e-6)


@pytest.mark.parametrize(("environment", "devices", "expected"), [
    ({}, (2, 1), (0, 2)),  # the first process, before Lightning starts the others
    ({"LOCAL_RANK": "1", "NODE_RANK": "1", "WORLD_SIZE": "4"}, (2, 2), (3, 4)),  # one Lightning started
    ({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, (1, 1), (5, 8)),  # torchrun's
    ({"SLURM_PROCID": "3", "SLURM_NTASKS": "4"}, (2, 2), (3, 4)),  # srun's
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, (2, 1), (0, 2)),  # one task, in which Lightning starts two
])
def test_a_process_knows_its_share_before_the_process_group_exists(
        monkeypatch: pytest.MonkeyPatch, environment: dict, devices: tuple, expected: tuple) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert planned_process(*devices) == expected


@pytest.mark.parametrize(("trainer", "expected"), [
    (["trainer=ddp"], {"devices": 2, "nodes": 1}),
    (["trainer.devices=2"], {"devices": 2, "nodes": 1}),  # strategy auto starts DDP for several devices too
    (["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"], {"devices": 4, "nodes": 2}),
    (["+trainer.strategy=single_device"], {"devices": 1, "nodes": 1}),
])
def test_the_processes_a_trainer_will_start(tmp_path: Path, trainer: list[str], expected: dict) -> None:
    assert planned_processes(compose_train(tmp_path, *trainer).trainer) == expected


def test_a_prepared_log_needs_the_number_of_devices_and_an_in_memory_log_does_not(
        tmp_path: Path, log_file: Path) -> None:
    prepare(InteractionFileReader(str(log_file)), RandomSplit(), tmp_path / "prepared", shards=2)
    cfg = compose_train(tmp_path / "run", "data=prepared", f"data.path={tmp_path / 'prepared'}", "trainer.devices=auto")
    with pytest.raises(ConfigError, match=r"needs trainer\.devices as a number"):
        build_datamodule(cfg).setup()
    in_memory = compose_train(tmp_path / "run", "data=interactions", f"data.path={log_file}", "trainer=ddp",
                              "trainer.devices=-1")
    build_datamodule(in_memory).setup()


@pytest.mark.parametrize(("ids", "message"), [
    ([1.0, 2.5, 3.0], "holds non-integer numbers"),
    (["a", " ", "b"], "has 1 blank id"),
])
def test_ids_a_log_cannot_have_are_refused_out_of_core_as_in_memory(tmp_path: Path, ids: list, message: str) -> None:
    pl.DataFrame({"user_id": ids, "item_id": [1, 2, 3]}).write_parquet(tmp_path / "log.parquet")
    for read in (lambda: prepare(InteractionFileReader(str(tmp_path / "log.parquet")), RandomSplit(),
                                 tmp_path / "prepared"),
                 lambda: InteractionFileReader(str(tmp_path / "log.parquet")).read()):
        with pytest.raises(TwoTowerError, match=message):
            read()
    assert not (tmp_path / "prepared").exists()


def test_a_process_holding_a_share_counts_items_over_the_whole_log(tmp_path: Path, log_file: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The sampler's frequencies (logQ) and the popularity prior are the whole log's, not a process's share."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    prepare(InteractionFileReader(str(log_file)), RandomSplit(), tmp_path / "prepared", shards=2)
    splits = PreparedShards(str(tmp_path / "prepared")).read([0, 1])
    datamodule = build_datamodule(compose_train(tmp_path / "run", "data=prepared",
                                                f"data.path={tmp_path / 'prepared'}", "trainer=ddp"))
    datamodule.setup()
    assert datamodule.sharded and len(datamodule.train_items) < splits["train"].height  # process 0's share
    for names in (("train",), ("train", "valid", "test")):
        datamodule.fit_on(names)
        counts = sum(np.bincount(splits[name]["item"].to_numpy(), minlength=datamodule.n_items) for name in names)
        assert np.array_equal(datamodule.training_item_counts(), counts)
        assert torch.allclose(datamodule.sampler.frequency, torch.from_numpy(counts / counts.sum()))


@pytest.mark.parametrize("shards", [1, 16])
def test_one_number_spelled_two_ways_is_refused_whichever_pieces_hold_them(tmp_path: Path, shards: int) -> None:
    users = ["5", "5.0", *(f"u{index}" for index in range(30))]  # text ids: "5" and "5.0" would be two users
    pl.DataFrame({"user_id": users, "item_id": list(range(len(users)))}).write_parquet(tmp_path / "log.parquet")
    with pytest.raises(TwoTowerError, match=r"column 'user_id' writes one number as several ids, e.g. \['5', '5.0'\]"):
        prepare(InteractionFileReader(str(tmp_path / "log.parquet")), RandomSplit(), tmp_path / "prepared",
                shards=shards)
    assert not (tmp_path / "prepared").exists()


def test_a_repeated_header_line_is_refused_out_of_core_as_in_memory(tmp_path: Path) -> None:
    (tmp_path / "log.csv").write_text("user_id,item_id\n1,2\n3,4\nuser_id,item_id\n5,6\n")
    for read in (lambda: prepare(InteractionFileReader(str(tmp_path / "log.csv")), RandomSplit(),
                                 tmp_path / "prepared"),
                 lambda: InteractionFileReader(str(tmp_path / "log.csv")).read()):
        with pytest.raises(TwoTowerError, match=r"log\.csv: line 4 repeats the header \(user_id, item_id\)"):
            read()
    assert not (tmp_path / "prepared").exists()


def test_a_run_from_a_prepared_log_resumes_where_it_stopped_as_if_never_stopped(tmp_path: Path,
                                                                                log_file: Path) -> None:
    """Batches are a function of (seed, epoch): epochs 3-4 after a resume from epoch 2's checkpoint are those
    of a run that never stopped, whichever process makes them (the resumed run loads them in a worker)."""
    prepare(InteractionFileReader(str(log_file)), RandomSplit(), tmp_path / "prepared", shards=2)
    common = ["data=prepared", f"data.path={tmp_path / 'prepared'}", "model.temperature=0.15", "model.dim=16",
              "callbacks.early_stopping=null", "final_fit=false", "test=false", "model.popularity_prior=0"]
    straight = train(compose_train(tmp_path / "straight", *common, "trainer.max_epochs=4"))
    train(compose_train(tmp_path / "stopped", *common, "trainer.max_epochs=2"))
    resumed = train(compose_train(tmp_path / "resumed", *common, "trainer.max_epochs=4", "datamodule.num_workers=1",
                                  f"ckpt_path={tmp_path / 'stopped' / 'checkpoints' / 'last.ckpt'}"))
    log = (tmp_path / "resumed" / "train.log").read_text()
    assert "selection, epoch 3/4" in log and "selection, epoch 4/4" in log and "epoch 2/4" not in log
    assert resumed["val/ndcg@20"] == pytest.approx(straight["val/ndcg@20"], abs=1e-6)
    assert resumed["val/recall@20"] == pytest.approx(straight["val/recall@20"], abs=1e-6)
