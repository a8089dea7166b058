"""The reconciler's publisher (worker/publishing.py) on a real Redis of its own: a claim
goes out as Celery messages, routed as Celery routes them, and a broker that refuses part
way through gets back exactly the messages it did not take."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery, signals

from tests.servers import RedisServer
from worker.lifecycle.recovery import Publication
from worker.publishing import OPERATION_PRIORITY, publish_requeued

pytestmark = [pytest.mark.redis]

ROUTED = "test.routed"


@pytest.fixture
def broker() -> Iterator[RedisServer]:
    # Its own server: the test makes it refuse writes.
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def app(broker: RedisServer) -> Celery:
    app = Celery("test-publishing", broker=f"{broker.url}/0", set_as_current=False)
    app.conf.task_routes = {f"operations.{ROUTED}": {"queue": "victims"}}
    return app


def _publications(n: int, type_name: str = "test.plain") -> list[Publication]:
    return [Publication(i, type_name, str(uuid.uuid4()), retries=i % 3) for i in range(1, n + 1)]


def _raw(broker: RedisServer, queue: str) -> list[bytes]:
    """``queue``'s messages, oldest first: kombu keeps one Redis list per priority step,
    ``queue`` itself for 0 and ``queue\\x06\\x16<step>`` for the others (operations: 3)."""
    client = redis.Redis.from_url(f"{broker.url}/0")
    keys = [queue, *(f"{queue}\x06\x16{step}" for step in (3, 6, 9))]
    return [raw for key in keys for raw in reversed(client.lrange(key, 0, -1))]  # LPUSH


def _messages(broker: RedisServer, queue: str) -> list[dict[str, Any]]:
    """Each message on ``queue``, oldest first, as a worker reads it."""
    found = []
    for raw in _raw(broker, queue):
        envelope = json.loads(raw)
        args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
        headers = envelope["headers"]
        found.append(
            {
                "task": headers["task"],
                "id": headers["id"],
                "retries": headers["retries"],
                "args": args,
                "kwargs": kwargs,
                "correlation_id": envelope["properties"]["correlation_id"],
                "priority": envelope["properties"]["priority"],
            }
        )
    return found


def _expected(publications: list[Publication]) -> list[dict[str, Any]]:
    return [
        {
            "task": f"operations.{p.type}",
            "id": p.celery_task_id,
            "retries": p.retries,
            "args": [],
            "kwargs": {"operation_run_id": p.run_id},
            "correlation_id": p.celery_task_id,
            "priority": OPERATION_PRIORITY,
        }
        for p in publications
    ]


def test_publish__a_claim_goes_out_as_celery_messages_routed_by_type(
    app: Celery, broker: RedisServer
) -> None:
    plain, routed = _publications(3), _publications(2, ROUTED)
    claim = [plain[0], routed[0], plain[1], routed[1], plain[2]]

    assert publish_requeued(claim, app=app, chunk=2) == []

    assert _messages(broker, "celery") == _expected(plain)
    assert _messages(broker, "victims") == _expected(routed)


def _envelopes(broker: RedisServer, queue: str) -> list[dict[str, Any]]:
    found = []
    for raw in _raw(broker, queue):
        envelope = json.loads(raw)
        envelope["properties"].pop("delivery_tag")  # a fresh uuid per message
        found.append(envelope)
    return found


def test_publish__each_message_is_the_one_send_task_writes_at_the_operations_priority(
    app: Celery, broker: RedisServer
) -> None:
    # A type whose operation is registered here with options of its own, as in a worker.
    @app.task(name="operations.test.declared", time_limit=30, soft_time_limit=20, shared=False)
    def declared(**_: Any) -> None:  # pragma: no cover - never run
        pass

    app.conf.task_routes = {
        **app.conf.task_routes,
        "operations.test.declared": {"queue": "declared"},
    }

    claim = [*_publications(2), *_publications(2, ROUTED), *_publications(2, "test.declared")]
    assert publish_requeued(claim, app=app) == []
    ours = {q: _envelopes(broker, q) for q in ("celery", "victims", "declared")}
    redis.Redis.from_url(f"{broker.url}/0").flushdb()

    for p in claim:
        app.send_task(
            f"operations.{p.type}",
            kwargs={"operation_run_id": p.run_id},
            task_id=p.celery_task_id,
            retries=p.retries,
            ignore_result=True,
            priority=OPERATION_PRIORITY,
        )
    theirs = {q: _envelopes(broker, q) for q in ("celery", "victims", "declared")}

    assert [len(ours[q]) for q in ours] == [2, 2, 2]
    assert ours == theirs
    assert ours["declared"][0]["headers"]["timelimit"] == [30, 20]


def test_publish__broker_refusing_part_way__returns_exactly_the_messages_it_did_not_take(
    app: Celery, broker: RedisServer
) -> None:
    claim = _publications(5)
    admin = redis.Redis.from_url(f"{broker.url}/0")
    buffered: list[str] = []

    def full_from_the_third(headers: dict[str, Any], **_: Any) -> None:
        # The broker fills up while the second chunk (the third message on) is buffered.
        buffered.append(headers["id"])
        if len(buffered) == 3:
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", 1)

    signals.before_task_publish.connect(full_from_the_third, weak=False)
    try:
        failures = publish_requeued(claim, app=app, chunk=2)
    finally:
        signals.before_task_publish.disconnect(full_from_the_third)
        admin.config_set("maxmemory", 0)

    # The first chunk was written; the second's write was refused; the third never tried.
    assert [f.publication for f in failures] == claim[2:]
    assert {type(f.error.__cause__).__name__ for f in failures} == {"OutOfMemoryError"}
    assert _messages(broker, "celery") == _expected(claim[:2])

    # Given back and published again, each message is on the broker once.
    assert publish_requeued([f.publication for f in failures], app=app, chunk=2) == []
    assert _messages(broker, "celery") == _expected(claim)


def test_publish__broker_down__every_message_returned_unsent() -> None:
    down = Celery("test-down", broker="redis://127.0.0.1:1/0", set_as_current=False)
    down.conf.task_publish_retry_policy = {"max_retries": 0}
    claim = _publications(3)

    failures = publish_requeued(claim, app=down)

    assert [f.publication for f in failures] == claim
    assert all("Connection refused" in str(f.error) for f in failures)
