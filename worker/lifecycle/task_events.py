"""What a task event means for its run: the failed-job bridge's decisions, free of Celery.

The Celery signal receivers in ``worker/bridge.py`` only translate a signal into one of the
calls below. Exceptions are classified by class name (Celery is never imported here), and
every write goes through :mod:`worker.lifecycle.transitions`, so the bridge, the gate and
the reconciler share one compare-and-set path: Celery 5.7 sends ``task_failure`` twice for
one hard time limit, and the second call simply loses the CAS.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from models import OperationRun, RunOutcome, RunStatus
from worker.lifecycle.evidence import scrub_and_truncate
from worker.lifecycle.execution import record_retry
from worker.lifecycle.policy import LifecyclePolicy
from worker.lifecycle.reasons import ReasonCode
from worker.lifecycle.transitions import (
    cancel,
    complete,
    force_fail_non_terminal_run,
)

BRIDGE_SOURCE = "failed_job_bridge"

# Matched on the class and its bases by name, so lifecycle never imports Celery/billiard.
_REASON_BY_EXCEPTION: tuple[tuple[str, ReasonCode], ...] = (
    ("WorkerLostError", ReasonCode.WORKER_LOST),
    ("TimeLimitExceeded", ReasonCode.TIME_LIMIT_EXCEEDED),
)


class BridgeOutcome(StrEnum):
    APPLIED = "applied"
    #: direct_failed_bridge = false: the scheduled reconciler decides this run.
    LEFT_TO_RECONCILER = "left_to_reconciler"
    #: the run had already ended (a second signal, a reconciler or the task won the CAS).
    ALREADY_TERMINAL = "already_terminal"
    #: no run carries this Celery task id (not an operation task, or a foreign message).
    NO_RUN = "no_run"
    #: the run's current attempt is not the reporting delivery's (a duplicate, an old
    #: attempt): the delivery that owns the run decides, not this one.
    NOT_OWNER = "not_owner"


def reason_for_exception(exc: BaseException) -> ReasonCode:
    """The reason a task that ended with ``exc`` failed for."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    for name, reason in _REASON_BY_EXCEPTION:
        if name in names:
            return reason
    return ReasonCode.JOB_FAILED


def exception_evidence(exc: BaseException | None) -> dict[str, Any]:
    if exc is None:
        return {"exception_type": None, "exception_message": None}
    return {
        "exception_type": type(exc).__name__,
        "exception_message": scrub_and_truncate(str(exc)),
    }


@dataclass(frozen=True, slots=True)
class TaskFacts:
    """Who reported the event: recorded with every bridged transition."""

    celery_task_id: str
    task_name: str | None
    retries: int | None
    hostname: str | None
    pid: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "celery_task_id": self.celery_task_id,
            "task_name": self.task_name,
            "retries": self.retries,
            "hostname": self.hostname,
            "pid": self.pid,
        }


@dataclass(frozen=True, slots=True)
class _RunRef:
    id: int
    type: str
    status: str
    attempts: int
    context: Mapping[str, Any]


_FIND = select(
    OperationRun.id,
    OperationRun.type,
    OperationRun.status,
    OperationRun.attempts,
    OperationRun.context,
).where(OperationRun.celery_task_id == bindparam("celery_task_id"))


def _find(session: Session, celery_task_id: str) -> _RunRef | None:
    row = session.execute(_FIND, {"celery_task_id": celery_task_id}).first()
    if row is None:
        return None
    return _RunRef(int(row.id), row.type, row.status, int(row.attempts), row.context or {})


def _last_retry(run: _RunRef) -> Any:
    bridge = run.context.get("bridge")
    return bridge.get("last_retry") if isinstance(bridge, Mapping) else None


def bridge_failure(
    session: Session,
    *,
    reason_code: ReasonCode,
    facts: TaskFacts,
    exception: BaseException | None,
    policy: LifecyclePolicy,
    now: datetime | None = None,
    attempts: int | None,
    extra_evidence: Mapping[str, Any] | None = None,
) -> BridgeOutcome:
    """End the run of a failed task with ``reason_code`` unless its type opted out.

    Fenced on the delivery: the run must carry its task id and, when the event says which
    delivery it is, be at ``attempts`` (the attempt a failed body ran, or for a message
    that never started, the attempts before it). Anything else is another delivery's run.
    """
    run = _find(session, facts.celery_task_id)
    if run is None:
        return BridgeOutcome.NO_RUN
    if run.status == RunStatus.COMPLETED:
        return BridgeOutcome.ALREADY_TERMINAL
    if attempts is not None and run.attempts != attempts:
        return BridgeOutcome.NOT_OWNER
    if not policy.requires_direct_failed_bridge(run.type):
        return BridgeOutcome.LEFT_TO_RECONCILER
    evidence = {
        **exception_evidence(exception),
        **facts.to_dict(),
        **dict(extra_evidence or {}),
        "terminal_truth_path": policy.terminal_truth_path(run.type),
        "policy_sha256": policy.sha256,
    }
    # The terminal record replaces context.bridge; keep the earlier attempt's error in it.
    last_retry = _last_retry(run)
    if last_retry is not None:
        evidence["last_retry"] = last_retry
    won = force_fail_non_terminal_run(
        session,
        run.id,
        reason_code=reason_code,
        source=BRIDGE_SOURCE,
        evidence=evidence,
        now=now,
        record_key="bridge",
        expected_attempt=attempts,
        expected_task_id=facts.celery_task_id,
    )
    return BridgeOutcome.APPLIED if won else BridgeOutcome.ALREADY_TERMINAL


def bridge_cancel(
    session: Session,
    *,
    facts: TaskFacts,
    signum: Any,
    terminated: bool,
    policy: LifecyclePolicy,
    now: datetime | None = None,
) -> BridgeOutcome:
    """A revoked task never finishes: its run completes as ``cancelled``.

    A revoke is an explicit decision, not a failure, so ``direct_failed_bridge`` does not
    hold it back.
    """
    run = _find(session, facts.celery_task_id)
    if run is None:
        return BridgeOutcome.NO_RUN
    evidence = {
        **facts.to_dict(),
        "terminated": bool(terminated),
        "signal": None if signum is None else str(signum),
        "policy_sha256": policy.sha256,
    }
    # A revoke names the task id, whichever delivery of it runs: fenced on the id alone.
    won = cancel(
        session,
        run.id,
        source=BRIDGE_SOURCE,
        evidence=evidence,
        now=now,
        expected_task_id=facts.celery_task_id,
    )
    return BridgeOutcome.APPLIED if won else BridgeOutcome.ALREADY_TERMINAL


def bridge_success(
    session: Session,
    *,
    run_id: int,
    attempt: int,
    celery_task_id: str,
    outcome: RunOutcome | str,
    summary_counts: Mapping[str, Any] | None,
    now: datetime | None = None,
) -> BridgeOutcome:
    """The body returned: the run completes with the outcome it reported, if the body's
    delivery still owns it."""
    won = complete(
        session,
        run_id,
        outcome=outcome,
        summary_counts=summary_counts,
        attempt=attempt,
        celery_task_id=celery_task_id,
        now=now,
    )
    return BridgeOutcome.APPLIED if won else BridgeOutcome.ALREADY_TERMINAL


def bridge_retry(
    session: Session,
    *,
    facts: TaskFacts,
    exception: BaseException | None,
    retry_in_seconds: float | None = None,
    now: datetime | None = None,
) -> BridgeOutcome:
    """A retry was scheduled: the run stays running with the failed attempt recorded.
    Only the delivery that ran the current attempt records it."""
    run = _find(session, facts.celery_task_id)
    if run is None:
        return BridgeOutcome.NO_RUN
    if facts.retries is None:
        return BridgeOutcome.NOT_OWNER  # which attempt asked is unknown: record nothing
    evidence = {
        **exception_evidence(exception),
        **facts.to_dict(),
        "next_attempt": None if facts.retries is None else facts.retries + 2,
        "retry_in_seconds": retry_in_seconds,
    }
    won = record_retry(
        session,
        run.id,
        attempt=facts.retries + 1,
        celery_task_id=facts.celery_task_id,
        evidence=evidence,
        retry_in_seconds=retry_in_seconds,
        now=now,
    )
    return BridgeOutcome.APPLIED if won else BridgeOutcome.ALREADY_TERMINAL
