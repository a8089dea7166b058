"""The beat tick's lock lives on the Celery app's broker: an application that configures
``app.conf.broker_url`` itself (as ``worker/celery_app.py`` invites) gets working ticks, not
ticks that look for runwarden's settings' broker (issue 9, item 12)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from tests.servers import RedisServer
from tests.worker.conftest import point_app_at
from worker.locks import RECONCILE_LOCK_KEY, RedisLock, redis_client

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
