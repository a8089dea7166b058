"""operation_runs.retry_due_at: a run waiting for its retry is alive until then

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

A body that asks for a retry with a countdown leaves its run running with no sign of life
until the retry starts; without the due time, a countdown longer than the type's running
window made the reconciler fail a run that was only waiting.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.types

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("operation_runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("retry_due_at", models.types.UtcDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("operation_runs", schema=None) as batch_op:
        batch_op.drop_column("retry_due_at")
