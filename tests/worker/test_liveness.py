"""Worker liveness with real prefork workers (issue 10): a worker's main process
registers and heartbeats in runwarden_workers; a run whose whole worker died ends as
run.worker_lost within lost_after_seconds plus two intervals, through beat on another
worker; a healthy long body that never heartbeats is never touched.

Two workers per test: the module's ``beat`` worker (beat inside it, consuming the default
queue: the reconcile ticks) and a ``victim`` per test consuming only the ``victims``
queue, where this module routes its runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text

from models import RunwardenWorker
from tests.factories import seed_tenancy
from tests.servers import RedisServer
from tests.worker.conftest import (
    LiveWorker,
    Spawn,
    wait_for,
    worker_cluster,
)
from worker import db
from worker.dispatch import start_operation
from worker.settings import get_settings

pytestmark = [pytest.mark.redis, pytest.mark.slow]

HEARTBEAT_S = 1
LOST_AFTER_S = 4
INTERVAL_S = 1

POLICY = f"""
[reconciliation]
batch_limit = 100
interval_seconds = {INTERVAL_S}

[workers]
heartbeat_interval_seconds = {HEARTBEAT_S}
lost_after_seconds = {LOST_AFTER_S}

[types."test.quiet"]
queued_stale_after_seconds = 600
running_stale_after_seconds = 600
"""


@pytest.fixture(scope="module")
def worker_policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("liveness-policy") / "policy.toml"
    path.write_text(POLICY)
    return path


@pytest.fixture(scope="module")
def cluster(
    worker_backend: str,
    worker_db_url: str,
    worker_policy_file: Path,
    redis_server: RedisServer,
) -> Iterator[Spawn]:
    with worker_cluster(
        backend=worker_backend,
        db_url=worker_db_url,
        policy_file=worker_policy_file,
        redis_server=redis_server,
        routes={"operations.test.quiet": {"queue": "victims"}},
        prefix="rw-liveness-",
    ) as spawn:
        yield spawn


@pytest.fixture(scope="module")
def beat(cluster: Spawn) -> LiveWorker:
    return cluster("beat", beat=True)


@pytest.fixture
def live(beat: LiveWorker, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveWorker]:
    monkeypatch.setenv("RUNWARDEN_DATABASE_URL", beat.db_url)
    monkeypatch.setenv("RUNWARDEN_BROKER_URL", beat.broker_url)
    monkeypatch.setenv("RUNWARDEN_POLICY_FILE", str(beat.policy_file))
    get_settings.cache_clear()
    yield beat
    get_settings.cache_clear()


def _worker_row(live: LiveWorker, worker: LiveWorker) -> RunwardenWorker:
    """The registration of ``worker``'s current process: the newest under its node name."""
    prefix = f"rwtest-{worker.backend}-{worker.name}-{os.getpid()}@"

    def found() -> RunwardenWorker | None:
        with db.read_session(live.engine) as session:
            row = session.scalars(
                select(RunwardenWorker)
                .where(RunwardenWorker.nodename.startswith(prefix))
                .order_by(RunwardenWorker.id.desc())
            ).first()
            if row is not None:
                session.expunge(row)
            return row

    row: RunwardenWorker = wait_for(found, what=f"worker {prefix} registered")
    return row


def _db_now(live: LiveWorker) -> datetime:
    from worker.lifecycle.clock import database_now

    with db.read_session(live.engine) as session:
        return database_now(session)


def _quiet_run(live: LiveWorker, seconds: float) -> int:
    tenancy = seed_tenancy(live.engine)
    return start_operation(
        "test.quiet", workspace_id=tenancy["workspace_id"], inputs={"seconds": seconds}
    )


def _running_on(live: LiveWorker, run_id: int, worker_id: int) -> None:
    run = live.wait_status(run_id, "running")
    assert run.worker_id == worker_id


def test_worker__registers_heartbeats_and_each_start_records_it(
    live: LiveWorker, cluster: Spawn
) -> None:
    assert live.process is not None
    row = _worker_row(live, live)
    assert row.pid == live.process.pid
    assert row.stopped_at is None
    first = row.last_heartbeat_at
    wait_for(
        lambda: _worker_row(live, live).last_heartbeat_at > first,
        timeout=HEARTBEAT_S * 10,
        what="a second heartbeat",
    )
    victim = cluster("victim", queues="victims")
    assert victim.process is not None
    mine = _worker_row(live, victim)
    run_id = _quiet_run(live, 0.2)
    run = live.wait_terminal(run_id)
    assert (run.outcome, run.worker_id) == ("succeeded", mine.id)

    listed = subprocess.run(
        [sys.executable, "-m", "worker.cli", "workers", "--json"],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    workers = {w["id"]: w for w in json.loads(listed.stdout)}
    assert workers[mine.id]["state"] == "alive"
    assert workers[mine.id]["pid"] == victim.process.pid
    assert set(workers[mine.id]) == {
        "id",
        "nodename",
        "hostname",
        "pid",
        "started_at",
        "last_heartbeat_at",
        "stopped_at",
        "state",
        "running_runs",
    }
    victim.stop()


def test_worker__killed_whole__its_run_ends_worker_lost_within_the_bound(
    live: LiveWorker, cluster: Spawn
) -> None:
    victim = cluster("victim", queues="victims")
    assert victim.process is not None
    mine = _worker_row(live, victim)
    run_id = _quiet_run(live, 120)
    _running_on(live, run_id, mine.id)
    victim.kill()
    killed_at = _db_now(live)

    run = live.wait_terminal(run_id, timeout=LOST_AFTER_S + 30)
    assert (run.status, run.outcome) == ("completed", "failed")
    record = run.context["reconciliation"]
    assert record["reason_code"] == "run.worker_lost"
    assert record["source"] == "scheduled_reconciler"
    evidence = record["evidence"]
    assert evidence["worker"]["id"] == mine.id
    assert evidence["worker"]["pid"] == mine.pid
    assert evidence["worker"]["stopped_at"] is None
    assert evidence["threshold_seconds"] == LOST_AFTER_S
    last_seen = datetime.fromisoformat(evidence["worker"]["last_heartbeat_at"])
    assert run.completed_at is not None
    # Never before the worker was silent for lost_after_seconds...
    assert run.completed_at - last_seen >= timedelta(seconds=LOST_AFTER_S)
    # ...and within lost_after_seconds and two intervals of the kill.
    assert run.completed_at - killed_at <= timedelta(seconds=LOST_AFTER_S + 2 * INTERVAL_S)
    [audit] = live.audit_rows(run_id)
    assert audit.action == "operation_run.force_failed"
    assert audit.metadata_["reason_code"] == "run.worker_lost"


def test_worker__long_body_without_heartbeats__succeeds_untouched(
    live: LiveWorker, cluster: Spawn
) -> None:
    victim = cluster("victim", queues="victims")
    run_id = _quiet_run(live, 4 * LOST_AFTER_S)
    run = live.wait_terminal(run_id, timeout=4 * LOST_AFTER_S + 30)
    assert (run.outcome, run.failure_summary) == ("succeeded", [])
    assert live.audit_rows(run_id) == []
    victim.stop()


def test_worker__clock_five_minutes_behind__counts_as_alive(
    live: LiveWorker, cluster: Spawn
) -> None:
    if live.backend == "sqlite":
        pytest.skip("SQLite has no server clock: its time is the writing process's own")
    if shutil.which("faketime") is None:
        pytest.fail("faketime is not installed (Debian package faketime; scripts/ensure-servers)")
    # The wall clock is 5 minutes behind; the monotonic clock is not (a skewed host's
    # monotonic clock runs true: libfaketime would otherwise shift it too, and the
    # worker's timed waits with it).
    victim = cluster(
        "skewed",
        queues="victims",
        wrapper=["env", "FAKETIME_DONT_FAKE_MONOTONIC=1", "faketime", "-f", "-5m"],
    )
    assert victim.process is not None
    mine = _worker_row(live, victim)
    # Its heartbeats are the database's time, not its own.
    assert abs(mine.last_heartbeat_at - _db_now(live)) < timedelta(seconds=60)
    run_id = _quiet_run(live, 2 * LOST_AFTER_S)
    run = live.wait_terminal(run_id, timeout=2 * LOST_AFTER_S + 30)
    assert (run.outcome, run.worker_id) == ("succeeded", mine.id)
    victim.stop()


def test_worker__warm_stop__drains_its_body_then_is_stopped(
    live: LiveWorker, cluster: Spawn
) -> None:
    victim = cluster("victim", queues="victims")
    assert victim.process is not None
    mine = _worker_row(live, victim)
    # A body longer than lost_after_seconds: the drain must keep the worker alive.
    run_id = _quiet_run(live, LOST_AFTER_S + 2)
    _running_on(live, run_id, mine.id)
    victim.stop()  # SIGTERM: Celery's warm shutdown waits for the body
    run = live.wait_terminal(run_id)
    assert (run.outcome, run.failure_summary) == ("succeeded", [])
    with db.read_session(live.engine) as session:
        row = session.get(RunwardenWorker, mine.id)
        assert row is not None and row.stopped_at is not None
        assert row.stopped_at >= run.completed_at  # type: ignore[operator]
        count = session.execute(
            text("SELECT count(*) FROM audit_logs WHERE resource_id = :id"), {"id": str(run_id)}
        ).scalar_one()
    assert count == 0
