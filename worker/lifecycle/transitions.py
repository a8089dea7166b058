"""The one place that writes a run's lifecycle.

Every write is a conditional UPDATE on the status the caller expects (compare-and-set)
and reports whether it won. Terminal writes -- the reconciler's, the bridge's, the gate's,
dispatch's and a task's own completion -- all go through :func:`apply_terminal_transitions`:
one UPDATE ... RETURNING for the whole batch, then one bulk audit INSERT for the winners,
in the caller's transaction. A completed run never matches the WHERE clause again, so two
reconcilers, or a reconciler racing a finishing task, can never produce two terminal
transitions or overwrite a legitimate completion.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Integer,
    Row,
    String,
    Table,
    and_,
    bindparam,
    func,
    insert,
    or_,
    text,
    update,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Update

from models import NON_TERMINAL_SQL, AuditLog, OperationRun, RunOutcome, RunStatus, UtcDateTime
from models.types import JsonDoc
from worker.lifecycle.evidence import dumps, iso, scrub_and_truncate
from worker.lifecycle.reasons import ReasonCode, default_message

__all__ = [
    "TASK_OUTCOMES",
    "TerminalTransition",
    "apply_terminal_transitions",
    "block",
    "cancel",
    "complete",
    "force_fail_non_terminal_run",
    "forced_failure",
    "heartbeat",
    "mark_running",
    "record_retry",
    "scrub_and_truncate",
]

#: The outcomes a task may claim for itself; blocked and cancelled are runwarden's verdicts.
TASK_OUTCOMES = frozenset({RunOutcome.SUCCEEDED, RunOutcome.PARTIALLY_SUCCEEDED, RunOutcome.FAILED})


@dataclass(frozen=True)
class TerminalTransition:
    """One run's move to ``completed``: what it ends as, why, and what is recorded."""

    run_id: int
    outcome: RunOutcome
    source: str
    reason_code: str | None = None
    reason_message: str | None = None
    evidence: Mapping[str, Any] | None = None
    #: context key the record is written under ("reconciliation", "bridge", ...); None: none.
    record_key: str | None = None
    #: audit action for a forced transition; None for a task's own completion.
    audit_action: str | None = None
    #: the status the caller saw; None accepts any non-terminal status.
    expected_status: RunStatus | None = None
    summary_counts: Mapping[str, Any] | None = None

    def record(self, now: datetime) -> dict[str, Any]:
        stamp = "reconciled_at" if self.record_key == "reconciliation" else "recorded_at"
        return {
            "reason_code": self.reason_code,
            "reason_message": self.reason_message,
            "source": self.source,
            "evidence": dict(self.evidence or {}),
            stamp: iso(now),
        }

    def payload(self, now: datetime) -> dict[str, Any]:
        # Keys left out become SQL NULL in the recordset, meaning "leave that column alone".
        row: dict[str, Any] = {
            "id": self.run_id,
            "outcome": self.outcome.value,
            "source": self.source,
        }
        if self.audit_action is not None:
            row["audit_action"] = self.audit_action
        if self.expected_status is not None:
            row["expected_status"] = self.expected_status.value
        if self.record_key is not None:
            row["record_key"] = self.record_key
            row["record"] = self.record(now)
        if self.reason_code is not None:
            row["failure"] = {"reason_code": self.reason_code, "message": self.reason_message}
        if self.summary_counts is not None:
            row["summary_counts"] = dict(self.summary_counts)
        return row


def forced_failure(
    run_id: int,
    *,
    reason_code: str,
    message: str | None = None,
    source: str,
    evidence: Mapping[str, Any] | None = None,
    expected_status: RunStatus | None = None,
    record_key: str = "reconciliation",
) -> TerminalTransition:
    """A forced terminal transition with its reason's outcome and audit action."""
    try:
        reason = ReasonCode(reason_code)
        outcome, action = reason.outcome, reason.audit_action
    except ValueError:
        outcome, action = RunOutcome.FAILED, "operation_run.force_failed"
    return TerminalTransition(
        run_id=run_id,
        outcome=outcome,
        source=source,
        reason_code=reason_code,
        reason_message=message or default_message(reason_code),
        evidence=evidence or {},
        record_key=record_key,
        audit_action=action,
        expected_status=expected_status,
    )


# The PostgreSQL terminal write: one statement that locks, updates and audits.
#
# ``source`` is any relation with the columns id, outcome, expected_status, record_key,
# record, failure, summary_counts, source, audit_action: a JSON payload for single runs and
# the bridge, or the reconciler's own stale scan (which assesses in SQL). ``projection``
# is the final SELECT over ``updated`` (and ``v``). Rows are locked in id order first (a
# MATERIALIZED CTE with ORDER BY ... FOR UPDATE), so transactions writing overlapping
# batches queue on each other instead of deadlocking; the status is then re-checked in
# the UPDATE itself -- the compare-and-set.
def pg_terminal_sql(source: str, projection: str, *, source_locks_rows: bool = False) -> str:
    """``source_locks_rows``: the source already holds its rows' locks without ever
    waiting (the reconciler's ``FOR UPDATE SKIP LOCKED`` scan), so there is no lock order
    to impose and the ordered locking step is skipped."""
    locking = (
        ""
        if source_locks_rows
        else f""", locked AS MATERIALIZED (
    SELECT r.id FROM operation_runs AS r JOIN v ON r.id = v.id
    WHERE r.{NON_TERMINAL_SQL}
    ORDER BY r.id
    FOR UPDATE OF r
)"""
    )
    rows = "v" if source_locks_rows else "v JOIN locked ON locked.id = v.id"
    return f"""
WITH v AS MATERIALIZED (
{source}
){locking}, updated AS (
    UPDATE operation_runs AS r SET
        status = 'completed',
        outcome = v.outcome,
        completed_at = :now,
        updated_at = :now,
        context = CASE WHEN v.record_key IS NULL THEN r.context
                       ELSE jsonb_set(r.context, ARRAY[v.record_key], v.record) END,
        failure_summary = CASE WHEN v.failure IS NULL THEN r.failure_summary
                               ELSE r.failure_summary || jsonb_build_array(v.failure) END,
        summary_counts = COALESCE(v.summary_counts, r.summary_counts)
    FROM {rows}
    WHERE r.id = v.id
      AND r.{NON_TERMINAL_SQL}
      AND (v.expected_status IS NULL OR r.status = v.expected_status)
    RETURNING r.id, r.workspace_id, r.tenant_id
), audited AS (
    INSERT INTO audit_logs (workspace_id, tenant_id, actor_type, actor_id, action,
                            resource_type, resource_id, metadata, recorded_at)
    SELECT u.workspace_id, u.tenant_id, 'system', v.source, v.audit_action,
           'operation_run', u.id::text,
           jsonb_build_object('reason_code', v.record -> 'reason_code',
                              'reason_message', v.record -> 'reason_message',
                              'source', v.source,
                              'outcome', v.outcome,
                              'evidence', v.record -> 'evidence'),
           :now
    FROM updated AS u JOIN v ON v.id = u.id
    WHERE v.audit_action IS NOT NULL
)
{projection}
"""


_PG_TERMINAL_UPDATE = text(
    pg_terminal_sql(
        source="""    SELECT * FROM jsonb_to_recordset(CAST(:payload AS jsonb)) AS v(
        id bigint, outcome text, expected_status text, record_key text, record jsonb,
        failure jsonb, summary_counts jsonb, source text, audit_action text)""",
        projection="SELECT u.id, u.workspace_id, u.tenant_id FROM updated AS u",
    )
).bindparams(bindparam("now", type_=UtcDateTime()), bindparam("payload", type_=String()))

_SQLITE_TERMINAL_UPDATE = text(f"""
UPDATE operation_runs SET
    status = 'completed',
    outcome = v.outcome,
    completed_at = :now,
    updated_at = :now,
    context = CASE WHEN v.record_key IS NULL THEN operation_runs.context
                   ELSE json_set(operation_runs.context, '$.' || v.record_key, json(v.record))
              END,
    failure_summary = CASE WHEN v.failure IS NULL THEN operation_runs.failure_summary
                           ELSE json_insert(operation_runs.failure_summary, '$[#]', json(v.failure))
                      END,
    summary_counts = COALESCE(v.summary_counts, operation_runs.summary_counts)
FROM (
    SELECT json_extract(value, '$.id') AS id,
           json_extract(value, '$.outcome') AS outcome,
           json_extract(value, '$.expected_status') AS expected_status,
           json_extract(value, '$.record_key') AS record_key,
           json_extract(value, '$.record') AS record,
           json_extract(value, '$.failure') AS failure,
           json_extract(value, '$.summary_counts') AS summary_counts
    FROM json_each(:payload)
) AS v
WHERE operation_runs.id = v.id
  AND operation_runs.{NON_TERMINAL_SQL}
  AND (v.expected_status IS NULL OR operation_runs.status = v.expected_status)
RETURNING operation_runs.id, operation_runs.workspace_id, operation_runs.tenant_id
""").bindparams(bindparam("now", type_=UtcDateTime()), bindparam("payload", type_=String()))


def apply_terminal_transitions(
    session: Session, transitions: Sequence[TerminalTransition], *, now: datetime
) -> list[int]:
    """Apply the transitions that still hold; return the run ids that won, in input order.

    Compare-and-set: a run that is already completed (or not in ``expected_status``) is
    left untouched and is absent from the result. Audit rows are written only for the
    winners, so one forced transition yields exactly one audit row.
    """
    by_id: dict[int, TerminalTransition] = {}
    for transition in transitions:
        by_id.setdefault(transition.run_id, transition)  # first claim on a run wins
    if not by_id:
        return []
    if len(by_id) == 1:
        (only,) = by_id.values()
        if only.record_key is None and only.audit_action is None and only.reason_code is None:
            # A task's own completion records nothing beside the row: the same CAS as a
            # plain single-row UPDATE, cheap enough to run after every task body.
            return [only.run_id] if _apply_bare(session, only, now) else []
    sqlite = session.get_bind().dialect.name == "sqlite"
    statement = _SQLITE_TERMINAL_UPDATE if sqlite else _PG_TERMINAL_UPDATE
    payload = dumps([t.payload(now) for t in by_id.values()])
    won = {
        int(row.id): (row.workspace_id, row.tenant_id)
        for row in session.execute(statement, {"now": now, "payload": payload})
    }
    if sqlite:
        # SQLite has no INSERT inside a WITH of an UPDATE: the audit rows are a second
        # statement in the same transaction (PostgreSQL wrote them in the one above).
        audit_rows = [
            _audit_row(transition, won[run_id], now)
            for run_id, transition in by_id.items()
            if run_id in won and transition.audit_action is not None
        ]
        if audit_rows:
            session.execute(insert(AuditLog), audit_rows)
    return [run_id for run_id in by_id if run_id in won]


@functools.cache
def _bare_statement(expected: bool, counts: bool) -> Update:
    statement = update(_runs).where(
        _runs.c.id == bindparam("run_id"),
        text(f"operation_runs.{NON_TERMINAL_SQL}"),
    )
    if expected:
        statement = statement.where(_runs.c.status == bindparam("expected_status"))
    values: dict[str, Any] = {
        "status": RunStatus.COMPLETED.value,
        "outcome": bindparam("outcome"),
        "completed_at": bindparam("now", type_=UtcDateTime()),
        "updated_at": bindparam("now", type_=UtcDateTime()),
    }
    if counts:
        values["summary_counts"] = bindparam("summary_counts", type_=JsonDoc)
    return statement.values(**values)


def _apply_bare(session: Session, transition: TerminalTransition, now: datetime) -> bool:
    statement = _bare_statement(
        transition.expected_status is not None, transition.summary_counts is not None
    )
    params: dict[str, Any] = {
        "run_id": transition.run_id,
        "outcome": transition.outcome.value,
        "now": now,
    }
    if transition.expected_status is not None:
        params["expected_status"] = transition.expected_status.value
    if transition.summary_counts is not None:
        params["summary_counts"] = dict(transition.summary_counts)
    return _won(session.execute(statement, params))


def _audit_row(
    transition: TerminalTransition, owner: tuple[int, int | None], now: datetime
) -> dict[str, Any]:
    workspace_id, tenant_id = owner
    return {
        "workspace_id": workspace_id,
        "tenant_id": tenant_id,
        "actor_type": "system",
        "actor_id": transition.source,
        "action": transition.audit_action,
        "resource_type": "operation_run",
        "resource_id": str(transition.run_id),
        "metadata_": {
            "reason_code": transition.reason_code,
            "reason_message": transition.reason_message,
            "source": transition.source,
            "outcome": transition.outcome.value,
            "evidence": dict(transition.evidence or {}),
        },
        "recorded_at": now,
    }


def force_fail_non_terminal_run(
    session: Session,
    run_id: int,
    *,
    reason_code: str,
    message: str | None = None,
    source: str,
    evidence: Mapping[str, Any] | None = None,
    now: datetime,
    record_key: str = "reconciliation",
    expected_status: RunStatus | None = None,
) -> bool:
    """End a non-terminal run with ``reason_code``'s outcome, a record and an audit row."""
    transition = forced_failure(
        run_id,
        reason_code=reason_code,
        message=message,
        source=source,
        evidence=evidence,
        expected_status=expected_status,
        record_key=record_key,
    )
    return bool(apply_terminal_transitions(session, [transition], now=now))


def block(
    session: Session,
    run_id: int,
    *,
    reason_code: str,
    message: str | None = None,
    source: str,
    evidence: Mapping[str, Any] | None = None,
    now: datetime,
) -> bool:
    """The legitimacy gate refused the run: it completes as ``blocked``."""
    if not reason_code.startswith("execution."):
        raise ValueError(f"a blocking reason is an execution.* code, not {reason_code!r}")
    return force_fail_non_terminal_run(
        session,
        run_id,
        reason_code=reason_code,
        message=message,
        source=source,
        evidence=evidence,
        now=now,
        record_key="legitimacy",
    )


def cancel(
    session: Session,
    run_id: int,
    *,
    reason_code: str = ReasonCode.CANCELLED,
    message: str | None = None,
    source: str,
    evidence: Mapping[str, Any] | None = None,
    now: datetime,
) -> bool:
    """The task was revoked with terminate: the run completes as ``cancelled``."""
    transition = forced_failure(
        run_id,
        reason_code=reason_code,
        message=message,
        source=source,
        evidence=evidence,
        record_key="bridge",
    )
    if transition.outcome is not RunOutcome.CANCELLED:
        raise ValueError(f"{reason_code!r} is not a cancelling reason")
    return bool(apply_terminal_transitions(session, [transition], now=now))


def complete(
    session: Session,
    run_id: int,
    *,
    outcome: RunOutcome | str,
    summary_counts: Mapping[str, Any] | None = None,
    now: datetime,
) -> bool:
    """The task's own end: only a ``running`` run completes this way; no audit row."""
    outcome = RunOutcome(outcome)
    if outcome not in TASK_OUTCOMES:
        raise ValueError(
            f"a task completes as succeeded, partially_succeeded or failed, not {outcome}"
        )
    transition = TerminalTransition(
        run_id=run_id,
        outcome=outcome,
        source="task",
        expected_status=RunStatus.RUNNING,
        summary_counts=summary_counts,
    )
    return bool(apply_terminal_transitions(session, [transition], now=now))


# Built once: these run around every task body, and building an UPDATE costs more
# Python than executing it.
_runs = cast(Table, OperationRun.__table__)
_MARK_RUNNING = (
    update(_runs)
    .where(
        _runs.c.id == bindparam("run_id"),
        or_(
            _runs.c.status == RunStatus.QUEUED.value,
            and_(
                bindparam("retries", type_=Integer()) > 0,
                _runs.c.status == RunStatus.RUNNING.value,
                _runs.c.attempts == bindparam("retries", type_=Integer()),
            ),
        ),
    )
    .values(
        status=RunStatus.RUNNING.value,
        attempts=bindparam("attempt", type_=Integer()),
        started_at=func.coalesce(_runs.c.started_at, bindparam("now", type_=UtcDateTime())),
        last_heartbeat_at=bindparam("now", type_=UtcDateTime()),
        updated_at=bindparam("now", type_=UtcDateTime()),
    )
)
_HEARTBEAT = (
    update(_runs)
    .where(_runs.c.id == bindparam("run_id"), _runs.c.status == RunStatus.RUNNING.value)
    .values(
        last_heartbeat_at=bindparam("now", type_=UtcDateTime()),
        updated_at=bindparam("now", type_=UtcDateTime()),
    )
)


_STARTED_COLUMNS = (
    _runs.c.id,
    _runs.c.type,
    _runs.c.workspace_id,
    _runs.c.tenant_id,
    _runs.c.user_id,
    _runs.c.context,
)


def start_if_allowed(
    session: Session,
    run_id: int,
    *,
    retries: int,
    now: datetime,
    allowed: ColumnElement[bool],
) -> Row[Any] | None:
    """:func:`mark_running`, only where ``allowed`` (the legitimacy gate as SQL) holds:
    the task-start fast path, one statement. Returns the started run's id, type,
    workspace_id, tenant_id, user_id and context, or None when the run was not started
    (refused, already ended, or a duplicate delivery): the caller then finds out which."""
    if retries < 0:
        raise ValueError("retries must be >= 0")
    statement = _MARK_RUNNING.where(allowed).returning(*_STARTED_COLUMNS)
    params = {"run_id": run_id, "retries": retries, "attempt": retries + 1, "now": now}
    return session.execute(statement, params).one_or_none()


def mark_running(session: Session, run_id: int, *, retries: int, now: datetime) -> bool:
    """Start execution attempt ``retries + 1``.

    A first delivery starts a ``queued`` run. ``retry()`` republishes before the run
    could be touched, so a retry delivery starts a ``running`` run whose ``attempts`` equals
    its ``retries``. A duplicate delivery of an attempt already started matches neither
    branch and loses.
    """
    if retries < 0:
        raise ValueError("retries must be >= 0")
    result = session.execute(
        _MARK_RUNNING, {"run_id": run_id, "retries": retries, "attempt": retries + 1, "now": now}
    )
    return _won(result)


def heartbeat(session: Session, run_id: int, *, now: datetime) -> bool:
    """Record liveness of a running run; a run that ended meanwhile is not touched."""
    return _won(session.execute(_HEARTBEAT, {"run_id": run_id, "now": now}))


def record_retry(
    session: Session, run_id: int, *, evidence: Mapping[str, Any], now: datetime
) -> bool:
    """A retry was scheduled: the run stays running with the last error recorded."""
    run = session.get(OperationRun, run_id, with_for_update=_lock_rows(session))
    if run is None or run.status != RunStatus.RUNNING.value:
        return False
    context = dict(run.context or {})
    bridge = dict(context.get("bridge") or {})
    bridge["last_retry"] = {**dict(evidence), "recorded_at": iso(now)}
    context["bridge"] = bridge
    result = session.execute(
        update(OperationRun)
        .where(OperationRun.id == run_id, OperationRun.status == RunStatus.RUNNING.value)
        .values(context=context, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return _won(result)


def _lock_rows(session: Session) -> bool:
    # SQLite has no row locks; its write transactions already hold the database lock.
    return session.get_bind().dialect.name != "sqlite"


def _won(result: Any) -> bool:
    return int(getattr(result, "rowcount", 0) or 0) == 1
