"""Operation tasks the worker tests run in a real prefork worker (``-I tests.worker.operations``).

Each body appends one line to ``$RUNWARDEN_TEST_EXECUTIONS_DIR/<run id>`` before doing
anything else, so a test can prove that a body ran -- or never ran -- and how often.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from worker.tasks import OperationResult, RunContext, app, operation

# A module's routes for the worker's own app too: a requeued run's message is published by
# the worker that runs the reconcile tick, routed by that worker's app as start_operation's
# message is by the test process's.
if os.environ.get("RWTEST_TASK_ROUTES"):
    app.conf.task_routes = json.loads(os.environ["RWTEST_TASK_ROUTES"])


class TransientError(RuntimeError):
    pass


def record_execution(run: RunContext, inputs: dict[str, Any]) -> None:
    directory = Path(os.environ["RUNWARDEN_TEST_EXECUTIONS_DIR"])
    line = json.dumps({"attempt": run.attempt, "pid": os.getpid(), "inputs": inputs})
    with (directory / str(run.id)).open("a") as handle:
        handle.write(line + "\n")


@operation("test.ok")
def ok(run: RunContext, **inputs: Any) -> OperationResult:
    record_execution(run, inputs)
    run.heartbeat()
    return OperationResult(outcome="succeeded", summary_counts={"items": 3})


@operation("test.slow_ok")
def slow_ok(run: RunContext, **inputs: Any) -> None:
    record_execution(run, inputs)
    time.sleep(1.5)


@operation("test.stale")
def stale(run: RunContext, **inputs: Any) -> None:
    record_execution(run, inputs)


@operation("test.fail", autoretry_for=(TransientError,), max_retries=1, default_retry_delay=0.5)
def fail(run: RunContext, **inputs: Any) -> None:
    record_execution(run, inputs)
    raise TransientError(
        "cannot reach postgresql://app:hunter2@db.internal/inventory (token=abc123secret)"
    )


@operation("test.flaky")
def flaky(run: RunContext, **inputs: Any) -> OperationResult:
    record_execution(run, inputs)
    if run.attempt == 1:
        run.retry(exc=TransientError("first attempt always fails"), countdown=0.3)
    return OperationResult(outcome="partially_succeeded", summary_counts={"attempt": run.attempt})


@operation("test.sleep", time_limit=2)
def sleep_past_limit(run: RunContext, **inputs: Any) -> None:
    record_execution(run, inputs)
    time.sleep(30)


@operation("test.wait")
def wait(run: RunContext, **inputs: Any) -> None:
    record_execution(run, inputs)
    for _ in range(300):
        time.sleep(0.1)


@operation("test.crash")
def crash(run: RunContext, **inputs: Any) -> None:
    record_execution(run, inputs)
    os.kill(os.getpid(), signal.SIGKILL)


@operation("test.nobridge")
def nobridge(run: RunContext, **inputs: Any) -> None:
    record_execution(run, inputs)
    raise ValueError("left to the reconciler")


#: How long a held body runs: long enough for a duplicate delivery to arrive, hit a
#: database fault in its start and get over it while this one is still running.
HOLD_SECONDS = 4.0


@operation("test.hold")
def hold(run: RunContext, **inputs: Any) -> OperationResult:
    record_execution(run, inputs)
    time.sleep(HOLD_SECONDS)
    return OperationResult(outcome="succeeded", summary_counts={"attempt": run.attempt})


@operation("test.hold_retrying", autoretry_for=(Exception,), max_retries=3, default_retry_delay=0.2)
def hold_retrying(run: RunContext, **inputs: Any) -> OperationResult:
    record_execution(run, inputs)
    time.sleep(HOLD_SECONDS)
    return OperationResult(outcome="succeeded", summary_counts={"attempt": run.attempt})


#: Longer than test.retry_later's 2 s running window.
RETRY_COUNTDOWN_SECONDS = 6


@operation("test.retry_later")
def retry_later(run: RunContext, **inputs: Any) -> OperationResult:
    record_execution(run, inputs)
    if run.attempt == 1:
        run.retry(exc=TransientError("upstream busy"), countdown=RETRY_COUNTDOWN_SECONDS)
    return OperationResult(outcome="succeeded", summary_counts={"attempt": run.attempt})


@operation("test.quiet")
def quiet(run: RunContext, **inputs: Any) -> OperationResult:
    """Works for ``seconds`` without a single heartbeat, then succeeds: only the worker's
    own heartbeat says it is alive."""
    record_execution(run, inputs)
    # An Event's timed wait, not time.sleep: under libfaketime (the skewed-clock test)
    # time.sleep's clock_nanosleep fails with EINVAL.
    threading.Event().wait(float(inputs.get("seconds", 1)))
    return OperationResult(outcome="succeeded")


def journal(run: RunContext, event: str) -> None:
    """The body's own journal: when each attempt started and ended, by whom."""
    directory = Path(os.environ["RUNWARDEN_TEST_EXECUTIONS_DIR"])
    line = json.dumps(
        {"event": event, "attempt": run.attempt, "pid": os.getpid(), "t": time.time()}
    )
    with (directory / f"{run.id}.journal").open("a") as handle:
        handle.write(line + "\n")


@operation("test.recover")
def recover(run: RunContext, **inputs: Any) -> OperationResult:
    """An idempotent operation of a ``recovery = "retry"`` type: works
    ``seconds_by_attempt[attempt]`` seconds (default 0.2), journalling its start and end."""
    journal(run, "start")
    seconds = dict(inputs.get("seconds_by_attempt") or {}).get(str(run.attempt), 0.2)
    threading.Event().wait(float(seconds))
    journal(run, "end")
    return OperationResult(outcome="succeeded", summary_counts={"attempt": run.attempt})


@operation("test.await_go")
def await_go(run: RunContext, **inputs: Any) -> OperationResult:
    """Heartbeats every 0.2 s until the test drops ``<run id>.go`` beside the journal, then
    succeeds: a body that lives through what the test does to the database meanwhile."""
    journal(run, "start")
    go = Path(os.environ["RUNWARDEN_TEST_EXECUTIONS_DIR"]) / f"{run.id}.go"
    while not go.exists():
        threading.Event().wait(0.2)
        if not run.heartbeat():
            journal(run, "fenced")
            return OperationResult(outcome="succeeded")
    journal(run, "end")
    return OperationResult(outcome="succeeded", summary_counts={"attempt": run.attempt})
