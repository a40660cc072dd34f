"""The run directory: where each artifact lives, what ``run.json`` says (``Manifest``), and the one way to open
a finished run (``Run.open``), which checks everything once.

A run directory is the unit users move around: resolved config, checkpoints, metrics, vocabularies, splits,
exported vectors, the index and, after serving, the catalogue's added and removed items. ``run.json`` is
written last, so a directory without it is not a finished run, and it vouches for the artifacts by their
fingerprints: a file copied from another run, or edited, is refused rather than served as this run's.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl

from twotower.data.splits import SPLIT_NAMES
from twotower.data.user_items import UserItems
from twotower.data.vocab import Vocabulary
from twotower.errors import ConfigError, RunError
from twotower.files import fingerprint, read_parquet, write_json, write_parquet

CATALOGUE_NAMES = ("added", "removed")
# A run directory's own entries: a re-run replaces all of them (and leaves Hydra's .hydra/ and train.log).
RUN_ENTRIES = ("config.yaml", "vocab", "splits", "checkpoints", "logs", "embeddings", "index", "metrics",
               "catalogue", "plots", "projector")


# Exported vectors (``embeddings/*.parquet``): ``id`` (the original id, original dtype) and ``vector`` (list
# of float32), in vocabulary index order. Ranking items by the dot product of these vectors is the model's.


def write_vectors(ids: pl.Series, vectors: np.ndarray, path: Path) -> None:
    if len(ids) != len(vectors):
        raise ValueError(f"{len(ids)} ids but {len(vectors)} vectors")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    column = pl.Series("vector", vectors).cast(pl.List(pl.Float32))
    write_parquet(pl.DataFrame([ids.alias("id"), column]), path)


def read_vectors(path: Path) -> tuple[pl.Series, np.ndarray]:
    """``(ids, vectors)`` with vectors as a writable, C-contiguous float32 (n, dim) array."""
    frame = read_parquet(path)
    if frame.columns != ["id", "vector"]:
        raise RunError(f"{path}: expected columns ['id', 'vector'], found {frame.columns}")
    lengths = frame["vector"].list.len().unique()
    if len(lengths) != 1:
        raise RunError(f"{path}: vectors have different lengths {sorted(lengths.to_list())[:5]}")
    flat = np.array(frame["vector"].explode().to_numpy(), dtype=np.float32)  # a copy: Polars' is read-only
    return frame["id"], flat.reshape(frame.height, int(lengths[0]))


@dataclass(frozen=True)
class RunPaths:
    """Names of everything a training run leaves in its directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    def vocab(self, side: str) -> Path:
        """``side`` is ``users`` or ``items``."""
        return self.root / "vocab" / f"{side}.parquet"

    def split(self, name: str) -> Path:
        return self.root / "splits" / f"{name}.parquet"

    @property
    def dropped(self) -> Path:
        """The users and items of the source that training left out, and why (absent when none was)."""
        return self.root / "vocab" / "dropped.parquet"

    @property
    def non_positive(self) -> Path:
        """Pairs of the log that are not positives (low ratings, labels <= 0): seen, never trained on."""
        return self.root / "splits" / "non_positive.parquet"

    def embeddings(self, side: str) -> Path:
        """``users``, ``items``, or ``history``: a history tower's item vectors that embed a user's items."""
        return self.root / "embeddings" / f"{side}.parquet"

    @property
    def index(self) -> Path:
        return self.root / "index"

    def catalogue(self, name: str) -> Path:
        """``added`` or ``removed``: the items added to and removed from the catalogue after training."""
        return self.root / "catalogue" / f"{name}.parquet"

    def metrics(self, name: str) -> Path:
        return self.root / "metrics" / f"{name}.json"

    @property
    def manifest(self) -> Path:
        return self.root / "run.json"

    @property
    def staging(self) -> Path:
        """Where a re-run into a finished run directory builds its artifacts, beside the finished ones."""
        return self.root / ".staging"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    def fingerprinted(self) -> list[Path]:
        """The trained artifacts run.json vouches for besides the index (which has its own fingerprints)."""
        files = [self.vocab("users"), self.vocab("items"), self.embeddings("users"), self.embeddings("items"),
                 self.embeddings("history"), *(self.split(name) for name in SPLIT_NAMES), self.non_positive,
                 self.dropped]
        return [file for file in files if file.exists()]

    def fingerprints(self) -> dict[str, str]:
        """``{path relative to the run directory: fingerprint}`` of the artifacts run.json vouches for."""
        return {file.relative_to(self.root).as_posix(): fingerprint(file) for file in self.fingerprinted()}


@dataclass
class Manifest:
    """``run.json``: what a finished run is. Written by ``write`` (training, ``vector_run.write_vector_run``),
    read by ``Run.open``; nothing else reads the file."""

    names: dict[str, str]  # what a user and an item are called ({"user": "link", "item": "book"})
    score: str  # dot or cosine
    dim: int  # of the exported vectors: every part side by side
    n_users: int
    n_items: int
    min_rating: float | None
    checkpoint: str | None  # the exported model's, relative to the run directory
    trained_on: list[str]  # the splits the exported model learnt from
    fingerprints: dict[str, str]
    checkpoint_fingerprint: str | None = None
    selected_checkpoint: str | None = None
    monitor: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    metrics_from: dict[str, dict] = field(default_factory=dict)  # which model and splits each metric comes from
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each phase of training
    device: str | None = None  # what it trained on (cpu, cuda:0 ...)
    example_item: str | None = None  # one the data is known for, whose neighbours training shows
    parts: int = 1  # parts side by side in a vector (an ID and a history part: 2), each unit for cosine
    chosen: dict[str, dict] = field(default_factory=dict)  # options left to the run: what each became, and why
    user_tower: str | None = None  # the class of the user tower (a SequenceTower embeds histories in order)
    # The popularity prior: each user vector's last coordinate (0: the vectors have no such coordinate), met by
    # each item's log(1 + interactions it trained on) in the items' last coordinate.
    prior: float = 0.0

    @property
    def model_dim(self) -> int:
        """The width of the towers' vectors, without the prior's coordinate."""
        return self.dim - 1 if self.prior else self.dim

    @property
    def index_score(self) -> str:
        return index_score(self.score, self.prior)

    REQUIRED = ("names", "score", "dim", "n_users", "n_items", "checkpoint", "trained_on", "min_rating",
                "fingerprints")

    @classmethod
    def read(cls, paths: RunPaths) -> Manifest:
        if not paths.root.is_dir():
            raise RunError(f"run directory not found: {paths.root}")
        if not paths.manifest.exists():
            raise RunError(f"{paths.root} is not a finished run directory (run.json missing)")
        try:
            values = json.loads(paths.manifest.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RunError(f"{paths.manifest} is damaged (not valid JSON); train the run again") from error
        missing = [key for key in cls.REQUIRED if not isinstance(values, dict) or key not in values]
        if missing:
            raise RunError(f"{paths.manifest} lacks {missing} (written by another version, or edited); "
                                "train the run again")
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    def write(self, paths: RunPaths) -> None:
        write_json(dataclasses.asdict(self), paths.manifest)


def with_prior(vectors: np.ndarray, coordinate: float | np.ndarray) -> np.ndarray:
    """Vectors with the popularity prior's coordinate appended: in a user's, the prior's weight (one number),
    in each item's, its log-popularity; their dot product then ranks as the model does."""
    vectors = np.asarray(vectors, dtype=np.float32)
    column = np.broadcast_to(np.asarray(coordinate, dtype=np.float32).reshape(-1, 1), (len(vectors), 1))
    return np.hstack([vectors, column])


def index_score(score: str, prior: float) -> str:
    """What an index over a run's items ranks by: the model's score, or the dot product where the vectors carry
    the popularity prior (a cosine model's vectors are then no longer unit vectors)."""
    return "dot" if prior else score


# Where twotower-train writes a run unless told otherwise (Hydra's run directory, outputs/DATE/TIME).
OUTPUTS = Path("outputs")


def run_path(run_dir: object) -> Path:
    """A run directory given as text or a path (``None`` or an empty string is a clear error); ``latest`` is
    the newest finished run under ``outputs/``."""
    if not isinstance(run_dir, (str, os.PathLike)) or str(run_dir) == "":
        raise ConfigError(f"run_dir must be a path, got {run_dir!r}")
    return latest_run(OUTPUTS) if str(run_dir) == "latest" else Path(run_dir)


def latest_run(outputs: Path) -> Path:
    """The run under ``outputs`` whose run.json was written last."""
    finished = [manifest for pattern in ("*/run.json", "*/*/run.json") for manifest in outputs.glob(pattern)]
    if not finished:
        raise RunError(f"run_dir=latest: no finished run under {outputs.resolve()} (twotower-train writes "
                            "one there unless hydra.run.dir says otherwise); give run_dir=DIR")
    return max(finished, key=lambda manifest: manifest.stat().st_mtime).parent


class Run:
    """A finished run directory, opened and checked: its manifest, and its artifacts read on first use."""

    def __init__(self, paths: RunPaths, manifest: Manifest) -> None:
        self.paths = paths
        self.manifest = manifest

    @classmethod
    def open(cls, run_dir: str | Path) -> Run:
        """Open ``run_dir``, refusing an unfinished run, a manifest that lacks what this version needs, and
        any artifact that is not the file the run wrote."""
        paths = RunPaths(run_path(run_dir))
        run = cls(paths, Manifest.read(paths))
        run._check_fingerprints()
        return run

    @property
    def root(self) -> Path:
        return self.paths.root

    @property
    def names(self) -> dict[str, str]:
        return self.manifest.names

    @property
    def score(self) -> str:
        return self.manifest.score

    def _check_fingerprints(self) -> None:
        recorded = self.manifest.fingerprints
        paths = self.paths
        essential = [paths.vocab("users"), paths.vocab("items"), paths.embeddings("users"),
                     paths.embeddings("items"), paths.split("train")]
        unvouched = [file.name for file in essential if file.relative_to(paths.root).as_posix() not in recorded]
        if unvouched:
            raise RunError(f"{paths.manifest} has no fingerprint for {unvouched}; train the run again")
        for name, expected in recorded.items():
            file = paths.root / name
            if not file.exists():
                raise RunError(f"missing {file}; is this a finished run directory?")
            if fingerprint(file) != expected:
                remedy = ("delete catalogue/ and its entries in run.json's fingerprints to load the run without "
                          "the saved items") if name.startswith("catalogue/") else "train the run again"
                raise RunError(f"{file} does not match this run (its fingerprint differs from the one in "
                                    f"run.json): it was replaced or changed after it was written; {remedy}")

    @cached_property
    def user_vocab(self) -> Vocabulary:
        return Vocabulary.load(self.paths.vocab("users"), self.names["user"])

    @cached_property
    def item_vocab(self) -> Vocabulary:
        return Vocabulary.load(self.paths.vocab("items"), self.names["item"])

    @cached_property
    def user_vectors(self) -> np.ndarray:
        return self._vectors("users", self.user_vocab)

    @cached_property
    def item_vectors(self) -> np.ndarray:
        return self._vectors("items", self.item_vocab)

    @cached_property
    def history_vectors(self) -> np.ndarray | None:
        """A history tower's item vectors that embed a user from their items (None without one)."""
        if not self.paths.embeddings("history").exists():
            return None
        _, vectors = read_vectors(self.paths.embeddings("history"))
        if len(vectors) != len(self.item_vocab):
            raise RunError(f"{self.paths.embeddings('history')}: {len(vectors)} vectors for "
                                f"{len(self.item_vocab)} items; train the run again")
        return vectors

    def _vectors(self, side: str, vocab: Vocabulary) -> np.ndarray:
        _, vectors = read_vectors(self.paths.embeddings(side))
        if len(vectors) != len(vocab):
            raise RunError(f"{self.root}: embeddings and vocabularies disagree in size; re-export the run")
        if vectors.shape[1] != self.manifest.dim:
            raise RunError(f"{self.paths.embeddings(side)} holds vectors of dimension {vectors.shape[1]} "
                                f"but run.json says {self.manifest.dim}; train the run again")
        return vectors

    def dropped_reasons(self, side: str, ids: list[object]) -> dict[str, str]:
        """Why ``ids`` of ``side`` (user or item) are not in the run although the source had them."""
        if not self.paths.dropped.exists():
            return {}
        dropped = read_parquet(self.paths.dropped).filter(pl.col("side") == side)
        wanted = {str(id_).strip() for id_ in ids}
        return {id_: reason for id_, reason in dropped.select("id", "reason").iter_rows() if id_ in wanted}


    def split(self, name: str) -> pl.DataFrame:
        """A split as (user, item) indices."""
        return read_parquet(self.paths.split(name))

    @cached_property
    def seen(self) -> UserItems:
        return seen_items(self.paths, len(self.user_vocab))

    def saved_catalogue(self) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
        """The added and removed items saved into the run (None for a kind never saved): only files run.json
        vouches for, whose fingerprints ``open`` checked."""
        files = [self.paths.catalogue(name) for name in CATALOGUE_NAMES]
        vouched = self.manifest.fingerprints
        added, removed = (read_parquet(file) if file.relative_to(self.root).as_posix() in vouched else None
                          for file in files)
        return added, removed

    def record(self, frames: dict[Path, pl.DataFrame]) -> None:
        """Write artifacts made after training (an empty frame removes its file) and vouch for them in
        run.json, rewritten atomically, so that every later open checks them as it checks the trained ones.
        A run trained again since this one was opened is refused, not given another model's files."""
        current = Manifest.read(self.paths)
        names = {path: path.relative_to(self.root).as_posix() for path in frames}

        def trained(fingerprints: dict[str, str]) -> dict[str, str]:
            return {name: value for name, value in fingerprints.items() if name not in names.values()}

        if trained(current.fingerprints) != trained(self.manifest.fingerprints):
            raise RunError(f"{self.root} holds another run than the one loaded (it was trained again since); "
                                "load it again first")
        emptied = []
        for path, frame in frames.items():
            if frame.height:
                write_parquet(frame, path)
                current.fingerprints[names[path]] = fingerprint(path)
            else:
                current.fingerprints.pop(names[path], None)
                emptied.append(path)
        current.write(self.paths)
        self.manifest = current
        for path in emptied:  # only once run.json no longer vouches for them, so no open misses a vouched file
            path.unlink(missing_ok=True)


def seen_items(paths: RunPaths, n_users: int, users: np.ndarray | None = None) -> UserItems:
    """Each user's items anywhere in the log the run was given (every split, and the pairs that were not
    positives): what they already have; only ``users``' where given (the others' rows empty), read without
    holding the whole log."""
    where = None if users is None else pl.col("user").is_in(users.tolist())
    frames = [read_parquet(paths.split(name), where) for name in SPLIT_NAMES]
    if paths.non_positive.exists():
        frames.append(read_parquet(paths.non_positive, where))
    return UserItems.from_frame(pl.concat(frames), n_users)
