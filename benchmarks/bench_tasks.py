"""Tasks the bridge and latency benchmarks run in a real worker (``-I benchmarks.bench_tasks``).

Both kinds have the same 5 ms body and record when it ended in Redis (one RPUSH), so the
two sides of the bridge benchmark differ only by what runwarden adds around the body.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import redis

from worker.celery_app import app
from worker.tasks import RunContext, operation

BODY_SECONDS = 0.005
OPERATION_TYPE = "bench.op"
PLAIN_TASK = "bench.plain"


@functools.cache
def _client(pid: int) -> redis.Redis:
    # Keyed by pid: one connection per pool process, never one inherited through fork.
    return redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])


def _record_end(batch: str) -> None:
    _client(os.getpid()).rpush(batch, repr(time.time()))


@app.task(name=PLAIN_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
def plain(batch: str) -> None:
    time.sleep(BODY_SECONDS)
    _record_end(batch)


@operation(OPERATION_TYPE)
def tracked(run: RunContext, batch: str, **_: Any) -> None:
    time.sleep(BODY_SECONDS)
    _record_end(batch)


HOLD_TYPE = "bench.hold"


@operation(HOLD_TYPE)
def hold(run: RunContext, seconds: float = 120, **_: Any) -> None:
    """A long body that never heartbeats: only the worker's own heartbeat says it is alive."""
    time.sleep(seconds)
