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

from sqlalchemy import select
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
    context: Mapping[str, Any]


def _find(session: Session, celery_task_id: str) -> _RunRef | None:
    row = session.execute(
        select(OperationRun.id, OperationRun.type, OperationRun.status, OperationRun.context).where(
            OperationRun.celery_task_id == celery_task_id
        )
    ).first()
    if row is None:
        return None
    return _RunRef(int(row.id), row.type, row.status, row.context or {})


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
    now: datetime,
    extra_evidence: Mapping[str, Any] | None = None,
) -> BridgeOutcome:
    """End the run of a failed task with ``reason_code`` unless its type opted out."""
    run = _find(session, facts.celery_task_id)
    if run is None:
        return BridgeOutcome.NO_RUN
    if run.status == RunStatus.COMPLETED:
        return BridgeOutcome.ALREADY_TERMINAL
    if not policy.requires_direct_failed_bridge(run.type):
        return BridgeOutcome.LEFT_TO_RECONCILER
    evidence = {
        **exception_evidence(exception),
        **facts.to_dict(),
        **dict(extra_evidence or {}),
        "terminal_truth_path": policy.terminal_truth_path(run.type),
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
    )
    return BridgeOutcome.APPLIED if won else BridgeOutcome.ALREADY_TERMINAL


def bridge_cancel(
    session: Session, *, facts: TaskFacts, signum: Any, terminated: bool, now: datetime
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
    }
    won = cancel(session, run.id, source=BRIDGE_SOURCE, evidence=evidence, now=now)
    return BridgeOutcome.APPLIED if won else BridgeOutcome.ALREADY_TERMINAL


def bridge_success(
    session: Session,
    *,
    run_id: int,
    outcome: RunOutcome | str,
    summary_counts: Mapping[str, Any] | None,
    now: datetime,
) -> BridgeOutcome:
    """The body returned: the run completes with the outcome it reported."""
    won = complete(session, run_id, outcome=outcome, summary_counts=summary_counts, now=now)
    return BridgeOutcome.APPLIED if won else BridgeOutcome.ALREADY_TERMINAL


def bridge_retry(
    session: Session, *, facts: TaskFacts, exception: BaseException | None, now: datetime
) -> BridgeOutcome:
    """A retry was scheduled: the run stays running with the failed attempt recorded."""
    run = _find(session, facts.celery_task_id)
    if run is None:
        return BridgeOutcome.NO_RUN
    evidence = {
        **exception_evidence(exception),
        **facts.to_dict(),
        "next_attempt": None if facts.retries is None else facts.retries + 2,
    }
    won = record_retry(session, run.id, evidence=evidence, now=now)
    return BridgeOutcome.APPLIED if won else BridgeOutcome.ALREADY_TERMINAL
