"""The console through FastAPI's test client, on SQLite and PostgreSQL (the ``engine``
fixture runs every test on both)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from tests.factories import make_run, make_worker, seed_tenancy
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


@dataclass
class Workers:
    alive: int
    lost: int
    stopped: int
    #: stopped a second ago: its heartbeat is fresh, and it is still not alive
    just_stopped: int
    alive_too: int
    #: running on ``alive``, within its window
    on_alive: int
    #: running on ``lost``: what the next pass fails with run.worker_lost
    on_lost: int


def seed_workers(seeded: Seeded) -> Workers:
    """Five workers under the default [workers] policy (lost after 60 s): two alive, one
    silent for an hour, two stopped; a running run on an alive one and one on the lost one."""
    engine = seeded.engine
    alive = make_worker(engine, heartbeat_age_seconds=2, nodename="celery@alive-1", pid=101)
    lost = make_worker(engine, heartbeat_age_seconds=3600, nodename="celery@lost", pid=102)
    stopped = make_worker(
        engine,
        heartbeat_age_seconds=7200,
        stopped_age_seconds=7200,
        nodename="celery@stopped",
        pid=103,
    )
    just_stopped = make_worker(
        engine, heartbeat_age_seconds=1, stopped_age_seconds=1, nodename="celery@drained", pid=104
    )
    alive_too = make_worker(engine, heartbeat_age_seconds=0, nodename="celery@alive-2", pid=105)
    running = {"workspace_id": seeded.workspace_id, "status": "running", "age_seconds": 60}
    on_alive = make_run(engine, **running, started_age_seconds=50, worker_id=alive)
    on_lost = make_run(engine, **running, started_age_seconds=3700, worker_id=lost)
    return Workers(alive, lost, stopped, just_stopped, alive_too, on_alive, on_lost)


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
