"""Data path and training throughput at 1M and 10M interactions, side by side with a plain PyTorch loop.

    python scripts/benchmark_scale.py                                  # 1M and 10M, batch sizes 512..8192
    python scripts/benchmark_scale.py --sizes 1000000 --steps 100

For each synthetic log (``scripts/make_synthetic.py``'s generator, written as Parquet):

- preparation: reading, positives, vocabularies, deduplication, the default random split, training
  tensors, the sampler and the evaluation structures (``InteractionDataModule.setup`` plus its loaders),
  timed in fresh processes whose peak memory above their start (after imports) is compared with the size
  of the log's raw integer columns; median of ``--repeats``;
- training throughput (interactions per second) of the Lightning pipeline (Trainer, DataLoader, logging)
  and of a minimal loop that slices the same batches from the same tensors and runs the same
  ``model.loss`` and optimizer step, alternating in the same process, median of ``--repeats``; for the
  dense model (``model=default``, Adam) and the sparse one (``model=sparse``, row-wise Adagrad).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from twotower.data.batches import PairBatches
from twotower.data.datamodule import InteractionDataModule
from twotower.data.readers import InteractionFileReader
from twotower.data.sampling import NegativeSampler
from twotower.data.splits import RandomSplit
from twotower.data.synthetic import planted_interactions
from twotower.model.module import TwoTowerModel
from twotower.model.optim import ID_TOWER

PREPARE = """
import json, sys, time
from pathlib import Path
from twotower.data.datamodule import InteractionDataModule
from twotower.data.readers import InteractionFileReader
from twotower.data.splits import RandomSplit
from twotower.data.sampling import NegativeSampler

def resident(field):  # kB figures from /proc/self/status (Linux)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

# Importing torch and Lightning touches more memory than the data path needs: reset the high-water mark
# (writing 5 to clear_refs) so that the peak is the data path's own.
Path("/proc/self/clear_refs").write_text("5")
start = resident("VmRSS")
started = time.perf_counter()
datamodule = InteractionDataModule(InteractionFileReader(sys.argv[1]), RandomSplit(), NegativeSampler())
datamodule.setup("fit")
datamodule.train_dataloader(), datamodule.val_dataloader()
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "peak_bytes": resident("VmHWM") - start}))
"""


def prepare(path: Path) -> dict:
    output = subprocess.run([sys.executable, "-c", PREPARE, str(path)], capture_output=True, text=True, check=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def loss_spec(name: str) -> dict:
    """The loss as ``loss=NAME`` configures it (conf/loss/NAME.yaml)."""
    return OmegaConf.to_container(OmegaConf.load(files("twotower.conf") / "loss" / f"{name}.yaml"))


def model_for(datamodule: InteractionDataModule, loss: str, variant: str) -> TwoTowerModel:
    """conf/model/default.yaml (dense Adam) or conf/model/sparse.yaml (sparse gradients, its sparse_optimizer)."""
    torch.manual_seed(0)
    sparse = variant == "sparse"
    model_cfg = OmegaConf.load(files("twotower.conf") / "model" / "default.yaml")
    optimizer = instantiate(model_cfg.sparse_optimizer if sparse else model_cfg.optimizer)
    return TwoTowerModel(datamodule.n_users, datamodule.n_items, dim=128, score="cosine", temperature=0.15,
                         loss=loss_spec(loss), user_tower={"_target_": ID_TOWER, "sparse": sparse},
                         item_tower={"_target_": ID_TOWER, "sparse": sparse},
                         optimizer=optimizer)


def plain_loop(datamodule: InteractionDataModule, loss: str, variant: str, steps: int, warmup: int) -> float:
    """Seconds for ``steps`` optimizer steps: slice a batch, compute the loss, backward, Adam."""
    model = model_for(datamodule, loss, variant)
    optimizer = model.configure_optimizers()
    batches = PairBatches(datamodule.train_users, datamodule.train_items, datamodule.batch_size,
                          datamodule.sampler, seed=0)
    for step in range(warmup + steps):
        if step == warmup:
            started = time.perf_counter()
        value = model.loss(batches[(0, step % len(batches))])
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    return time.perf_counter() - started


class StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup = warmup

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.warmup:
            self.started = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, *args: object) -> None:
        self.seconds = time.perf_counter() - self.started


def lightning_loop(datamodule: InteractionDataModule, loss: str, variant: str, steps: int, warmup: int) -> float:
    timer = StepTimer(warmup)
    trainer = L.Trainer(max_steps=warmup + steps, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False, callbacks=[timer], accelerator="cpu", devices=1)
    trainer.fit(model_for(datamodule, loss, variant), train_dataloaders=datamodule.train_dataloader())
    return timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[1_000_000, 10_000_000])
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[512, 2048, 8192])
    parser.add_argument("--losses", nargs="*", default=["bpr", "softmax"])
    parser.add_argument("--models", nargs="*", default=["default", "sparse"], choices=["default", "sparse"],
                        help="conf/model/default.yaml (dense Adam) and/or conf/model/sparse.yaml (row-wise Adagrad)")
    parser.add_argument("--steps", type=int, default=60, help="timed optimizer steps per measurement")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    results = []
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            path = Path(folder) / f"log-{size}.parquet"
            log = planted_interactions(n_users=size // 50, n_items=max(100, size // 50), n_clusters=200,
                                       interactions_per_user=50, popularity_exponent=0.8, seed=0)
            log.write_parquet(path)
            raw = log.estimated_size()  # the generator's columns are all integers
            # Allocators keep freed memory for a while, so the peak varies from process to process.
            runs = [prepare(path) for _ in range(args.repeats)]
            prepared = {key: statistics.median(run[key] for run in runs) for key in ("seconds", "peak_bytes")}
            worst = max(run["peak_bytes"] for run in runs)
            print(f"\n## {log.height:,} interactions: preparation {prepared['seconds']:.1f}s, peak memory "
                  f"{prepared['peak_bytes'] / 2**20:.0f} MiB = {prepared['peak_bytes'] / raw:.2f}x the raw integer "
                  f"columns ({raw / 2**20:.0f} MiB; highest of {len(runs)} runs {worst / raw:.2f}x)", flush=True)
            print("| loss | model | batch | plain loop (interactions/s) | Lightning (interactions/s) | ratio |")
            print("|---|---|---|---|---|---|")
            datamodule = InteractionDataModule(InteractionFileReader(str(path)), RandomSplit(), NegativeSampler())
            datamodule.setup("fit")
            for loss, variant in itertools.product(args.losses, args.models):
                # A softmax batch scores every positive against all the batch's candidates, so its cost per
                # interaction grows with the batch; past 2,048 it is not a setting anyone would train with.
                for batch_size in [b for b in args.batch_sizes if loss != "softmax" or b <= 2048]:
                    datamodule.batch_size = batch_size
                    # Alternate the two so that drifts in machine load fall on both alike.
                    timings = [(plain_loop(datamodule, loss, variant, args.steps, args.warmup),
                                lightning_loop(datamodule, loss, variant, args.steps, args.warmup))
                               for _ in range(args.repeats)]
                    plain = statistics.median(seconds for seconds, _ in timings)
                    framework = statistics.median(seconds for _, seconds in timings)
                    rate_plain, rate_lightning = args.steps * batch_size / plain, args.steps * batch_size / framework
                    print(f"| {loss} | {variant} | {batch_size} | {rate_plain:,.0f} | {rate_lightning:,.0f} | "
                          f"{rate_lightning / rate_plain:.2f} |", flush=True)
                    results.append({"interactions": log.height, "loss": loss, "model": variant,
                                    "batch_size": batch_size, "plain": rate_plain, "lightning": rate_lightning,
                                    "prepare_seconds": prepared["seconds"], "peak_bytes": prepared["peak_bytes"],
                                    "raw_bytes": raw})
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
