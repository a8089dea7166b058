"""the legitimacy gate reads views: runwarden_gate_tenants, runwarden_gate_users

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

The gate's named statements read two views with fixed names and columns instead of
runwarden's tenants and users tables, so an application's own tables can stand behind
them ([tenancy] in the policy; ``migrate`` rebuilds the views for it). Built here over
runwarden's own tables, which is what the gate read before.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from migrations.gate_views import build_views, drop_views, sync_foreign_keys
from worker.lifecycle.tenancy import OWN_TENANCY

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    build_views(op.get_bind(), OWN_TENANCY)


def downgrade() -> None:
    drop_views(op.get_bind())
    # Before this revision operation_runs always had its foreign keys; [tenancy] drops them.
    sync_foreign_keys(op.get_bind(), OWN_TENANCY)
