"""How a completed run ended: the record that ended it and its audit rows.

Every forced terminal transition writes its record under one context key (the reconciler
under ``reconciliation``, the bridge under ``bridge``, the gate under ``legitimacy``,
dispatch under ``dispatch``) and one audit row; a completed run is never changed again, so
at most one of those records carries a ``reason_code``. A task's own completion writes no
record: it has no reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, String, func, select

import models
from worker.lifecycle.evidence import iso_or_none, scrub

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

#: The context keys a terminal record is written under, by whom.
TERMINAL_RECORD_KEYS: tuple[str, ...] = ("reconciliation", "bridge", "legitimacy", "dispatch")
#: The evidence keys that say most about an ending, in the order they are shown.
KEY_EVIDENCE: tuple[str, ...] = (
    "exception_type",
    "exception_message",
    "threshold_seconds",
    "reference_time",
    "evaluated_at",
    "hostname",
    "pid",
    "task_name",
    "worker",
)
#: The audit actions of forced transitions (one row each).
FORCED_ACTIONS: tuple[str, ...] = (
    "operation_run.force_failed",
    "operation_run.blocked",
    "operation_run.cancelled",
)


@dataclass(frozen=True, slots=True)
class TerminalRecord:
    """The record that ended a run: who (``source``), why (reason) and when."""

    record_key: str
    reason_code: str
    reason_message: str | None
    source: str | None
    recorded_at: str | None
    evidence: Mapping[str, Any]

    @property
    def key_evidence(self) -> dict[str, Any]:
        return {k: self.evidence[k] for k in KEY_EVIDENCE if self.evidence.get(k) is not None}

    def to_dict(self) -> dict[str, Any]:
        return {
            "record_key": self.record_key,
            "reason_code": self.reason_code,
            "reason_message": self.reason_message,
            "source": self.source,
            "recorded_at": self.recorded_at,
            "key_evidence": self.key_evidence,
            "evidence": dict(self.evidence),
        }


def scrubbed(value: Any) -> Any:
    """``value`` with the scrubber applied to every string at any depth. Evidence is
    scrubbed when written; shown again, it is scrubbed again (a row written by an older
    version, or by hand, must not show a credential either)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {str(k): scrubbed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrubbed(v) for v in value]
    return value


def terminal_record(run: models.OperationRun) -> TerminalRecord | None:
    """The record that ended ``run``, or None (not completed, or completed by its task)."""
    if not run.is_terminal:
        return None
    context = run.context or {}
    for key in TERMINAL_RECORD_KEYS:
        record = context.get(key)
        if isinstance(record, Mapping) and record.get("reason_code"):
            evidence = record.get("evidence")
            return TerminalRecord(
                record_key=key,
                reason_code=str(record["reason_code"]),
                reason_message=scrubbed(record.get("reason_message")),
                source=record.get("source"),
                recorded_at=record.get("reconciled_at") or record.get("recorded_at"),
                evidence=scrubbed(evidence) if isinstance(evidence, Mapping) else {},
            )
    return None


def reason_code_of(run: models.OperationRun) -> str | None:
    record = terminal_record(run)
    return record.reason_code if record else None


def reason_code_column() -> ColumnElement[str]:
    """SQL for a row's terminal reason code: the first record key that has one (a
    completed run has at most one such record; a running run's ``bridge`` may hold only
    ``last_retry``, without a reason)."""
    return func.coalesce(
        *(
            models.OperationRun.context[key]["reason_code"].as_string()
            for key in TERMINAL_RECORD_KEYS
        ),
        type_=String,
    )


def audit_to_dict(row: models.AuditLog) -> dict[str, Any]:
    """An audit row as ``explain --json``, ``/api/audit`` and the console show it."""
    metadata = row.metadata_ or {}
    return {
        "id": row.id,
        "recorded_at": iso_or_none(row.recorded_at),
        "action": row.action,
        "reason_code": metadata.get("reason_code"),
        "actor_type": row.actor_type,
        "actor_id": row.actor_id,
        "resource_type": row.resource_type,
        "resource_id": row.resource_id,
        "workspace_id": row.workspace_id,
        "tenant_id": row.tenant_id,
        "metadata": scrubbed(metadata),
    }


def audit_rows(session: Session, run_id: int) -> list[dict[str, Any]]:
    """A run's audit rows, oldest first (served by ``ix_audit_logs_resource``)."""
    rows = session.scalars(
        select(models.AuditLog)
        .where(
            models.AuditLog.resource_type == "operation_run",
            models.AuditLog.resource_id == str(run_id),
        )
        .order_by(models.AuditLog.id)
    )
    return [audit_to_dict(row) for row in rows]
