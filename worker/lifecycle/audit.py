"""Reading the audit log: the console's audit page and ``/metrics``' forced-transition
counter (which reads only the rows added since its last read)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from models import AuditLog
from worker.lifecycle.terminal import FORCED_ACTIONS, audit_to_dict

_REASON = AuditLog.metadata_["reason_code"].as_string()


def list_audit(
    session: Session,
    *,
    action: str | None = None,
    reason: str | None = None,
    resource_id: str | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """The newest audit rows matching the filters; ``before_id`` is the keyset cursor."""
    statement = select(AuditLog).order_by(AuditLog.id.desc()).limit(limit)
    if action is not None:
        statement = statement.where(AuditLog.action == action)
    if reason is not None:
        statement = statement.where(reason == _REASON)
    if resource_id is not None:
        statement = statement.where(
            AuditLog.resource_type == "operation_run", AuditLog.resource_id == resource_id
        )
    if before_id is not None:
        statement = statement.where(AuditLog.id < before_id)
    return [audit_to_dict(row) for row in session.scalars(statement)]


@dataclass(frozen=True, slots=True)
class ForcedRow:
    id: int
    action: str
    reason_code: str | None
    recorded_at: datetime


def forced_totals_before(
    session: Session, cutoff: datetime
) -> tuple[int, dict[tuple[str, str | None], int]]:
    """Forced transitions recorded before ``cutoff``, counted in SQL by (action, reason),
    and the largest id among them (0 if none): the counter's starting point."""
    count, last = func.count().label("n"), func.max(AuditLog.id).label("last_id")
    rows = session.execute(
        select(AuditLog.action, _REASON.label("reason_code"), count, last)
        .where(AuditLog.recorded_at < cutoff, AuditLog.action.in_(FORCED_ACTIONS))
        .group_by(AuditLog.action, _REASON)
    ).all()
    totals = {(r.action, r.reason_code): int(r.n) for r in rows}
    return max((int(r.last_id) for r in rows), default=0), totals


def forced_rows_since(session: Session, *, cutoff: datetime, after_id: int) -> list[ForcedRow]:
    """Forced-transition rows recorded since ``cutoff`` or with an id above ``after_id``,
    oldest first: the recent stretch by time (``ix_audit_logs_recorded_at``) and anything
    new by id (the primary key). The cost is the number of rows in the two ranges."""
    rows = session.execute(
        select(AuditLog.id, AuditLog.action, _REASON.label("reason_code"), AuditLog.recorded_at)
        .where(
            or_(AuditLog.recorded_at >= cutoff, AuditLog.id > after_id),
            AuditLog.action.in_(FORCED_ACTIONS),
        )
        .order_by(AuditLog.id)
    )
    return [ForcedRow(int(r.id), r.action, r.reason_code, r.recorded_at) for r in rows]
