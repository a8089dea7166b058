"""The beat tick's lock lives on the Celery app's broker: an application that configures
``app.conf.broker_url`` itself (as ``worker/celery_app.py`` invites) gets working ticks, not
ticks that look for runwarden's settings' broker (issue 9, item 12)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from tests.factories import seed_tenancy
from tests.servers import RedisServer
from tests.worker.conftest import REPO, point_app_at
from worker.db import build_engine, write_session
from worker.locks import RECONCILE_LOCK_KEY, RedisLock, redis_client
from worker.settings import get_settings

pytestmark = [pytest.mark.redis]


@pytest.fixture
def app_broker(redis_server: RedisServer) -> Iterator[str]:
    from worker.celery_app import app

    previous = (app.conf.broker_url, app.conf.result_backend)
    url = f"{redis_server.url}/13"
    redis_client(url).flushdb()
    point_app_at(url, url)
    yield url
    point_app_at(*previous)


def test_tick__lock_is_taken_on_the_apps_broker_not_the_settings_default(
    engine: Engine, app_broker: str
) -> None:
    from worker.tasks import reconcile_scheduled

    # RUNWARDEN_BROKER_URL is unset: the settings name the embedded Redis, not running.
    holder = RedisLock(redis_client(app_broker), RECONCILE_LOCK_KEY, ttl_seconds=30)
    assert holder.acquire()
    try:
        assert reconcile_scheduled() == {"skipped_reason": "locked"}
    finally:
        holder.release()
    result = reconcile_scheduled()
    assert result["passes"] == 1
    assert result["reconciled"] == 0


_TICK_POLICY = """
[reconciliation]
batch_limit = 20
interval_seconds = 4

[types."inventory.sync"]
queued_stale_after_seconds = 60
running_stale_after_seconds = 60
"""

_TICK = """
import sys
from tests.worker.conftest import point_app_at
from worker.tasks import reconcile_scheduled
point_app_at(sys.argv[1], sys.argv[1])
reconcile_scheduled()
"""


@pytest.mark.postgres
def test_tick__holder_killed_mid_tick_delays_the_next_tick_one_interval_at_most(
    pg_url: str, app_broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed in the middle of a tick leaves its lock behind; it must expire within
    one interval, not after the tick's hard time limit (issue 10)."""
    engine = build_engine(pg_url)
    ids = seed_tenancy(engine)
    with write_session(engine) as session:
        # A backlog a tick of 20-run passes needs a while to drain.
        session.execute(
            text(
                "INSERT INTO operation_runs (workspace_id, tenant_id, user_id, type, status,"
                " outcome, attempts, celery_task_id, context, summary_counts, failure_summary,"
                " created_at, updated_at, started_at)"
                " SELECT :ws, :tenant, :user, 'inventory.sync', 'running', 'pending', 1,"
                " 'task-' || i, '{}', '[]', '[]', now() - interval '2 hours',"
                " now() - interval '2 hours', now() - interval '2 hours'"
                " FROM generate_series(1, 30000) AS i"
            ),
            {"ws": ids["workspace_id"], "tenant": ids["tenant_id"], "user": ids["user_id"]},
        )
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(_TICK_POLICY)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RUNWARDEN_")},
        "RUNWARDEN_DATABASE_URL": pg_url,
        "RUNWARDEN_POLICY_FILE": str(policy_file),
        "PYTHONPATH": str(REPO),
    }
    tick = subprocess.Popen([sys.executable, "-c", _TICK, app_broker], cwd=REPO, env=env)
    client = redis_client(app_broker)
    try:
        # Mid-tick: it holds the lock and has failed some runs, not all.
        def failed() -> int:
            with engine.connect() as conn:
                return int(
                    conn.execute(
                        text("SELECT count(*) FROM operation_runs WHERE status = 'completed'")
                    ).scalar_one()
                )

        deadline = time.monotonic() + 60
        while failed() == 0:
            assert tick.poll() is None, "the tick ended before it could be killed"
            assert time.monotonic() < deadline, "the tick never started failing runs"
            time.sleep(0.02)
        tick.kill()
        tick.wait(10)
        assert 0 < failed() < 30000, "the tick was not killed in the middle of its drain"
        left_ms = client.pttl(RECONCILE_LOCK_KEY)
    finally:
        if tick.poll() is None:
            tick.kill()
            tick.wait(10)
    # The dead holder's lock outlives it by one interval at most (the old TTL was the
    # tick's hard limit plus 30 s: 94 s here).
    assert 0 < left_ms <= 4000
    monkeypatch.setenv("RUNWARDEN_DATABASE_URL", pg_url)
    monkeypatch.setenv("RUNWARDEN_POLICY_FILE", str(policy_file))
    get_settings.cache_clear()
    from worker.tasks import reconcile_scheduled

    assert reconcile_scheduled() == {"skipped_reason": "locked"}
    while client.pttl(RECONCILE_LOCK_KEY) > 0:
        time.sleep(0.05)
    # The next tick takes over and goes on draining.
    result = reconcile_scheduled()
    assert result["reconciled"] > 0
    engine.dispose()
