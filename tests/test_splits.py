from pathlib import Path

import polars as pl
import pytest

from twotower.data.datamodule import InteractionDataModule
from twotower.data.interactions import InteractionLog, deduplicate, positives, with_order
from twotower.data.readers import InteractionFileReader
from twotower.data.sampling import NegativeSampler
from twotower.data.splits import PresplitSplit, RandomSplit, TemporalSplit, cover_holdouts
from twotower.data.synthetic import planted_interactions
from twotower.errors import TwoTowerError


def encoded(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.rename({"user_id": "user", "item_id": "item"})


def assert_disjoint_and_complete(frame: pl.DataFrame, splits: dict[str, pl.DataFrame]) -> None:
    keys = [set(splits[name].select("user", "item").rows()) for name in ("train", "valid", "test")]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert keys[0] | keys[1] | keys[2] == set(frame.select("user", "item").rows())
    assert set(splits["train"]["user"]) == set(frame["user"])  # every user keeps a training item


def test_random_split_is_leak_free_and_seeded() -> None:
    frame = encoded(planted_interactions(n_users=200, n_items=100, seed=1))
    splits = RandomSplit(0.1, 0.2, seed=3).split(frame)
    assert_disjoint_and_complete(frame, splits)
    share = splits["test"].height / frame.height
    assert 0.15 < share < 0.25
    again = RandomSplit(0.1, 0.2, seed=3).split(frame.sample(fraction=1.0, shuffle=True, seed=9))
    assert sorted(again["test"].rows()) == sorted(splits["test"].rows())  # row order does not matter


def test_temporal_split_holds_out_the_latest() -> None:
    frame = encoded(planted_interactions(n_users=100, n_items=80, seed=2))
    splits = TemporalSplit(valid_last=1, test_last=2).split(with_order(frame, "the log", "split=temporal"))
    assert_disjoint_and_complete(frame, splits)
    stamped = frame.select("user", "item", "timestamp")
    test_times = splits["test"].join(stamped, on=["user", "item"]).group_by("user").agg(pl.min("timestamp"))
    train_times = splits["train"].join(stamped, on=["user", "item"]).group_by("user").agg(pl.max("timestamp"))
    joined = test_times.join(train_times, on="user", suffix="_train")
    assert (joined["timestamp"] >= joined["timestamp_train"]).all()
    assert splits["test"].group_by("user").len()["len"].max() == 2


def test_single_interaction_users_stay_in_train() -> None:
    frame = pl.DataFrame({"user": [0, 1, 1, 1], "item": [0, 0, 1, 2], "timestamp": [1, 1, 2, 3]})
    splits = TemporalSplit(1, 1).split(with_order(frame, "the log", "split=temporal"))
    assert splits["train"].filter(pl.col("user") == 0).height == 1
    assert splits["test"].select("user", "item").rows() == [(1, 2)]
    assert splits["valid"].select("user", "item").rows() == [(1, 1)]


def test_temporal_split_needs_an_order() -> None:
    with pytest.raises(TwoTowerError, match="split=temporal needs the order of each user's interactions"):
        with_order(pl.DataFrame({"user": [0], "item": [0]}), "the log", "split=temporal")


def test_ties_in_time_keep_file_order() -> None:
    frame = pl.DataFrame({"user": [0, 0, 0], "item": [5, 3, 4], "timestamp": [2, 1, 1]})
    assert with_order(frame, "the log", "split=temporal").sort("order")["item"].to_list() == [3, 4, 5]


def test_presplit_drops_held_out_pairs_already_in_train() -> None:
    frame = pl.DataFrame({
        "user_id": [0, 0, 0, 1], "item_id": [1, 2, 1, 3], "split": ["train", "test", "test", "valid"]})
    splits = PresplitSplit().split(deduplicate(encoded(positives(InteractionLog(frame)))))
    assert splits["test"].rows() == [(0, 2)]
    assert splits["valid"].rows() == [(1, 3)]


def test_positives_by_rating_label_and_dedup() -> None:
    frame = pl.DataFrame({"user_id": [1, 1, 1, 2], "item_id": [1, 1, 2, 3], "rating": [5.0, 4.0, 2.0, 4.0],
                          "timestamp": [1, 2, 3, 4]})
    kept = deduplicate(encoded(positives(InteractionLog(frame, min_rating=4))))
    assert kept.select("user", "item", "timestamp").rows() == [(1, 1, 2), (2, 3, 4)]
    labels = pl.DataFrame({"user_id": [1, 2], "item_id": [1, 1], "label": [0.0, -1.0]})
    with pytest.raises(TwoTowerError, match="every label is <= 0"):
        positives(InteractionLog(labels))


def test_held_out_pairs_of_ids_never_trained_on_move_to_train_or_are_dropped() -> None:
    frame = pl.DataFrame({"user": [0, 0, 1, 1, 2, 1, 2, 3], "item": [0, 1, 0, 1, 0, 5, 1, 0],
                          "split": ["train", "train", "train", "valid", "valid", "test", "test", "test"]})
    splits = cover_holdouts(PresplitSplit().split(frame), test_given=True)
    # User 2 has no training pair: its valid pair trains, and then its test pair can be scored. Item 5 and
    # user 3 are strangers to train: a test file given on its own drops their pairs (it must stay unseen).
    assert splits["train"].rows() == [(0, 0), (0, 1), (1, 0), (2, 0)]
    assert splits["valid"].rows() == [(1, 1)]
    assert splits["test"].rows() == [(2, 1)]
    single_log = cover_holdouts(PresplitSplit().split(frame), test_given=False)
    assert single_log["train"].rows() == [(0, 0), (0, 1), (1, 0), (1, 5), (2, 0), (3, 0)]
    assert single_log["test"].rows() == [(2, 1)]


def test_ids_of_a_given_test_file_only_are_not_in_the_vocabulary(tmp_path: Path) -> None:
    files = {"train": "1,10\n1,11\n2,10\n", "valid": "2,11\n3,10\n", "test": "3,11\n4,10\n1,12\n"}
    for name, rows in files.items():
        (tmp_path / f"{name}.csv").write_text("user_id,item_id\n" + rows)
    reader = InteractionFileReader(str(tmp_path / "train.csv"), valid_path=str(tmp_path / "valid.csv"),
                                   test_path=str(tmp_path / "test.csv"))
    datamodule = InteractionDataModule(reader, PresplitSplit(), NegativeSampler())
    datamodule.setup("fit")
    # User 3 trains on its valid pair; user 4 and item 12 exist only in the test file: no vector for them.
    assert datamodule.user_vocab.ids.to_list() == [1, 2, 3] and datamodule.item_vocab.ids.to_list() == [10, 11]
    decoded = {name: [(int(datamodule.user_vocab.ids[u]), int(datamodule.item_vocab.ids[i])) for u, i in split.rows()]
               for name, split in datamodule.splits.items()}
    assert decoded == {"train": [(1, 10), (1, 11), (2, 10), (3, 10)], "valid": [(2, 11)], "test": [(3, 11)]}


def test_validation_ranks_a_seeded_sample_of_val_users_and_test_ranks_every_user(tmp_path: Path) -> None:
    planted_interactions(n_users=300, n_items=50, n_clusters=5, seed=0).write_parquet(tmp_path / "log.parquet")

    def datamodule(val_users: int | None) -> InteractionDataModule:
        loaded = InteractionDataModule(InteractionFileReader(str(tmp_path / "log.parquet")), RandomSplit(),
                                       NegativeSampler(), val_users=val_users)
        loaded.setup("fit")
        return loaded

    def targets(loader: object) -> dict[int, list[int]]:
        found: dict[int, list[int]] = {}
        for batch in loader:
            for row, item in zip(batch.target_rows.tolist(), batch.target_items.tolist(), strict=True):
                found.setdefault(int(batch.users[row]), []).append(item)
        return found

    every, capped = datamodule(None), datamodule(100)
    all_targets, sampled = targets(every.val_dataloader()), targets(capped.val_dataloader())
    assert len(all_targets) > 250 and len(sampled) == 100
    assert all(all_targets[user] == items for user, items in sampled.items())  # each user whole
    assert sampled == targets(capped.val_dataloader())  # the same users every epoch
    assert targets(capped.test_dataloader()) == targets(every.test_dataloader())
    with pytest.raises(TwoTowerError, match="val_users must be an integer >= 1"):
        datamodule(0)
