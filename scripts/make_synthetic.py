"""Write a synthetic interaction log with planted structure and power-law item popularity, as Parquet.

    python scripts/make_synthetic.py --interactions 10_000_000 --out data/synthetic-10m.parquet
    python scripts/make_synthetic.py --interactions 10_000_000 --items 1_000_000 --parts 10 --out data/synthetic-100m

Users and items fall into planted groups (see ``twotower.data.synthetic``); item popularity follows a Zipf
law. The log has ``user_id``, ``item_id`` and ``timestamp`` (Int64) and trains with
``twotower-train data=interactions data.path=FILE``. With ``--parts N`` the output is a folder of N such
files (seeds ``seed`` to ``seed + N - 1``, each with users of its own, the catalogue shared), a log of N times
the size written a part at a time (``twotower-prepare data.path=FOLDER``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import polars as pl

from twotower.data.synthetic import planted_interactions
from twotower.files import atomic_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interactions", type=lambda text: int(text.replace("_", "")), default=1_000_000,
                        help="about how many (user, item) pairs to write (repeats are removed)")
    parser.add_argument("--per-user", type=int, default=50, help="interactions drawn per user")
    parser.add_argument("--items", type=int, default=None, help="catalogue size (default: interactions / 50)")
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--popularity-exponent", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", type=int, default=None, help="write a folder of this many logs of that size")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    started = time.perf_counter()
    n_users = max(1, args.interactions // args.per_user)
    n_items = args.items or max(100, args.interactions // 50)
    parts = range(args.parts or 1)
    targets = [args.out] if args.parts is None else [args.out / f"part-{part:03d}.parquet" for part in parts]
    for part, target in enumerate(targets):
        frame = planted_interactions(n_users=n_users, n_items=n_items, n_clusters=args.clusters,
                                     interactions_per_user=args.per_user,
                                     popularity_exponent=args.popularity_exponent, seed=args.seed + part)
        frame = frame.with_columns(pl.col("user_id") + part * n_users)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as temporary:
            frame.write_parquet(temporary)
        print(f"{frame.height:,} interactions, {n_users:,} users, {n_items:,} items -> {target} "
              f"({target.stat().st_size / 2**20:.0f} MiB, {time.perf_counter() - started:.1f}s)", flush=True)


if __name__ == "__main__":
    main()
