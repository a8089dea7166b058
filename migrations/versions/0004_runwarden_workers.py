"""runwarden_workers and operation_runs.worker_id: a dead worker's runs are found

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

A worker's main process registers and heartbeats in runwarden_workers; the statement that
starts a run records which worker started it, so the reconciler fails the runs of a worker
that stopped heartbeating (run.worker_lost) within a minute, instead of judging them by
the type's running window alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.types

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "runwarden_workers",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("nodename", sa.String(length=255), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", models.types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("last_heartbeat_at", models.types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", models.types.UtcDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runwarden_workers")),
    )
    with op.batch_alter_table("operation_runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "worker_id",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                nullable=True,
            )
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_operation_runs_worker_id_runwarden_workers"),
            "runwarden_workers",
            ["worker_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("operation_runs", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_operation_runs_worker_id_runwarden_workers"), type_="foreignkey"
        )
        batch_op.drop_column("worker_id")
    op.drop_table("runwarden_workers")
