"""How fresh a run is, judged against the policy at a given moment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from models import RunOutcome, RunStatus
from worker.lifecycle.policy import LifecyclePolicy


class RunLike(Protocol):
    """What the lifecycle reads from a run: an ``OperationRun`` or a :class:`RunSnapshot`."""

    @property
    def id(self) -> int: ...
    @property
    def type(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def outcome(self) -> str: ...
    @property
    def workspace_id(self) -> int: ...
    @property
    def tenant_id(self) -> int | None: ...
    @property
    def user_id(self) -> int | None: ...
    @property
    def context(self) -> Mapping[str, Any]: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def started_at(self) -> datetime | None: ...
    @property
    def last_heartbeat_at(self) -> datetime | None: ...
    @property
    def retry_due_at(self) -> datetime | None: ...
    @property
    def worker_id(self) -> int | None: ...
    @property
    def requeued_at(self) -> datetime | None: ...
    @property
    def attempts(self) -> int: ...
    @property
    def unstarted_attempts(self) -> int: ...


@dataclass(frozen=True, slots=True)
class RunSnapshot:
    """A run's lifecycle columns as read by a scan: plain values, no ORM identity map.

    The reconciler reads hundreds of rows per pass; plain tuples keep the per-row cost low.
    ``context`` is only needed to tell terminal runs apart, so scans of non-terminal runs
    leave it empty rather than decode every JSON document.
    """

    id: int
    type: str
    status: str
    outcome: str
    workspace_id: int
    tenant_id: int | None
    user_id: int | None
    created_at: datetime
    started_at: datetime | None
    last_heartbeat_at: datetime | None
    retry_due_at: datetime | None = None
    worker_id: int | None = None
    requeued_at: datetime | None = None
    attempts: int = 0
    unstarted_attempts: int = 0
    context: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StaleWindow:
    """The clock a non-terminal run is judged by: its threshold and where it started."""

    threshold_seconds: int
    reference_time: datetime

    def is_exceeded(self, now: datetime) -> bool:
        return now - self.reference_time > timedelta(seconds=self.threshold_seconds)


def reference_time(run: RunLike) -> datetime:
    """The last sign of life: the requeue, else the creation for a queued run (a requeued
    run's new message is as fresh as its requeue); the latest heartbeat, else the start,
    else the creation for a running one (a heartbeating run is alive) -- or, when later,
    the time its retry is due (a run waiting for its retry is alive until then)."""
    if run.status == RunStatus.QUEUED:
        return run.requeued_at or run.created_at
    seen = run.last_heartbeat_at or run.started_at or run.created_at
    return max(seen, run.retry_due_at) if run.retry_due_at is not None else seen


def stale_window(run: RunLike, policy: LifecyclePolicy) -> StaleWindow | None:
    """The window of a non-terminal run of a covered type; ``None`` otherwise."""
    if run.status == RunStatus.COMPLETED or not policy.supports(run.type):
        return None
    threshold = (
        policy.queued_stale_after_seconds(run.type)
        if run.status == RunStatus.QUEUED
        else policy.running_stale_after_seconds(run.type)
    )
    return StaleWindow(threshold_seconds=threshold, reference_time=reference_time(run))


class OperationRunFreshnessState(StrEnum):
    TERMINAL_NORMAL = "terminal_normal"
    RECONCILED_FAILED = "reconciled_failed"
    UNKNOWN = "unknown"
    LIKELY_STALE = "likely_stale"
    FRESH = "fresh"

    @classmethod
    def for_run(
        cls, run: RunLike, policy: LifecyclePolicy, now: datetime
    ) -> OperationRunFreshnessState:
        if run.status == RunStatus.COMPLETED:
            reconciled = run.outcome == RunOutcome.FAILED and "reconciliation" in (
                run.context or {}
            )
            return cls.RECONCILED_FAILED if reconciled else cls.TERMINAL_NORMAL
        window = stale_window(run, policy)
        if window is None:
            return cls.UNKNOWN
        return cls.LIKELY_STALE if window.is_exceeded(now) else cls.FRESH

    def is_likely_stale(self) -> bool:
        return self is OperationRunFreshnessState.LIKELY_STALE

    def is_terminal(self) -> bool:
        return self in (
            OperationRunFreshnessState.TERMINAL_NORMAL,
            OperationRunFreshnessState.RECONCILED_FAILED,
        )
