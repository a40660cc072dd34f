"""Where a training step's time goes: the catalogue loss's batch, forward, backward and optimizer step,
outside Lightning, for each optimizer on the same synthetic log, alternated in one process.

    python scripts/profile_step.py                          # the 10M log: 200,000 users and items
    python scripts/profile_step.py --log synthetic-1m       # the 1M log: 20,000 users and items

The log is one of ``benchmark_speed.py``'s synthetic ones (50 interactions per user). Each setting is the model the
defaults build at that size (cosine, dimension 128, batches of 256 users; beyond ``loss.sample_above``
items, ``loss.max_candidates`` sampled items, otherwise the whole catalogue): ``dense`` is Adam on dense
gradients (the default below ``model.sparse_above``), ``lazy`` is LazyAdam on sparse gradients (the
default beyond it), ``sparseadam`` is torch's SparseAdam on the same gradients. Milliseconds per step:
for each setting, the median over ``--rounds`` rounds of the mean over ``--steps`` steps (after
``--warmup``); the rounds alternate the settings, so noise from the machine falls on all of them alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from benchmark_speed import SYNTHETIC, synthetic_log

from twotower.data.batches import UserBatches
from twotower.data.user_items import UserItems
from twotower.losses import CatalogueSoftmaxLoss
from twotower.module import TwoTowerModel
from twotower.optim import LazyAdam

OPTIMIZERS: dict[str, tuple[bool, Callable]] = {  # name: (sparse gradients, optimizer class)
    "dense": (False, torch.optim.Adam),
    "lazy": (True, LazyAdam),
    "sparseadam": (True, torch.optim.SparseAdam),
}
PHASES = ("batch", "forward", "backward", "step")


def setting(name: str, n_users: int, n_items: int, candidates: int) -> tuple[TwoTowerModel, torch.optim.Optimizer]:
    sparse, optimizer = OPTIMIZERS[name]
    torch.manual_seed(0)
    model = TwoTowerModel(n_users, n_items, loss={"_target_": "twotower.losses.CatalogueSoftmaxLoss",
                                                  "max_candidates": candidates},
                          user_tower={"kind": "id", "sparse": sparse}, item_tower={"kind": "id", "sparse": sparse})
    return model, optimizer(model.parameters(), lr=0.01)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", choices=sorted(SYNTHETIC), default="synthetic-10m")
    parser.add_argument("--candidates", type=int, default=16_384, help="loss.max_candidates")
    parser.add_argument("--optimizers", nargs="+", choices=sorted(OPTIMIZERS), default=list(OPTIMIZERS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()

    n_users, n_items, _ = SYNTHETIC[args.log]
    log = synthetic_log(args.log)
    positives = UserItems.from_pairs(log["user_id"].to_numpy(), log["item_id"].to_numpy(), n_users)
    batches = UserBatches(positives, n_items, batch_size=256, seed=0, max_candidates=args.candidates,
                          sample_above=CatalogueSoftmaxLoss().sample_above)
    settings = {name: setting(name, n_users, n_items, args.candidates) for name in args.optimizers}
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in settings}
    for epoch in range(args.rounds):
        for name, (model, optimizer) in settings.items():
            rounds[name].append(profile(model, optimizer, batches, epoch, args.warmup, args.steps))

    print(f"{len(log):,} interactions, {n_users:,} users, {n_items:,} items, "
          f"{args.candidates:,} candidates; ms per step, median of {args.rounds} rounds")
    print("| optimizer | " + " | ".join(PHASES) + " | total |")
    print("|---" * (len(PHASES) + 2) + "|")
    for name, measured in rounds.items():
        medians = {phase: statistics.median(r[phase] for r in measured) for phase in PHASES}
        total = statistics.median(sum(r.values()) for r in measured)
        print(f"| {name} | " + " | ".join(f"{medians[phase]:.1f}" for phase in PHASES) + f" | {total:.1f} |")


if __name__ == "__main__":
    main()
