"""The reconciliation tick's Redis lock, on the suite's real Redis."""

from __future__ import annotations

import uuid

import pytest

from tests.servers import RedisServer
from worker.locks import RedisLock, redis_client

pytestmark = [pytest.mark.redis]


def test_lock__second_holder_refused_until_released(redis_server: RedisServer) -> None:
    client = redis_client(f"{redis_server.url}/14")
    key = f"test:lock:{uuid.uuid4()}"
    first, second = RedisLock(client, key, ttl_seconds=30), RedisLock(client, key, ttl_seconds=30)

    assert first.acquire()
    assert not second.acquire()
    assert 0 < client.pttl(key) <= 30_000
    assert first.release()
    assert second.acquire()
    assert second.release()


def test_lock__expired_holder_cannot_release_the_next_holders_lock(
    redis_server: RedisServer,
) -> None:
    client = redis_client(f"{redis_server.url}/14")
    key = f"test:lock:{uuid.uuid4()}"
    slow, next_tick = RedisLock(client, key, ttl_seconds=30), RedisLock(client, key, ttl_seconds=30)
    assert slow.acquire()
    client.delete(key)  # the slow tick's lock expired
    assert next_tick.acquire()

    assert slow.release() is False

    assert client.get(key) is not None
    assert next_tick.release()
