"""Write a synthetic interaction log with planted structure and power-law item popularity, as Parquet.

    python scripts/make_synthetic.py --interactions 10_000_000 --out data/synthetic-10m.parquet

Users and items fall into planted groups (see ``twotower.data.synthetic``); item popularity follows a Zipf
law. The log has ``user_id``, ``item_id`` and ``timestamp`` (Int64) and trains with
``twotower-train data=interactions data.path=FILE``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

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
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    started = time.perf_counter()
    n_users = max(1, args.interactions // args.per_user)
    n_items = args.items or max(100, args.interactions // 50)
    frame = planted_interactions(n_users=n_users, n_items=n_items, n_clusters=args.clusters,
                                 interactions_per_user=args.per_user, popularity_exponent=args.popularity_exponent,
                                 seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as temporary:
        frame.write_parquet(temporary)
    print(f"{frame.height:,} interactions, {n_users:,} users, {n_items:,} items -> {args.out} "
          f"({args.out.stat().st_size / 2**20:.0f} MiB, {time.perf_counter() - started:.1f}s)")


if __name__ == "__main__":
    main()
