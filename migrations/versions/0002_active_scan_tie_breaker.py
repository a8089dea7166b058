"""active scan index carries the scan's tie-breaker (id)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

The reconcile pass orders by (type, status, created_at, id). With the index on (type,
status, created_at) alone, runs that share a creation time -- bulk-created in one
transaction -- had to be read and sorted in full on every pass to keep a batch of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NON_TERMINAL = "status IN ('queued', 'running')"


def _recreate(columns: list[str]) -> None:
    with op.batch_alter_table("operation_runs", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_operation_runs_active_scan",
            postgresql_where=sa.text(_NON_TERMINAL),
            sqlite_where=sa.text(_NON_TERMINAL),
        )
        batch_op.create_index(
            "ix_operation_runs_active_scan",
            columns,
            unique=False,
            postgresql_where=sa.text(_NON_TERMINAL),
            sqlite_where=sa.text(_NON_TERMINAL),
        )


def upgrade() -> None:
    _recreate(["type", "status", "created_at", "id"])


def downgrade() -> None:
    _recreate(["type", "status", "created_at"])
