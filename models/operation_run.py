from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, Integer, String, false, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base
from models.enums import NON_TERMINAL_SQL, RunOutcome, RunStatus
from models.types import BigId, JsonDoc, UtcDateTime, utcnow

_STATUS_VALUES = ", ".join(f"'{s.value}'" for s in RunStatus)
_OUTCOME_VALUES = ", ".join(f"'{o.value}'" for o in RunOutcome)


class OperationRun(Base):
    __tablename__ = "operation_runs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id"))
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    type: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(
        String(16), default=RunStatus.QUEUED.value, server_default=RunStatus.QUEUED.value
    )
    outcome: Mapped[str] = mapped_column(
        String(32), default=RunOutcome.PENDING.value, server_default=RunOutcome.PENDING.value
    )
    run_identity_hash: Mapped[str | None] = mapped_column(String(64))
    celery_task_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    context: Mapped[dict[str, Any]] = mapped_column(
        JsonDoc, default=dict, server_default=text("'{}'")
    )
    summary_counts: Mapped[dict[str, Any]] = mapped_column(
        JsonDoc, default=dict, server_default=text("'{}'")
    )
    failure_summary: Mapped[list[dict[str, Any]]] = mapped_column(
        JsonDoc, default=list, server_default=text("'[]'")
    )
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    #: a retry was asked for with a countdown: the run is alive until it is due
    retry_due_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    #: the worker whose delivery started the current attempt (set by the start statement)
    worker_id: Mapped[int | None] = mapped_column(
        ForeignKey("runwarden_workers.id", ondelete="SET NULL")
    )
    #: the reconciler put the run back to queued (recovery = "retry"): its queued window
    #: counts from here
    requeued_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    #: attempts whose message never started within its queued window (each is a try)
    # Server defaults only: an insert written against an older revision stays valid.
    unstarted_attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    #: the outbox: requeued, and its new message not yet handed to the broker
    publish_pending: Mapped[bool] = mapped_column(Boolean, server_default=false())

    __table_args__ = (
        CheckConstraint(f"status IN ({_STATUS_VALUES})", name="status"),
        CheckConstraint(f"outcome IN ({_OUTCOME_VALUES})", name="outcome"),
        # The invariant in one place the database enforces: completed iff decided.
        CheckConstraint(
            "(status = 'completed') = (outcome <> 'pending')", name="terminal_iff_decided"
        ),
        # Serves the reconciliation scan: only non-terminal rows are in it, so an idle
        # pass costs the same over 10k or 10M finished runs. It carries the scan's
        # tie-breaker (id), so a pass reads no further than its batch even when thousands
        # of runs share a creation time (bulk-created in one transaction).
        Index(
            "ix_operation_runs_active_scan",
            "type",
            "status",
            "created_at",
            "id",
            postgresql_where=text(NON_TERMINAL_SQL),
            sqlite_where=text(NON_TERMINAL_SQL),
        ),
        # One active run per identity. Runs without an identity are never de-duplicated;
        # a workspace-level run (tenant_id NULL) is, hence NULLS NOT DISTINCT on PostgreSQL.
        # SQLite treats NULLs as distinct; dispatch checks under BEGIN IMMEDIATE there.
        Index(
            "uq_operation_runs_active_identity",
            "workspace_id",
            "tenant_id",
            "type",
            "run_identity_hash",
            unique=True,
            postgresql_where=text(f"{NON_TERMINAL_SQL} AND run_identity_hash IS NOT NULL"),
            sqlite_where=text(f"{NON_TERMINAL_SQL} AND run_identity_hash IS NOT NULL"),
            postgresql_nulls_not_distinct=True,
        ),
        Index("ix_operation_runs_workspace_tenant", "workspace_id", "tenant_id"),
        # The outbox's look-up reads only the runs waiting to be published.
        Index(
            "ix_operation_runs_publish_pending",
            "id",
            postgresql_where=text("publish_pending"),
            sqlite_where=text("publish_pending"),
        ),
    )

    @property
    def is_terminal(self) -> bool:
        return self.status == RunStatus.COMPLETED.value

    def __repr__(self) -> str:
        return (
            f"OperationRun(id={self.id!r}, type={self.type!r}, "
            f"status={self.status!r}, outcome={self.outcome!r})"
        )
