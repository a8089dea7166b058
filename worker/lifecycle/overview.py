"""What the console's overview and ``/metrics`` show: the active runs by type and status
(how many, how many the next pass would fail, the oldest's age), forced transitions by
reason, and the last reconcile tick.

Every read here costs O(active runs) or O(audit rows in a time range), never O(all runs):
the active runs are read through the partial index over non-terminal rows, and stale is
judged by the Python reference of the pass (:mod:`worker.lifecycle.freshness`), so the
count is what the next pass would fail.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from models import NON_TERMINAL_SQL, AuditLog, OperationRun
from worker.lifecycle.freshness import RunLike, reference_time
from worker.lifecycle.policy import LifecyclePolicy
from worker.lifecycle.terminal import FORCED_ACTIONS

# Literal statuses (NON_TERMINAL_SQL), not bound ones: PostgreSQL's generic plan must be
# able to prove the partial index's predicate.
_ACTIVE = select(
    OperationRun.type,
    OperationRun.status,
    OperationRun.created_at,
    OperationRun.started_at,
    OperationRun.last_heartbeat_at,
    OperationRun.retry_due_at,
    OperationRun.requeued_at,
).where(text(NON_TERMINAL_SQL))

_AUDIT_REASON = AuditLog.metadata_["reason_code"].as_string()


@dataclass(frozen=True, slots=True)
class ActiveGroup:
    """The non-terminal runs of one type in one status."""

    type: str
    status: str
    active: int
    stale: int
    oldest_created_at: datetime

    def oldest_age_seconds(self, now: datetime) -> float:
        return max((now - self.oldest_created_at).total_seconds(), 0.0)

    def to_dict(self, now: datetime) -> dict[str, Any]:
        return {
            "type": self.type,
            "status": self.status,
            "active": self.active,
            "stale": self.stale,
            "oldest_age_seconds": round(self.oldest_age_seconds(now), 3),
        }


def active_groups(session: Session, policy: LifecyclePolicy, now: datetime) -> list[ActiveGroup]:
    """Every non-terminal run counted by (type, status), covered type or not; ``stale``
    counts what the next scheduled pass would fail (covered types that take part in
    scheduled reconciliation, past their window at ``now``)."""
    thresholds: dict[tuple[str, str], int] = {}
    for name in policy.covered_type_names():
        if policy.supports_scheduled_reconciliation(name):
            thresholds[(name, "queued")] = policy.queued_stale_after_seconds(name)
            thresholds[(name, "running")] = policy.running_stale_after_seconds(name)
    counts: dict[tuple[str, str], list[Any]] = {}
    for row in session.execute(_ACTIVE.execution_options(yield_per=1000)):
        key = (row.type, row.status)
        group = counts.get(key)
        if group is None:
            group = counts[key] = [0, 0, row.created_at]
        group[0] += 1
        group[2] = min(group[2], row.created_at)
        threshold = thresholds.get(key)
        if threshold is not None and now - reference_time(cast(RunLike, row)) > timedelta(
            seconds=threshold
        ):
            group[1] += 1
    return [
        ActiveGroup(type=t, status=s, active=g[0], stale=g[1], oldest_created_at=g[2])
        for (t, s), g in sorted(counts.items())
    ]


def forced_by_reason(session: Session, *, since: datetime) -> list[tuple[str, str | None, int]]:
    """Forced transitions recorded since ``since`` as (action, reason_code, count), the
    most frequent first (served by ``ix_audit_logs_recorded_at``)."""
    count = func.count().label("n")
    rows = session.execute(
        select(AuditLog.action, _AUDIT_REASON.label("reason_code"), count)
        .where(AuditLog.recorded_at >= since, AuditLog.action.in_(FORCED_ACTIONS))
        .group_by(AuditLog.action, _AUDIT_REASON)
        .order_by(count.desc(), AuditLog.action)
    )
    return [(r.action, r.reason_code, int(r.n)) for r in rows]
