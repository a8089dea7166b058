"""Recovery: operation_runs.requeued_at, unstarted_attempts and publish_pending

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08

A run of a type with ``recovery = "retry"`` whose message was lost, or whose worker died,
goes back to queued: ``requeued_at`` is when (its queued window counts from then),
``unstarted_attempts`` counts the attempts whose message never started (each one is a try
of ``max_attempts``), and ``publish_pending`` is the outbox: requeued, its new message not
yet handed to the broker. The partial index keeps the outbox's look-up O(pending runs).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.types

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("operation_runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("requeued_at", models.types.UtcDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column(
                "unstarted_attempts", sa.Integer(), server_default=sa.text("0"), nullable=False
            )
        )
        batch_op.add_column(
            sa.Column("publish_pending", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.create_index(
            batch_op.f("ix_operation_runs_publish_pending"),
            ["id"],
            postgresql_where=sa.text("publish_pending"),
            sqlite_where=sa.text("publish_pending"),
        )


def downgrade() -> None:
    with op.batch_alter_table("operation_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_operation_runs_publish_pending"))
        batch_op.drop_column("publish_pending")
        batch_op.drop_column("unstarted_attempts")
        batch_op.drop_column("requeued_at")
