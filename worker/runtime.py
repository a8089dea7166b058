"""Per-process values shared by the app, the tasks and the bridge receivers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from worker.lifecycle.policy import LifecyclePolicy, load_policy


@lru_cache(maxsize=1)
def current_policy() -> LifecyclePolicy:
    """The configured lifecycle policy, loaded (and validated) once per process."""
    return load_policy()


@dataclass(frozen=True, slots=True)
class TickLimits:
    """Timing of one scheduled reconciliation tick, all derived from the beat interval."""

    #: drain passes until this is spent; the rest of the interval is slack.
    budget_seconds: float
    soft_time_limit_seconds: int
    hard_time_limit_seconds: int
    #: the tick's lock outlives the hard limit: a tick killed at its hard limit can never
    #: leave a lock that expires while it still runs, only one that expires after it.
    lock_ttl_seconds: int


def tick_limits(interval_seconds: int) -> TickLimits:
    budget = max(1.0, interval_seconds * 0.5)
    # One pass is bounded (500 runs, milliseconds each); the margins cover a slow database.
    soft = math.ceil(budget) + 30
    hard = soft + 30
    return TickLimits(
        budget_seconds=budget,
        soft_time_limit_seconds=soft,
        hard_time_limit_seconds=hard,
        lock_ttl_seconds=hard + 30,
    )
