"""The chaos workload's operations, run by real prefork workers (``-I chaos.operations``).

Every body writes its own journal -- the ground truth the checker trusts: one JSON line
when it starts and one when it ends (what it returned or raised), each flushed and
fsynced before the body goes on, so a line on disk happened. A body killed in between
(a pool child or its whole worker SIGKILLed, a hard time limit, a revoke) leaves a start
without an end. What a body does is named by its run's ``fate`` input.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from worker.tasks import OperationResult, RunContext, operation

JOURNAL_ENV = "RUNWARDEN_CHAOS_JOURNAL"
#: Written into the failing bodies' errors: the checker looks for it everywhere else.
SECRET_ENV = "RUNWARDEN_CHAOS_SECRET"
#: The hard time limit of chaos.time_limit, and how long its body would sleep.
TIME_LIMIT_SECONDS = 2
HEARTBEAT_EVERY_SECONDS = 0.5

_lock = threading.Lock()


class ChaosError(RuntimeError):
    """What the failing bodies raise."""


def journal(run: RunContext, event: str, **details: Any) -> None:
    line = json.dumps(
        {
            "run": run.id,
            "attempt": run.attempt,
            "task_id": run.celery_task_id,
            "pid": os.getpid(),
            "event": event,
            "t": time.time(),
            **details,
        }
    )
    with _lock:
        fd = os.open(os.environ[JOURNAL_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)


def _wait(seconds: float) -> None:
    # An Event's timed wait: interruptible, and safe under a shifted clock.
    threading.Event().wait(seconds)


def _work(run: RunContext, seconds: float, *, heartbeats: bool) -> bool:
    """Work ``seconds``; with heartbeats, stop as soon as one says the run is not ours."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        _wait(min(left, HEARTBEAT_EVERY_SECONDS))
        if heartbeats and not run.heartbeat():
            return False
    return True


def _succeed(run: RunContext, seconds: float, *, heartbeats: bool = False) -> OperationResult:
    journal(run, "start")
    if not _work(run, seconds, heartbeats=heartbeats):
        # Not this delivery's any more: stop, and say so; the result is not recorded.
        journal(run, "end", returned="succeeded", fenced=True)
        return OperationResult(outcome="succeeded")
    journal(run, "end", returned="succeeded")
    return OperationResult(outcome="succeeded", summary_counts={"attempt": run.attempt})


def _seconds(inputs: dict[str, Any], default: float) -> float:
    return float(inputs.get("seconds", default))


@operation("chaos.quick")
def quick(run: RunContext, **inputs: Any) -> OperationResult:
    """Succeeds after a short piece of work (also the revoked, expired, duplicated and
    tenant-deactivated fates: what happens to them is done to their messages)."""
    return _succeed(run, _seconds(inputs, 0.2))


@operation("chaos.fail")
def fail(run: RunContext, **inputs: Any) -> None:
    journal(run, "start")
    _wait(_seconds(inputs, 0.1))
    secret = os.environ.get(SECRET_ENV, "")
    journal(run, "end", raised="ChaosError")
    raise ChaosError(
        f"upstream refused: postgresql://app:{secret}@db.internal/inventory "
        f"token={secret} Authorization: Bearer {secret}"
    )


@operation("chaos.retry")
def retry_then_succeed(run: RunContext, **inputs: Any) -> OperationResult:
    if run.attempt == 1:
        journal(run, "start")
        journal(run, "end", raised="Retry")
        run.retry(exc=ChaosError("first attempt always fails"), countdown=1)
    return _succeed(run, _seconds(inputs, 0.2))


@operation("chaos.time_limit", time_limit=TIME_LIMIT_SECONDS)
def past_time_limit(run: RunContext, **inputs: Any) -> None:
    journal(run, "start")
    _wait(TIME_LIMIT_SECONDS * 15)
    journal(run, "end", returned="succeeded")


@operation("chaos.heartbeat")
def long_with_heartbeats(run: RunContext, **inputs: Any) -> OperationResult:
    """Longer than its type's running window: only its heartbeats keep it alive."""
    return _succeed(run, _seconds(inputs, 5.0), heartbeats=True)


@operation("chaos.quiet")
def long_without_heartbeats(run: RunContext, **inputs: Any) -> OperationResult:
    """Longer than lost_after_seconds without one heartbeat: only its worker's own
    heartbeat says it is alive."""
    return _succeed(run, _seconds(inputs, 6.0))


@operation("chaos.revoke")
def revoked_while_running(run: RunContext, **inputs: Any) -> OperationResult:
    """Long enough for the harness to revoke it with terminate while it runs."""
    return _succeed(run, _seconds(inputs, 6.0), heartbeats=True)


@operation("chaos.recover")
def recoverable(run: RunContext, **inputs: Any) -> OperationResult:
    """An idempotent operation of a ``recovery = "retry"`` type."""
    return _succeed(run, _seconds(inputs, 1.5), heartbeats=True)
