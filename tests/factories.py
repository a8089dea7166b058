"""Rows for tests: small helpers that insert real rows and return their ids."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from itertools import product
from typing import Any

from sqlalchemy import Engine

from models import OperationRun, RunwardenWorker, Tenant, User, Workspace, utcnow
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


def make_worker(
    engine: Engine,
    *,
    now: datetime | None = None,
    heartbeat_age_seconds: float = 0,
    stopped_age_seconds: float | None = None,
    nodename: str = "celery@test",
    pid: int = 4242,
) -> int:
    """A registered worker whose last heartbeat was ``heartbeat_age_seconds`` before ``now``
    (and stopped that long ago, if given)."""
    now = now or utcnow()
    with write_session(engine) as session:
        worker = RunwardenWorker(
            nodename=nodename,
            hostname="test-host",
            pid=pid,
            started_at=now - timedelta(seconds=max(heartbeat_age_seconds, 1) + 3600),
            last_heartbeat_at=now - timedelta(seconds=heartbeat_age_seconds),
            stopped_at=(
                now - timedelta(seconds=stopped_age_seconds)
                if stopped_age_seconds is not None
                else None
            ),
        )
        session.add(worker)
        session.flush()
        return worker.id


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
    # Every run has its message's task id, and a run past queued has started an attempt.
    fields.setdefault("celery_task_id", str(uuid.uuid4()))
    fields.setdefault("attempts", 0 if status == "queued" else 1)
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


_OUTCOME_OF = {"queued": "pending", "running": "pending", "completed": "succeeded"}


def seed_gate_combinations(
    engine: Engine,
    *,
    types: Sequence[str],
    statuses: Sequence[str] = ("queued", "running"),
    heartbeats: Sequence[bool] = (False,),
    now: datetime | None = None,
    age_seconds: float = 0,
    spacing_seconds: float = 1,
) -> list[int]:
    """One run for every combination of tenant (none, active, inactive, of another
    workspace, inactive of another workspace), user (none, active, inactive), type, status
    and heartbeat; each run ``age_seconds`` old and ``spacing_seconds`` older than the one
    before, so none share a creation time. Returns their ids in creation order."""
    now = now or utcnow()
    run_ids = []
    with write_session(engine) as session:
        home, other = Workspace(name="home"), Workspace(name="other")
        session.add_all([home, other])
        session.flush()
        tenants = {
            "active": Tenant(workspace_id=home.id, name="a", is_active=True),
            "inactive": Tenant(workspace_id=home.id, name="i", is_active=False),
            "elsewhere": Tenant(workspace_id=other.id, name="e", is_active=True),
            "elsewhere_inactive": Tenant(workspace_id=other.id, name="ei", is_active=False),
        }
        users = {
            "active": User(email=f"a-{home.id}@example.test", is_active=True),
            "inactive": User(email=f"i-{home.id}@example.test", is_active=False),
        }
        session.add_all([*tenants.values(), *users.values()])
        session.flush()
        combinations = product([None, *tenants], [None, *users], statuses, types, heartbeats)
        for index, (tenant, user, status, type_, beat) in enumerate(combinations):
            created = now - timedelta(seconds=age_seconds + index * spacing_seconds)
            started = created + timedelta(seconds=5) if status != "queued" else None
            run = OperationRun(
                workspace_id=home.id,
                tenant_id=tenants[tenant].id if tenant else None,
                user_id=users[user].id if user else None,
                type=type_,
                status=status,
                outcome=_OUTCOME_OF[status],
                attempts=0 if status == "queued" else 1,
                celery_task_id=str(uuid.uuid4()),
                created_at=created,
                updated_at=created,
                started_at=started,
                completed_at=now if status == "completed" else None,
                last_heartbeat_at=(
                    created + timedelta(seconds=7) if beat and status == "running" else None
                ),
            )
            session.add(run)
            session.flush()
            run_ids.append(run.id)
    return run_ids
