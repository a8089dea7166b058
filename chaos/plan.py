"""The workload and the fault schedule, drawn from one seeded generator."""

from __future__ import annotations

import random
from dataclasses import dataclass

#: fate -> (operation type, weight). What the harness does to a fate's message is in
#: chaos/harness.py (revokes, expiry, a duplicate, the tenant's deactivation).
FATES: dict[str, tuple[str, int]] = {
    "succeed": ("chaos.quick", 26),
    "fail": ("chaos.fail", 9),
    "retry": ("chaos.retry", 8),
    "time_limit": ("chaos.time_limit", 3),
    "heartbeats": ("chaos.heartbeat", 1),
    "no_heartbeats": ("chaos.quiet", 2),
    "tenant_deactivated": ("chaos.quick", 6),
    "revoke_running": ("chaos.revoke", 4),
    "revoke_queued": ("chaos.quick", 6),
    "expired": ("chaos.quick", 6),
    "unknown_task": ("chaos.unknown", 4),
    "duplicate": ("chaos.quick", 8),
    "recover": ("chaos.recover", 8),
}

#: Faults, in the order a schedule cycles through them (shuffled per cycle).
FAULTS = (
    "child_kill",
    "worker_kill",
    "redis_restart",
    "pg_restart",
    "pg_outage",
    "cli_reconcile",
)


@dataclass(frozen=True)
class PlannedRun:
    index: int
    fate: str
    type: str
    #: seconds after the workload starts that it is dispatched
    at: float
    seconds: float


@dataclass(frozen=True)
class PlannedFault:
    fault: str
    at: float


@dataclass(frozen=True)
class Plan:
    seed: int
    runs: tuple[PlannedRun, ...]
    faults: tuple[PlannedFault, ...]
    duration: float


def _seconds(fate: str, rng: random.Random) -> float:
    if fate in {"succeed", "tenant_deactivated", "revoke_queued", "expired"}:
        return round(rng.uniform(0.05, 0.4), 3)
    if fate == "duplicate":
        return round(rng.uniform(0.5, 1.0), 3)
    if fate == "recover":
        return round(rng.uniform(1.0, 2.0), 3)
    if fate == "heartbeats":
        # Longer than its type's running window (12 s; longer than an outage, 10 s).
        return 16.0
    if fate in {"no_heartbeats", "revoke_running"}:
        return 6.0
    return round(rng.uniform(0.05, 0.3), 3)


def make_plan(seed: int, runs: int, *, runs_per_second: float) -> Plan:
    """``runs`` runs dispatched at ``runs_per_second``, and faults spread over the same
    time: every fault class at least once, cycling while the workload lasts."""
    rng = random.Random(seed)
    names = list(FATES)
    weights = [FATES[name][1] for name in names]
    duration = runs / runs_per_second
    planned = []
    for index in range(runs):
        fate = rng.choices(names, weights)[0]
        planned.append(
            PlannedRun(
                index=index,
                fate=fate,
                type=FATES[fate][0],
                at=round(index / runs_per_second, 3),
                seconds=_seconds(fate, rng),
            )
        )
    # One fault every ~12 s (at least every class once), the first after 3 s.
    count = max(len(FAULTS), int(duration // 12))
    order: list[str] = []
    while len(order) < count:
        cycle = list(FAULTS)
        rng.shuffle(cycle)
        order.extend(cycle)
    spacing = max(duration - 3, 1) / count
    faults = tuple(
        PlannedFault(fault=name, at=round(3 + i * spacing + rng.uniform(0, spacing / 3), 3))
        for i, name in enumerate(order[:count])
    )
    return Plan(seed=seed, runs=tuple(planned), faults=faults, duration=duration)
