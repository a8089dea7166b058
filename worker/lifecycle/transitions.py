"""The one terminal write path: every move of a run to ``completed``.

The reconciler's, the bridge's, the gate's, dispatch's and a task's own completion all
build a :class:`TerminalTransition` and go through :func:`apply_terminal_transitions`:
one compare-and-set statement for the whole batch (``end_runs``: a run already completed,
or not in the status its caller judged, is left untouched) and one audit row for each run
won with an audit action, in the caller's transaction. A completed run never matches
again, so two reconcilers, or a reconciler racing a finishing task, can never produce two
terminal transitions or overwrite a legitimate completion.

The records (``context.<record_key>``), the failure entry and the audit metadata are built
here once (:meth:`TerminalTransition.payload`) and written by the named statements of
:mod:`worker.lifecycle.sql`. The PostgreSQL reconcile pass is the one exception: it builds
the same records in SQL (``reconcile_pass``), and a test holds the two to the same rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from models import RunOutcome, RunStatus
from worker.lifecycle.evidence import dumps
from worker.lifecycle.reasons import ReasonCode, default_message
from worker.lifecycle.sql import statement

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = [
    "TASK_OUTCOMES",
    "TerminalTransition",
    "apply_terminal_transitions",
    "block",
    "cancel",
    "complete",
    "dialect_of",
    "end_run",
    "force_fail_non_terminal_run",
    "forced_failure",
]

Evidence = Mapping[str, Any] | None

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
    #: fencing for a delivery's own writes: its attempt and its task id must still be the
    #: run's (None: not a delivery's write, or the attempt is not known).
    expected_attempt: int | None = None
    expected_task_id: str | None = None
    summary_counts: Mapping[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        """``context.<record_key>``; its ``evidence`` is also the audit row's. The
        statement stamps it (:attr:`stamp_key`) with the database's clock."""
        return {
            "reason_code": self.reason_code,
            "reason_message": self.reason_message,
            "source": self.source,
            "evidence": dict(self.evidence or {}),
        }

    @property
    def stamp_key(self) -> str:
        return "reconciled_at" if self.record_key == "reconciliation" else "recorded_at"

    def payload(self) -> dict[str, Any]:
        """This transition as ``end_runs`` reads it. Keys left out are NULL in SQL,
        meaning "leave that column alone"."""
        row: dict[str, Any] = {
            "id": self.run_id,
            "outcome": self.outcome.value,
            "source": self.source,
        }
        if self.audit_action is not None:
            row["audit_action"] = self.audit_action
        if self.expected_status is not None:
            row["expected_status"] = self.expected_status.value
        if self.expected_attempt is not None:
            row["expected_attempt"] = self.expected_attempt
        if self.expected_task_id is not None:
            row["expected_task_id"] = self.expected_task_id
        if self.record_key is not None:
            row["record_key"] = self.record_key
            row["stamp_key"] = self.stamp_key
            row["record"] = self.record()
        if self.reason_code is not None:
            row["failure"] = {"reason_code": self.reason_code, "message": self.reason_message}
        if self.summary_counts is not None:
            row["summary_counts"] = dict(self.summary_counts)
        return row

    @property
    def is_bare_completion(self) -> bool:
        """A task's own end: nothing recorded beside the row, no audit row, fenced on its
        delivery."""
        return (
            self.record_key is None
            and self.audit_action is None
            and self.reason_code is None
            and self.expected_status is RunStatus.RUNNING
            and self.expected_attempt is not None
            and self.expected_task_id is not None
        )


def forced_failure(
    run_id: int,
    *,
    reason_code: str,
    message: str | None = None,
    source: str,
    evidence: Mapping[str, Any] | None = None,
    expected_status: RunStatus | None = None,
    record_key: str = "reconciliation",
    expected_attempt: int | None = None,
    expected_task_id: str | None = None,
) -> TerminalTransition:
    """A forced terminal transition with its reason's outcome and audit action (failed,
    blocked or cancelled; an unknown code fails)."""
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
        expected_attempt=expected_attempt,
        expected_task_id=expected_task_id,
    )


def dialect_of(session: Session) -> str:
    return session.get_bind().dialect.name


def apply_terminal_transitions(
    session: Session, transitions: Sequence[TerminalTransition], *, now: datetime | None = None
) -> list[int]:
    """Apply the transitions that still hold; return the run ids that won, in input order.
    ``now`` pins the clock (tests); by default every timestamp is the database's.

    Audit rows are written only for the winners, so one forced transition yields exactly
    one audit row. The first transition given for a run is the one that counts.
    """
    by_id: dict[int, TerminalTransition] = {}
    for transition in transitions:
        by_id.setdefault(transition.run_id, transition)
    if not by_id:
        return []
    dialect = dialect_of(session)
    if len(by_id) == 1:
        (only,) = by_id.values()
        if only.is_bare_completion:
            # Runs after every task body: a plain single-row CAS, no JSON to build.
            params = {
                "run_id": only.run_id,
                "outcome": only.outcome.value,
                "summary_counts": dict(only.summary_counts) if only.summary_counts else None,
                "attempt": only.expected_attempt,
                "celery_task_id": only.expected_task_id,
                "now": now,
            }
            won = _rowcount(session.execute(statement(dialect, "complete_run"), params)) == 1
            return [only.run_id] if won else []
    payload = dumps([t.payload() for t in by_id.values()])
    rows = session.execute(statement(dialect, "end_runs"), {"now": now, "payload": payload})
    won_ids = {int(row.id) for row in rows}
    if dialect == "sqlite" and won_ids:
        # PostgreSQL wrote the audit rows inside end_runs; SQLite needs a second statement.
        session.execute(
            statement(dialect, "audit_ended_runs"),
            {"now": now, "payload": payload, "won_ids": dumps(sorted(won_ids))},
        )
    return [run_id for run_id in by_id if run_id in won_ids]


def end_run(
    session: Session, transition: TerminalTransition, *, now: datetime | None = None
) -> bool:
    """:func:`apply_terminal_transitions` for one run: True if it won."""
    return bool(apply_terminal_transitions(session, [transition], now=now))


def force_fail_non_terminal_run(
    session: Session,
    run_id: int,
    *,
    reason_code: str,
    message: str | None = None,
    source: str,
    evidence: Mapping[str, Any] | None = None,
    now: datetime | None = None,
    record_key: str = "reconciliation",
    expected_status: RunStatus | None = None,
    expected_attempt: int | None = None,
    expected_task_id: str | None = None,
) -> bool:
    """End a non-terminal run as ``failed`` with a record and an audit row."""
    transition = forced_failure(
        run_id,
        reason_code=reason_code,
        message=message,
        source=source,
        evidence=evidence,
        expected_status=expected_status,
        record_key=record_key,
        expected_attempt=expected_attempt,
        expected_task_id=expected_task_id,
    )
    return _end_as(session, transition, RunOutcome.FAILED, now=now)


def block(
    session: Session,
    run_id: int,
    *,
    reason_code: str,
    source: str,
    evidence: Evidence,
    now: datetime | None = None,
    expected_attempt: int | None = None,
    expected_task_id: str | None = None,
) -> bool:
    """The legitimacy gate refused the run: it completes as ``blocked``."""
    transition = forced_failure(
        run_id,
        reason_code=reason_code,
        source=source,
        evidence=evidence,
        record_key="legitimacy",
        expected_attempt=expected_attempt,
        expected_task_id=expected_task_id,
    )
    return _end_as(session, transition, RunOutcome.BLOCKED, now=now)


def cancel(
    session: Session,
    run_id: int,
    *,
    source: str,
    evidence: Evidence = None,
    now: datetime | None = None,
    expected_task_id: str | None = None,
) -> bool:
    """The task was revoked with terminate: the run completes as ``cancelled``."""
    transition = forced_failure(
        run_id,
        reason_code=ReasonCode.CANCELLED,
        source=source,
        evidence=evidence,
        record_key="bridge",
        expected_task_id=expected_task_id,
    )
    return _end_as(session, transition, RunOutcome.CANCELLED, now=now)


def _end_as(
    session: Session,
    transition: TerminalTransition,
    outcome: RunOutcome,
    *,
    now: datetime | None = None,
) -> bool:
    if transition.outcome is not outcome:
        raise ValueError(f"{transition.reason_code!r} does not end a run as {outcome.value}")
    return end_run(session, transition, now=now)


def complete(
    session: Session,
    run_id: int,
    *,
    outcome: RunOutcome | str,
    summary_counts: Mapping[str, Any] | None = None,
    attempt: int,
    celery_task_id: str,
    now: datetime | None = None,
) -> bool:
    """The task's own end: only a ``running`` run whose current attempt is this
    delivery's completes this way; no audit row."""
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
        expected_attempt=attempt,
        expected_task_id=celery_task_id,
        summary_counts=summary_counts,
    )
    return end_run(session, transition, now=now)


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)
