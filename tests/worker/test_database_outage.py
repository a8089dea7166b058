"""A PostgreSQL outage while bodies run (issue 13): a body that finishes while the
database is down still ends in its true outcome, its heartbeats failing meanwhile do not
stop it, and no worker counts as lost for the heartbeats the database could not receive.

The module has its own PostgreSQL server, stopped and started by the tests, so no other
module's database goes away under it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from tests.factories import make_run, make_worker, seed_tenancy
from tests.servers import PostgresServer, RedisServer, ServerUnavailable
from tests.worker.conftest import BROKER_DB, LiveWorker, Spawn, wait_for, worker_cluster
from worker import db
from worker.dispatch import start_operation
from worker.lifecycle.policy import parse_policy
from worker.lifecycle.reconciler import OperationLifecycleReconciler
from worker.migrate import upgrade
from worker.settings import get_settings

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

#: Longer than lost_after_seconds (and shorter than the type's running window): the
#: body's heartbeats and its worker's fail for all of it.
OUTAGE_SECONDS = 7
POLICY = """
[reconciliation]
batch_limit = 100
interval_seconds = 1

[workers]
heartbeat_interval_seconds = 1
lost_after_seconds = 4

[types."test.await_go"]
queued_stale_after_seconds = 600
running_stale_after_seconds = 15
"""
ROUTES = {"operations.test.await_go": {"queue": "victims"}}


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    url = server.url("outage").replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute("CREATE DATABASE outage")
    upgrade(server.url("outage"))
    yield server
    db.dispose_engines()
    server.stop()


@pytest.fixture
def cluster(
    own_postgres: PostgresServer, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Spawn]:
    workdir = Path(tempfile.mkdtemp(prefix="rw-outage-policy-"))
    policy = workdir / "policy.toml"
    policy.write_text(POLICY)
    url = own_postgres.url("outage")
    monkeypatch.setenv("RUNWARDEN_DATABASE_URL", url)
    monkeypatch.setenv("RUNWARDEN_BROKER_URL", f"{redis_server.url}/{BROKER_DB}")
    monkeypatch.setenv("RUNWARDEN_POLICY_FILE", str(policy))
    get_settings.cache_clear()
    with worker_cluster(
        backend="postgresql",
        db_url=url,
        policy_file=policy,
        redis_server=redis_server,
        routes=ROUTES,
        prefix="rw-outage-",
    ) as spawn:
        yield spawn
    get_settings.cache_clear()
    shutil.rmtree(workdir, ignore_errors=True)


def _journal(worker: LiveWorker, run_id: int) -> list[dict[str, Any]]:
    path = worker.executions_dir / f"{run_id}.journal"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _events(worker: LiveWorker, run_id: int) -> list[str]:
    return [line["event"] for line in _journal(worker, run_id)]


def test_outage__body_finishing_while_the_database_is_down__succeeds(
    cluster: Spawn, own_postgres: PostgresServer
) -> None:
    cluster("beat", beat=True)
    victim = cluster("victim")
    tenancy = seed_tenancy(victim.engine)
    run_id = start_operation("test.await_go", workspace_id=tenancy["workspace_id"])
    wait_for(lambda: "start" in _events(victim, run_id), what=f"run {run_id} started")

    own_postgres.pg_ctl("stop", "-m", "fast")
    try:
        # The body heartbeats into a database that is down, then finishes there.
        time.sleep(2)
        (victim.executions_dir / f"{run_id}.go").touch()
        wait_for(lambda: "end" in _events(victim, run_id), what="the body to finish")
        # Down for longer than lost_after_seconds.
        time.sleep(OUTAGE_SECONDS)
    finally:
        own_postgres.pg_ctl("start")

    run = victim.wait_terminal(run_id, timeout=30)
    assert (run.status, run.outcome, run.attempts) == ("completed", "succeeded", 1), run.context
    assert run.summary_counts == {"attempt": 1}
    assert _events(victim, run_id) == ["start", "end"]
    assert victim.audit_rows(run_id) == []


RESTART_POLICY = """
[workers]
heartbeat_interval_seconds = 10
lost_after_seconds = 30

[types."test.await_go"]
queued_stale_after_seconds = 600
running_stale_after_seconds = 5
"""


def test_restart__silence_before_the_database_started_is_no_evidence(
    own_postgres: PostgresServer,
) -> None:
    """Deterministic, without a live worker: a worker and its run last heard a minute
    before the database restarted are neither lost nor stale until the worker has had
    lost_after_seconds to be heard again; once it is heard, the silent run is stale."""
    own_postgres.pg_ctl("restart", "-m", "fast")
    db.dispose_engines()
    engine = db.build_engine(own_postgres.url("outage"))
    try:
        with engine.connect() as conn:
            up_since = conn.execute(text("SELECT pg_postmaster_start_time()")).scalar_one()
        tenancy = seed_tenancy(engine)
        worker_id = make_worker(engine, now=up_since, heartbeat_age_seconds=60)
        run_id = make_run(
            engine,
            workspace_id=tenancy["workspace_id"],
            type="test.await_go",
            status="running",
            now=up_since,
            age_seconds=70,
            started_age_seconds=65,
            heartbeat_age_seconds=60,
            worker_id=worker_id,
        )
        reconciler = OperationLifecycleReconciler(parse_policy(RESTART_POLICY))

        # Silent for a minute before the restart, seconds since: neither lost nor stale.
        assert reconciler.reconcile(engine).changes == ()

        # The worker is heard again, its run still is not: the run's silence is real.
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE runwarden_workers SET last_heartbeat_at = now() WHERE id = :id"),
                {"id": worker_id},
            )
        (change,) = reconciler.reconcile(engine).changes
        assert (change.operation_run_id, change.reason_code) == (run_id, "run.stale_running")
    finally:
        engine.dispose()
