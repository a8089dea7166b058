"""The console through FastAPI's test client, on SQLite and PostgreSQL (the ``engine``
fixture runs every test on both)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from tests.factories import make_run, seed_tenancy
from worker.db import write_session
from worker.lifecycle.policy import LifecyclePolicy, parse_policy
from worker.lifecycle.transitions import force_fail_non_terminal_run
from worker.web.app import create_app

POLICY = """
[types."inventory.sync"]
queued_stale_after_seconds = 600
running_stale_after_seconds = 3600

[types."backup.create"]
queued_stale_after_seconds = 600
running_stale_after_seconds = 7200
"""

#: Markup a tenant's name or a task's error message could carry: shown, never run.
INJECTION = '<script>alert("x")</script><img src=x onerror=alert(1)>'
SECRET = "hunter2"


@dataclass
class Seeded:
    engine: Engine
    policy: LifecyclePolicy
    workspace_id: int
    tenant_id: int
    stale_queued: int
    stale_running: int
    fresh: int
    succeeded: int
    bridged: int
    uncovered: int


def seed(engine: Engine) -> Seeded:
    """Two stale runs, a fresh one, one a task completed, one the bridge failed (its
    tenant's name and its error message are markup, its evidence holds a credential),
    one of a type the policy does not cover."""
    ids = seed_tenancy(engine)
    ws, tenant = ids["workspace_id"], ids["tenant_id"]
    with write_session(engine) as session:
        from models import Tenant

        row = session.get(Tenant, tenant)
        assert row is not None
        row.name = f"acme {INJECTION}"
    stale_queued = make_run(engine, workspace_id=ws, tenant_id=tenant, age_seconds=900)
    stale_running = make_run(
        engine,
        workspace_id=ws,
        type="backup.create",
        status="running",
        age_seconds=9000,
        started_age_seconds=8000,
    )
    fresh = make_run(engine, workspace_id=ws, tenant_id=tenant, age_seconds=30)
    succeeded = make_run(
        engine, workspace_id=ws, status="completed", outcome="succeeded", age_seconds=100
    )
    bridged = make_run(engine, workspace_id=ws, tenant_id=tenant, status="running")
    with write_session(engine) as session:
        assert force_fail_non_terminal_run(
            session,
            bridged,
            reason_code="run.job_failed",
            message=f"export failed: {INJECTION}",
            source="bridge",
            record_key="bridge",
            evidence={
                "exception_type": "RuntimeError",
                "exception_message": f"{INJECTION} at postgresql://app:{SECRET}@db/app",
                "hostname": "celery@web-1",
                "pid": 4242,
            },
        )
    uncovered = make_run(engine, workspace_id=ws, type="other.thing", age_seconds=9000)
    return Seeded(
        engine=engine,
        policy=parse_policy(POLICY),
        workspace_id=ws,
        tenant_id=tenant,
        stale_queued=stale_queued,
        stale_running=stale_running,
        fresh=fresh,
        succeeded=succeeded,
        bridged=bridged,
        uncovered=uncovered,
    )


@pytest.fixture
def seeded(engine: Engine) -> Seeded:
    return seed(engine)


@pytest.fixture
def client(seeded: Seeded) -> Iterator[TestClient]:
    with TestClient(create_app(seeded.engine, seeded.policy)) as client:
        yield client


TOKEN = "s3cret-console-token"


@pytest.fixture
def guarded(seeded: Seeded) -> Iterator[TestClient]:
    """The console with a token set."""
    with TestClient(create_app(seeded.engine, seeded.policy, token=TOKEN)) as client:
        yield client
