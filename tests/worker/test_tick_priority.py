"""The beat tick under a backlog (found by the chaos proof, issue 13): with every pool slot
taken and operation messages queued behind, the scheduled reconcile still runs within one
body's time -- its message goes before the operations' -- instead of waiting out the whole
backlog (and expiring in the queue, tick after tick, while runs stay unreconciled)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factories import make_run, seed_tenancy
from tests.servers import RedisServer
from tests.worker.conftest import BROKER_DB, Spawn, wait_for, worker_cluster
from worker.dispatch import start_operation
from worker.settings import get_settings

pytestmark = [pytest.mark.redis, pytest.mark.slow]

BACKLOG = 16  # test.slow_ok bodies of 1.5 s on two slots: 12 s of work queued


@pytest.fixture(scope="module", params=["postgresql"])
def worker_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def cluster(
    worker_backend: str,
    worker_db_url: str,
    worker_policy_file: Path,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Spawn]:
    monkeypatch.setenv("RUNWARDEN_DATABASE_URL", worker_db_url)
    monkeypatch.setenv("RUNWARDEN_BROKER_URL", f"{redis_server.url}/{BROKER_DB}")
    monkeypatch.setenv("RUNWARDEN_POLICY_FILE", str(worker_policy_file))
    get_settings.cache_clear()
    with worker_cluster(
        backend=worker_backend,
        db_url=worker_db_url,
        policy_file=worker_policy_file,
        redis_server=redis_server,
        routes={},
        prefix="rw-tick-priority-",
    ) as spawn:
        yield spawn
    get_settings.cache_clear()


def test_tick__overtakes_a_backlog_of_operations(cluster: Spawn) -> None:
    worker = cluster("beat", beat=True)  # beat and the operations share the one queue
    tenancy = seed_tenancy(worker.engine)
    backlog = [
        start_operation("test.slow_ok", workspace_id=tenancy["workspace_id"])
        for _ in range(BACKLOG)
    ]
    stale = make_run(
        worker.engine, workspace_id=tenancy["workspace_id"], type="test.stale", age_seconds=120
    )

    reconciled = worker.wait_terminal(stale, timeout=60)
    assert reconciled.context["reconciliation"]["reason_code"] == "run.stale_queued"
    # Reconciled while most of the backlog had not even started.
    still_queued = [run_id for run_id in backlog if worker.run(run_id).status == "queued"]
    assert len(still_queued) >= BACKLOG // 2, still_queued
    wait_for(
        lambda: all(worker.run(run_id).status == "completed" for run_id in backlog),
        timeout=90,
        what="the backlog to finish",
    )
