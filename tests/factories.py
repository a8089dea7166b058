"""Rows for tests: small helpers that insert real rows and return their ids."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from models import OperationRun, Tenant, User, Workspace, utcnow
from worker.db import write_session


def seed_tenancy(
    engine: Engine, *, tenants: int = 1, tenant_active: bool = True, user_active: bool = True
) -> dict[str, Any]:
    with write_session(engine) as session:
        workspace = Workspace(name="acme")
        session.add(workspace)
        session.flush()
        tenant_rows = [
            Tenant(workspace_id=workspace.id, name=f"tenant-{i}", is_active=tenant_active)
            for i in range(tenants)
        ]
        session.add_all(tenant_rows)
        user = User(email=f"ops-{workspace.id}@example.test", is_active=user_active)
        session.add(user)
        session.flush()
        return {
            "workspace_id": workspace.id,
            "tenant_ids": [t.id for t in tenant_rows],
            "tenant_id": tenant_rows[0].id if tenant_rows else None,
            "user_id": user.id,
        }


def make_run(
    engine: Engine,
    *,
    workspace_id: int,
    type: str = "inventory.sync",
    status: str = "queued",
    outcome: str = "pending",
    tenant_id: int | None = None,
    user_id: int | None = None,
    age_seconds: float = 0,
    started_age_seconds: float | None = None,
    heartbeat_age_seconds: float | None = None,
    now: datetime | None = None,
    **fields: Any,
) -> int:
    now = now or utcnow()
    created = now - timedelta(seconds=age_seconds)
    if started_age_seconds is not None:
        fields.setdefault("started_at", now - timedelta(seconds=started_age_seconds))
    if heartbeat_age_seconds is not None:
        fields.setdefault("last_heartbeat_at", now - timedelta(seconds=heartbeat_age_seconds))
    if status == "completed":
        fields.setdefault("completed_at", now)
    with write_session(engine) as session:
        run = OperationRun(
            workspace_id=workspace_id,
            tenant_id=tenant_id,
            user_id=user_id,
            type=type,
            status=status,
            outcome=outcome,
            created_at=created,
            updated_at=created,
            **fields,
        )
        session.add(run)
        session.flush()
        return run.id
