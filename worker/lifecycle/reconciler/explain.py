"""``runwarden explain``: the assessment of one run, with a sentence saying why it would
(or would not) be failed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import models
from models import RunStatus
from worker.lifecycle.evidence import iso_or_none as _iso
from worker.lifecycle.freshness import (
    OperationRunFreshnessState,
    RunLike,
    StaleWindow,
    stale_window,
)
from worker.lifecycle.gate import LegitimacyResult, QueuedExecutionLegitimacyGate
from worker.lifecycle.listing import run_to_dict
from worker.lifecycle.liveness import WorkerSnapshot, WorkerState, judged_by_worker, worker_of
from worker.lifecycle.policy import LifecyclePolicy
from worker.lifecycle.reasons import ReasonCode
from worker.lifecycle.reconciler.assessment import Assessment, assess, stale_reason
from worker.lifecycle.recovery import RECOVERABLE_REASONS, Action, current_attempt
from worker.lifecycle.terminal import TerminalRecord, audit_rows, terminal_record

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


@dataclass(frozen=True, slots=True)
class RunExplanation:
    """Everything ``runwarden explain`` says about one run."""

    run: dict[str, Any]
    freshness_state: OperationRunFreshnessState
    would_reconcile: bool
    why: str
    threshold_seconds: int | None
    reference_time: datetime | None
    stale_after: datetime | None
    execution_legitimacy: LegitimacyResult
    assessment: Assessment | None
    reconciliation: Mapping[str, Any] | None
    #: the worker that started the current attempt, with its state (None: none recorded)
    worker: dict[str, Any] | None = None
    #: the record that ended a completed run (None: not completed, or ended by its task)
    terminal: TerminalRecord | None = None
    #: the run's audit rows, oldest first
    audit: list[dict[str, Any]] = field(default_factory=list)
    #: the try it is on, attempts started, and its type's limit (None: not covered)
    attempt: int = 1
    attempts: int = 0
    max_attempts: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "freshness_state": self.freshness_state.value,
            "would_reconcile": self.would_reconcile,
            "why": self.why,
            "threshold_seconds": self.threshold_seconds,
            "reference_time": _iso(self.reference_time),
            "stale_after": _iso(self.stale_after),
            "execution_legitimacy": self.execution_legitimacy.to_dict(),
            "assessment": self.assessment.to_dict() if self.assessment else None,
            "reconciliation": dict(self.reconciliation) if self.reconciliation else None,
            "worker": self.worker,
            "terminal": self.terminal.to_dict() if self.terminal else None,
            "audit": list(self.audit),
            "attempt": self.attempt,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
        }


def explain(
    session: Session,
    run: models.OperationRun,
    *,
    policy: LifecyclePolicy,
    gate: QueuedExecutionLegitimacyGate,
    now: datetime,
    database_up_since: datetime | None = None,
) -> RunExplanation:
    freshness = OperationRunFreshnessState.for_run(run, policy, now)
    legitimacy = gate.evaluate(session, run)
    window = stale_window(run, policy)
    reconciliation = (run.context or {}).get("reconciliation")
    stale_after = (
        window.reference_time + timedelta(seconds=window.threshold_seconds)
        if window is not None
        else None
    )
    worker = worker_of(session, run, database_up_since=database_up_since)
    assessment = assess(run, policy, now, legitimacy, worker)
    terminal = terminal_record(run)
    why = _why(
        run,
        policy=policy,
        freshness=freshness,
        window=window,
        stale_after=stale_after,
        now=now,
        reconciliation=reconciliation,
        worker=worker,
        terminal=terminal,
        assessment=assessment,
    )
    return RunExplanation(
        run=run_to_dict(run, freshness, policy),
        freshness_state=freshness,
        would_reconcile=assessment is not None,
        why=why,
        threshold_seconds=window.threshold_seconds if window else None,
        reference_time=window.reference_time if window else None,
        stale_after=stale_after,
        execution_legitimacy=legitimacy,
        assessment=assessment,
        reconciliation=reconciliation if isinstance(reconciliation, Mapping) else None,
        worker=(
            {
                **worker.evidence(),
                "state": worker.state(policy.workers, now).value,
            }
            if worker is not None
            else None
        ),
        terminal=terminal,
        audit=audit_rows(session, run.id),
        attempt=current_attempt(run),
        attempts=run.attempts,
        max_attempts=policy.max_attempts(run.type) if policy.supports(run.type) else None,
    )


def _why(
    run: RunLike,
    *,
    policy: LifecyclePolicy,
    freshness: OperationRunFreshnessState,
    window: StaleWindow | None,
    stale_after: datetime | None,
    now: datetime,
    reconciliation: Any,
    worker: WorkerSnapshot | None = None,
    terminal: TerminalRecord | None = None,
    assessment: Assessment | None = None,
) -> str:
    if freshness is OperationRunFreshnessState.RECONCILED_FAILED:
        record = reconciliation if isinstance(reconciliation, Mapping) else {}
        return (
            f"already reconciled: failed with {record.get('reason_code')} by "
            f"{record.get('source')} at {record.get('reconciled_at')}; "
            "a completed run is never changed again"
        )
    if run.status == RunStatus.COMPLETED and terminal is not None:
        return (
            f"completed with outcome {run.outcome}: {terminal.reason_code} by "
            f"{terminal.source} at {terminal.recorded_at} ({terminal.reason_message}); "
            "a completed run is never changed again"
        )
    if run.status == RunStatus.COMPLETED:
        return (
            f"completed with outcome {run.outcome} reported by its task; "
            "a completed run is never changed again"
        )
    if not policy.supports(run.type):
        return (
            f"type {run.type!r} is not covered by the lifecycle policy; "
            "only covered types are reconciled"
        )
    assert window is not None and stale_after is not None
    age = int((now - window.reference_time).total_seconds())
    since = "queued" if run.status == RunStatus.QUEUED else "last sign of life"
    if not policy.supports_scheduled_reconciliation(run.type):
        return (
            f"{run.status}, {since} {age} s ago, but type {run.type!r} has "
            "scheduled_reconciliation = false; the reconciler never fails it"
        )
    on_worker = ""
    if worker is not None and judged_by_worker(run, worker.id):
        state = worker.state(policy.workers, now)
        seen = int((now - worker.last_seen()).total_seconds())
        if state is not WorkerState.ALIVE:
            ended = "stopped" if state is WorkerState.STOPPED else "last heartbeat"
            return (
                f"{run.status} on worker {worker.nodename} (pid {worker.pid}), which is "
                f"{state.value}: {ended} {seen} s ago (lost after "
                f"{policy.workers.lost_after_seconds} s); {_next_pass(assessment, run, policy)}"
            )
        on_worker = f" on worker {worker.nodename} (pid {worker.pid}, alive, seen {seen} s ago)"
    if freshness is OperationRunFreshnessState.LIKELY_STALE and assessment is None and on_worker:
        return (
            f"{run.status}{on_worker}, {since} {age} s ago, past its "
            f"{window.threshold_seconds} s window, but its worker has not been heard since "
            "the window passed (the database may have been unreachable): the first pass "
            "after the worker's next heartbeat decides"
        )
    if freshness is OperationRunFreshnessState.LIKELY_STALE:
        reason = stale_reason(run.status)
        return (
            f"{run.status}{on_worker}, {since} {age} s ago, past its "
            f"{window.threshold_seconds} s window: {_next_pass(assessment, run, policy, reason)}"
        )
    return (
        f"{run.status}{on_worker}, {since} {age} s ago, within its {window.threshold_seconds} s "
        f"window; likely stale after {stale_after.isoformat()}"
    )


def _next_pass(
    assessment: Assessment | None,
    run: RunLike,
    policy: LifecyclePolicy,
    reason: ReasonCode = ReasonCode.WORKER_LOST,
) -> str:
    """What the next pass does: fail the run, or requeue it (recovery = "retry")."""
    if assessment is not None:
        reason = ReasonCode(assessment.reason_code)
    limit = policy.max_attempts(run.type)
    if assessment is not None and assessment.action is Action.REQUEUE:
        return (
            f"the next pass requeues it ({reason.value}; attempt {current_attempt(run)} of {limit})"
        )
    if policy.retries(run.type) and reason.value in RECOVERABLE_REASONS:
        return f"the next pass fails it with {reason.value} (attempts exhausted: {limit})"
    return f"the next pass fails it with {reason.value}"
