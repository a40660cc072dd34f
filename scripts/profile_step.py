"""Where a training step's time goes, and what an epoch costs at 10M against 1M: the catalogue loss's batch,
forward, backward and optimizer step, outside Lightning, for each setting, alternated in one process.

    python scripts/profile_step.py          # 1M with dense Adam, 10M with row-wise Adagrad and with LazyAdam
    python scripts/profile_step.py --settings synthetic-10m:rowwise synthetic-10m:sparseadam

A setting is ``LOG:OPTIMIZER``. The logs are ``benchmark_speed.py``'s synthetic ones (50 interactions per
user; the 1M log has 20,000 users and items, the 10M log 200,000). Each model is what the defaults build at
that size (cosine, dimension 128, batches of 256 users; beyond ``loss.sample_above`` items,
``loss.max_candidates`` sampled items, otherwise the whole catalogue), trained by: ``dense``, Adam on dense
gradients (the default below ``model.sparse_above``); ``rowwise``, row-wise Adagrad on sparse gradients (the
default beyond it, ``model.sparse_optimizer``); ``lazy``, LazyAdam; ``sparseadam``, torch's SparseAdam.
Learning rates are those of ``conf/model/default.yaml``.

Milliseconds per step: for each setting, the median over ``--rounds`` rounds of the mean over ``--steps``
steps (after ``--warmup``); the rounds alternate the settings, so noise from the machine falls on all of
them alike. An epoch is the log's number of batches times the median step (training steps only: no
validation, no Lightning), and the ratio is to the first setting's epoch.
"""

from __future__ import annotations

import argparse
import statistics
import time
from importlib.resources import files

import torch
from benchmark_speed import SYNTHETIC, synthetic_log
from hydra.utils import instantiate
from omegaconf import OmegaConf

from twotower.data.batches import UserBatches
from twotower.data.user_items import UserItems
from twotower.model.losses import CatalogueSoftmaxLoss
from twotower.model.module import TwoTowerModel
from twotower.model.optim import ID_TOWER

MODEL = OmegaConf.load(files("twotower.conf") / "model" / "default.yaml")
OPTIMIZERS = {  # name: (sparse gradients, optimizer spec)
    "dense": (False, MODEL.optimizer),
    "rowwise": (True, MODEL.sparse_optimizer),
    "lazy": (True, {"_target_": "twotower.model.optim.LazyAdam", "_partial_": True, "lr": MODEL.optimizer.lr}),
    "sparseadam": (True, {"_target_": "torch.optim.SparseAdam", "_partial_": True, "lr": MODEL.optimizer.lr}),
}
PHASES = ("batch", "forward", "backward", "step")


def setting(optimizer: str, n_users: int, n_items: int, candidates: int
            ) -> tuple[TwoTowerModel, torch.optim.Optimizer]:
    sparse, spec = OPTIMIZERS[optimizer]
    torch.manual_seed(0)
    model = TwoTowerModel(n_users, n_items, loss={"_target_": "twotower.model.losses.CatalogueSoftmaxLoss",
                                                  "max_candidates": candidates},
                          user_tower={"_target_": ID_TOWER, "sparse": sparse},
                          item_tower={"_target_": ID_TOWER, "sparse": sparse})
    return model, instantiate(spec)(model.parameters())


def profile(model: TwoTowerModel, optimizer: torch.optim.Optimizer, batches: UserBatches, epoch: int,
            warmup: int, steps: int) -> dict[str, float]:
    """Mean milliseconds per step of each phase over ``steps`` batches of one epoch, after ``warmup``."""
    totals = dict.fromkeys(PHASES, 0.0)
    for index in range(warmup + steps):
        start = time.perf_counter()
        batch = batches[(epoch, index % len(batches))]
        built = time.perf_counter()
        loss = model.loss(batch)
        forward = time.perf_counter()
        optimizer.zero_grad()
        loss.backward()
        backward = time.perf_counter()
        optimizer.step()
        stepped = time.perf_counter()
        if index >= warmup:
            for phase, seconds in zip(PHASES, (built - start, forward - built, backward - forward, stepped - backward),
                                      strict=True):
                totals[phase] += seconds
    return {phase: seconds / steps * 1000 for phase, seconds in totals.items()}


def user_batches(log: str, batch_size: int, candidates: int) -> UserBatches:
    n_users, n_items, _ = SYNTHETIC[log]
    frame = synthetic_log(log)
    positives = UserItems.from_pairs(frame["user_id"].to_numpy(), frame["item_id"].to_numpy(), n_users)
    plan = CatalogueSoftmaxLoss(max_candidates=candidates).plan(n_items)
    return UserBatches(positives, n_items, batch_size=batch_size, seed=0, candidates=plan.candidates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", metavar="LOG:OPTIMIZER",
                        default=["synthetic-1m:dense", "synthetic-10m:rowwise", "synthetic-10m:lazy"])
    parser.add_argument("--candidates", type=int, default=16_384, help="loss.max_candidates")
    parser.add_argument("--batch-size", type=int, default=256, help="datamodule.batch_size (users)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()

    settings = [name.partition(":")[::2] for name in args.settings]
    for log, optimizer in settings:
        if log not in SYNTHETIC or optimizer not in OPTIMIZERS:
            parser.error(f"unknown setting {log}:{optimizer}; logs: {sorted(SYNTHETIC)}, "
                         f"optimizers: {sorted(OPTIMIZERS)}")
    logs = dict.fromkeys(log for log, _ in settings)
    batches = {log: user_batches(log, args.batch_size, args.candidates) for log in logs}
    models = {(log, optimizer): setting(optimizer, SYNTHETIC[log][0], SYNTHETIC[log][1], args.candidates)
              for log, optimizer in settings}
    rounds: dict[tuple[str, str], list[dict[str, float]]] = {key: [] for key in models}
    for epoch in range(args.rounds):
        for (log, optimizer), (model, step) in models.items():
            rounds[log, optimizer].append(profile(model, step, batches[log], epoch, args.warmup, args.steps))

    print(f"{args.candidates:,} candidates beyond {CatalogueSoftmaxLoss().sample_above:,} items, "
          f"{args.batch_size} users a batch; ms per step, median of {args.rounds} rounds")
    print("| log | optimizer | " + " | ".join(PHASES) + " | total | batches | epoch (s) | epoch ratio |")
    print("|---" * (len(PHASES) + 6) + "|")
    first = None
    for (log, optimizer), measured in rounds.items():
        medians = {phase: statistics.median(r[phase] for r in measured) for phase in PHASES}
        total = statistics.median(sum(r.values()) for r in measured)
        epoch = total * len(batches[log]) / 1000
        first = first or epoch
        print(f"| {log} | {optimizer} | " + " | ".join(f"{medians[phase]:.1f}" for phase in PHASES)
              + f" | {total:.1f} | {len(batches[log])} | {epoch:.2f} | {epoch / first:.2f} |")


if __name__ == "__main__":
    main()
