"""``GET /metrics``: Prometheus metrics read from the database at each scrape.

A scrape costs O(active runs + new audit rows): the active runs through the partial index
over non-terminal rows, the forced transitions incrementally from the audit log (the rows
with an id above the last one counted), the last tick from ``runwarden_ticks``, the workers
alive counted in SQL over ``runwarden_workers``. No label carries a tenant or a run id.
A metric is one more entry of :meth:`RunwardenCollector.scrapes`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from worker.db import read_session
from worker.lifecycle.audit import forced_rows_since, forced_totals_before
from worker.lifecycle.clock import database_now
from worker.lifecycle.liveness import count_alive
from worker.lifecycle.overview import active_groups
from worker.lifecycle.policy import LifecyclePolicy
from worker.lifecycle.ticks import last_tick

#: Every metric ``/metrics`` exposes, by the name a query or an alert uses.
METRIC_NAMES = (
    "runwarden_runs_active",
    "runwarden_runs_stale",
    "runwarden_oldest_active_run_age_seconds",
    "runwarden_forced_transitions_total",
    "runwarden_reconcile_last_tick_timestamp_seconds",
    "runwarden_workers_alive",
)

#: How long a forced transition's transaction may take to commit and still be counted.
#: An audit row's ``recorded_at`` is its transaction's start, and rows become visible in
#: commit order, not id order: each scrape re-reads the rows recorded in this last stretch
#: (by time) besides the rows above the highest id seen, and counts each id once.
SETTLE_SECONDS = 60


class ForcedTransitionCounter:
    """``runwarden_forced_transitions_total`` by (action, reason), kept across scrapes.

    The first refresh counts the rows older than the settle window in SQL; every refresh
    then reads only the rows of the window and those above the highest id seen.
    """

    def __init__(self, settle_seconds: float = SETTLE_SECONDS) -> None:
        self._settle = timedelta(seconds=settle_seconds)
        self._highest_id: int | None = None
        #: ids counted that are still inside the window (or above the highest id), by time
        self._recent: dict[int, datetime] = {}
        self._totals: dict[tuple[str, str | None], int] = {}
        self._lock = threading.Lock()

    def refresh(self, session: Session, now: datetime) -> dict[tuple[str, str | None], int]:
        """Count the audit rows added since the last refresh; the totals so far."""
        cutoff = now - self._settle
        with self._lock:
            if self._highest_id is None:
                self._highest_id, self._totals = forced_totals_before(session, cutoff)
            highest = self._highest_id
            for row in forced_rows_since(session, cutoff=cutoff, after_id=highest):
                if row.id not in self._recent:
                    key = (row.action, row.reason_code)
                    self._totals[key] = self._totals.get(key, 0) + 1
                    self._recent[row.id] = row.recorded_at
                highest = max(highest, row.id)
            self._highest_id = highest
            # A row older than the window and not above the highest id is never read again.
            self._recent = {i: t for i, t in self._recent.items() if t >= cutoff}
            return dict(self._totals)


Scrape = Callable[[Session, datetime], Iterator[Metric]]


class RunwardenCollector(Collector):
    """Reads the metrics in one read transaction at each scrape."""

    def __init__(self, engine: Engine, policy: LifecyclePolicy) -> None:
        self._engine = engine
        self._policy = policy
        self._forced = ForcedTransitionCounter()

    def collect(self) -> Iterator[Metric]:
        with read_session(self._engine) as session:
            now = database_now(session)
            metrics = [m for scrape in self.scrapes() for m in scrape(session, now)]
        yield from metrics

    def scrapes(self) -> tuple[Scrape, ...]:
        return (self._runs, self._forced_transitions, self._last_tick, self._workers_alive)

    def _runs(self, session: Session, now: datetime) -> Iterator[Metric]:
        labels = ["type", "status"]
        active = GaugeMetricFamily(
            "runwarden_runs_active", "Non-terminal runs, covered type or not.", labels=labels
        )
        stale = GaugeMetricFamily(
            "runwarden_runs_stale",
            "Non-terminal runs past their window: what the next pass would fail.",
            labels=labels,
        )
        oldest = GaugeMetricFamily(
            "runwarden_oldest_active_run_age_seconds",
            "Age of the oldest non-terminal run (since its creation).",
            labels=labels,
        )
        for group in active_groups(session, self._policy, now):
            key = [group.type, group.status]
            active.add_metric(key, group.active)
            stale.add_metric(key, group.stale)
            oldest.add_metric(key, group.oldest_age_seconds(now))
        yield from (active, stale, oldest)

    def _forced_transitions(self, session: Session, now: datetime) -> Iterator[Metric]:
        counter = CounterMetricFamily(
            "runwarden_forced_transitions",
            "Forced terminal transitions (one per audit row) by action and reason.",
            labels=["action", "reason"],
        )
        for (action, reason), count in sorted(
            self._forced.refresh(session, now).items(), key=lambda kv: (kv[0][0], kv[0][1] or "")
        ):
            counter.add_metric([action, reason or ""], count)
        yield counter

    def _last_tick(self, session: Session, now: datetime) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "runwarden_reconcile_last_tick_timestamp_seconds",
            "When the scheduled reconciliation last finished a tick (Unix time; absent "
            "before the first tick).",
        )
        tick = last_tick(session)
        if tick is not None:
            gauge.add_metric([], tick.ticked_at.timestamp())
        yield gauge

    def _workers_alive(self, session: Session, now: datetime) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "runwarden_workers_alive",
            "Registered workers heartbeating within [workers] lost_after_seconds and not "
            "stopped (on the database's clock).",
        )
        gauge.add_metric([], count_alive(session, self._policy.workers, now))
        yield gauge


def registry(engine: Engine, policy: LifecyclePolicy) -> CollectorRegistry:
    """A registry of runwarden's metrics alone (no process metrics: one console's
    process says nothing about the runs)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunwardenCollector(engine, policy))
    return registry
