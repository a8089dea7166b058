"""runwarden_ticks (the last run of each periodic task) and an index on audit_logs.recorded_at

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

The console and /metrics show when the scheduled reconciliation last ran: the tick records
it in runwarden_ticks, on the database's clock. The console's "forced transitions in the
last 24 h" reads audit rows by time, which needs an index over a log of any size.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.types

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "runwarden_ticks",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("ticked_at", models.types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("passes", sa.Integer(), nullable=False),
        sa.Column("candidates", sa.Integer(), nullable=False),
        sa.Column("reconciled", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_runwarden_ticks")),
    )
    with op.batch_alter_table("audit_logs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_logs_recorded_at"), ["recorded_at"])


def downgrade() -> None:
    with op.batch_alter_table("audit_logs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_logs_recorded_at"))
    op.drop_table("runwarden_ticks")
