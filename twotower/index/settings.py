"""Settings every approximate index checks before anything is built: a bad one is one line naming it."""

from __future__ import annotations

from twotower.errors import TwoTowerError


def check_target(target_recall: object) -> None:
    """A recall to reach: a number in (0, 1], or None for no tuning."""
    if target_recall is not None and (isinstance(target_recall, bool) or not isinstance(target_recall, (int, float))
                                      or not 0 < target_recall <= 1):
        raise TwoTowerError(f"index.target_recall must be a number in (0, 1] (or null: no tuning), "
                            f"got {target_recall!r}")


def check_build_threads(build_threads: object) -> None:
    """Threads to build with: an integer >= 1, or -1 for every core."""
    if not isinstance(build_threads, int) or isinstance(build_threads, bool) or \
            (build_threads < 1 and build_threads != -1):
        raise TwoTowerError(f"index.build_threads must be an integer >= 1 (or -1: every core), got {build_threads!r}")
