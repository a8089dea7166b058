from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"


class RunOutcome(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    PARTIALLY_SUCCEEDED = "partially_succeeded"
    BLOCKED = "blocked"
    FAILED = "failed"
    CANCELLED = "cancelled"


NON_TERMINAL_STATUSES: tuple[RunStatus, ...] = (RunStatus.QUEUED, RunStatus.RUNNING)
TERMINAL_OUTCOMES: tuple[RunOutcome, ...] = tuple(
    o for o in RunOutcome if o is not RunOutcome.PENDING
)

# SQL text of the non-terminal predicate. Written as literals on purpose: with bound
# parameters PostgreSQL's generic plan cannot prove the partial index predicate and falls
# back to scanning every completed row.
NON_TERMINAL_SQL = "status IN ('queued', 'running')"
