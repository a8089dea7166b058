"""May this delivery execute its run's body? The guard every operation task passes first,
and the moves a run makes while it is not terminal (start, heartbeat, retry).

The start is one statement on the usual path (``start_run``: the legitimacy gate as SQL
and the compare-and-set on the attempt count). The CAS is what makes delivery "at least
once" safe: a message redelivered after a crash, or published twice, finds its attempt
already started and loses, so a body never runs twice for one attempt. Terminal writes
are not made here but through :mod:`worker.lifecycle.transitions`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Row, bindparam, select
from sqlalchemy.orm import Session

from models import OperationRun, RunStatus
from models.types import is_id
from worker.lifecycle.evidence import dumps
from worker.lifecycle.freshness import RunSnapshot
from worker.lifecycle.gate import (
    CHECK_NAMES,
    LegitimacyResult,
    QueuedExecutionLegitimacyGate,
    TenantFacts,
)
from worker.lifecycle.sql import statement
from worker.lifecycle.tenancy import gate_tenants, gate_users
from worker.lifecycle.transitions import block, dialect_of

GATE_SOURCE = "legitimacy_gate"
_ALLOWED = LegitimacyResult.from_checks(dict.fromkeys(CHECK_NAMES, True))

#: The columns of :class:`RunSnapshot`, in its field order up to ``unstarted_attempts``.
_RUN_COLUMNS = (
    OperationRun.id,
    OperationRun.type,
    OperationRun.status,
    OperationRun.outcome,
    OperationRun.workspace_id,
    OperationRun.tenant_id,
    OperationRun.user_id,
    OperationRun.created_at,
    OperationRun.started_at,
    OperationRun.last_heartbeat_at,
    OperationRun.retry_due_at,
    OperationRun.worker_id,
    OperationRun.requeued_at,
    OperationRun.attempts,
    OperationRun.unstarted_attempts,
)
# Built once: constructing the query per task costs more than running it.
_START_QUERY = (
    select(
        *_RUN_COLUMNS,
        OperationRun.celery_task_id,
        gate_tenants.c.id,
        gate_tenants.c.workspace_id,
        gate_tenants.c.is_active,
        gate_users.c.is_active,
    )
    .outerjoin(gate_tenants, gate_tenants.c.id == OperationRun.tenant_id)
    .outerjoin(gate_users, gate_users.c.id == OperationRun.user_id)
    .where(OperationRun.id == bindparam("run_id"))
)


class StartDecision(StrEnum):
    STARTED = "started"
    #: the gate refused: the run completed as blocked with the gate's reason.
    BLOCKED = "blocked"
    #: the run had already ended (reconciled while its message waited, cancelled, ...).
    ALREADY_TERMINAL = "already_terminal"
    #: this attempt is already running under another delivery of the same message.
    DUPLICATE = "duplicate"
    #: the message's task id is not the run's: a hand-made or stale message.
    NOT_OWNER = "not_owner"
    MISSING = "missing"


@dataclass(frozen=True, slots=True)
class StartedRun:
    """The run as its body sees it."""

    id: int
    type: str
    workspace_id: int
    tenant_id: int | None
    user_id: int | None
    inputs: dict[str, Any]
    attempt: int
    #: the delivery's task id: with ``attempt``, the fence of every write it makes.
    celery_task_id: str

    @classmethod
    def of(cls, row: Any, *, attempt: int, celery_task_id: str) -> StartedRun:
        """From ``start_run``'s returned row."""
        inputs = (row.context or {}).get("inputs") or {}
        return cls(
            id=row.id,
            type=row.type,
            workspace_id=row.workspace_id,
            tenant_id=row.tenant_id,
            user_id=row.user_id,
            inputs=dict(inputs) if isinstance(inputs, Mapping) else {},
            attempt=attempt,
            celery_task_id=celery_task_id,
        )


@dataclass(frozen=True, slots=True)
class ExecutionStart:
    decision: StartDecision
    run: StartedRun | None = None
    legitimacy: LegitimacyResult | None = None
    reason_code: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def started(self) -> bool:
        return self.decision is StartDecision.STARTED


def start_execution(
    session: Session,
    run_id: int,
    *,
    gate: QueuedExecutionLegitimacyGate,
    celery_task_id: str,
    retries: int,
    now: datetime | None = None,
    evidence: Mapping[str, Any] | None = None,
    worker_id: int | None = None,
) -> ExecutionStart:
    """Decide whether the delivery ``celery_task_id`` with ``retries`` runs the body.

    Each write here (the block, the move to running) is one compare-and-set statement,
    so this may run in :func:`worker.db.statement_session` (autocommit on PostgreSQL): a
    run that changed between the read and the write simply loses the CAS. A delivery that
    does not own the run (another task id, an attempt already started) writes nothing.
    ``worker_id`` is the registered worker this process belongs to (None: none), recorded
    by the same statement that starts the run.
    """
    # The usual case in one statement: legitimate, and this delivery's attempt to start.
    started = start_run(
        session,
        run_id,
        gate=gate,
        celery_task_id=celery_task_id,
        retries=retries,
        now=now,
        worker_id=worker_id,
    )
    if started is not None:
        return ExecutionStart(
            StartDecision.STARTED,
            run=StartedRun.of(started, attempt=retries + 1, celery_task_id=celery_task_id),
            legitimacy=_ALLOWED,
        )
    # Not started: find out why, from the run and every gate input in one query.
    row: Any = session.execute(_START_QUERY, {"run_id": run_id}).one_or_none()
    if row is None:
        return ExecutionStart(StartDecision.MISSING)
    run = RunSnapshot(*row[: len(_RUN_COLUMNS)])
    owner, tenant_id, tenant_workspace_id, tenant_active, user_active = row[len(_RUN_COLUMNS) :]
    attempts = run.attempts
    details = {"status": run.status, "attempts": attempts, "retries": retries}
    if owner != celery_task_id:
        return ExecutionStart(StartDecision.NOT_OWNER, details=details)
    tenant = (
        TenantFacts(tenant_workspace_id, bool(tenant_active)) if tenant_id is not None else None
    )
    verdict = gate.evaluate_loaded(
        run, tenant, bool(user_active) if user_active is not None else None
    )
    if run.status == RunStatus.COMPLETED:
        # Ended while the message waited: whatever ended it already told the truth.
        return ExecutionStart(
            StartDecision.ALREADY_TERMINAL, legitimacy=verdict, reason_code=verdict.reason_code
        )
    if attempts != retries or (run.status == RunStatus.RUNNING and retries == 0):
        # Another delivery of this message runs (or ran) this attempt: it owns the run,
        # and whatever this one saw about the tenant is that delivery's business.
        return ExecutionStart(StartDecision.DUPLICATE, legitimacy=verdict, details=details)
    if not verdict.allowed:
        reason = verdict.reason_code
        assert reason is not None
        won = block(
            session,
            run_id,
            reason_code=reason,
            source=GATE_SOURCE,
            evidence={
                **dict(evidence or {}),
                "execution_legitimacy": verdict.to_dict(),
                "policy_sha256": gate.policy.sha256,
            },
            now=now,
            expected_attempt=attempts,
            expected_task_id=celery_task_id,
        )
        decision = StartDecision.BLOCKED if won else StartDecision.ALREADY_TERMINAL
        return ExecutionStart(decision, legitimacy=verdict, reason_code=reason)
    # Legitimate after all (a tenant reactivated between the two statements), or another
    # delivery started this attempt meanwhile: the same CAS tells which.
    started = start_run(
        session,
        run_id,
        gate=gate,
        celery_task_id=celery_task_id,
        retries=retries,
        now=now,
        worker_id=worker_id,
    )
    if started is None:
        return ExecutionStart(StartDecision.DUPLICATE, legitimacy=verdict, details=details)
    snapshot = StartedRun.of(started, attempt=retries + 1, celery_task_id=celery_task_id)
    return ExecutionStart(StartDecision.STARTED, run=snapshot, legitimacy=verdict)


def parse_run_id(value: object) -> int | None:
    """The run id a message names, or None when it names none (:func:`models.types.is_id`:
    ``2.7`` is not run 2, ``"2"`` and ``True`` are not run ids)."""
    return value if is_id(value) else None


# -- the non-terminal moves ---------------------------------------------------------------


def start_run(
    session: Session,
    run_id: int,
    *,
    gate: QueuedExecutionLegitimacyGate,
    celery_task_id: str,
    retries: int,
    now: datetime | None = None,
    worker_id: int | None = None,
) -> Row[Any] | None:
    """Start attempt ``retries + 1`` of ``run_id`` for the delivery ``celery_task_id``
    where the gate allows it (``start_run``). Returns the started run's id, type,
    workspace_id, tenant_id, user_id and context, or None when it was not started
    (refused, already ended, another task id, or a duplicate delivery)."""
    if retries < 0:
        raise ValueError("retries must be >= 0")
    params = {
        "run_id": run_id,
        "celery_task_id": celery_task_id,
        "retries": retries,
        "now": now,
        "worker_id": worker_id,
        "covered_types": gate.covered_types_json,
    }
    return session.execute(statement(dialect_of(session), "start_run"), params).one_or_none()


def heartbeat(
    session: Session, run_id: int, *, attempt: int, celery_task_id: str, now: datetime | None = None
) -> bool:
    """Record liveness of a running run for the delivery running ``attempt``; False when
    the run ended meanwhile or another delivery owns it (the body should stop)."""
    params = {"run_id": run_id, "attempt": attempt, "celery_task_id": celery_task_id, "now": now}
    result = session.execute(statement(dialect_of(session), "heartbeat"), params)
    return _rowcount(result) == 1


def record_retry(
    session: Session,
    run_id: int,
    *,
    attempt: int,
    celery_task_id: str,
    evidence: Mapping[str, Any],
    retry_in_seconds: float | None = None,
    now: datetime | None = None,
) -> bool:
    """The delivery running ``attempt`` scheduled a retry: the run stays running with the
    failed attempt recorded as ``context.bridge.last_retry`` (one statement). With a
    countdown the run is alive until the retry is due (``retry_due_at``) plus its window."""
    params = {
        "run_id": run_id,
        "attempt": attempt,
        "celery_task_id": celery_task_id,
        "last_retry": dumps(dict(evidence)),
        "retry_in_seconds": None if retry_in_seconds is None else max(0.0, retry_in_seconds),
        "now": now,
    }
    result = session.execute(statement(dialect_of(session), "record_retry"), params)
    return _rowcount(result) == 1


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
