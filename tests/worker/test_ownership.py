"""One delivery owns a run: a duplicate, a hand-made message or a malformed one never runs
the body, never counts as a retry and never changes the run -- even when its start hits a
database fault (SQLite locked past a short busy timeout; a PostgreSQL row lock past a short
lock_timeout).

This module's worker runs with those short timeouts, so a lock held by the test for a
second is a real fault for the worker: "database is locked" / "canceling statement due to
lock timeout".
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.factories import make_run, seed_tenancy
from tests.worker.conftest import LiveWorker, wait_for
from worker.dispatch import start_operation

pytestmark = [pytest.mark.redis, pytest.mark.slow]

#: The worker's busy timeout (SQLite) and lock timeout (PostgreSQL) in this module.
WORKER_TIMEOUT = "0.3"
#: How long the test keeps its lock once the duplicate was received: past the worker's
#: timeout (so its start fails), short of its first retry.
LOCK_AFTER_RECEIPT_SECONDS = 0.45


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture(scope="module")
def worker_extra_env(worker_backend: str, worker_db_url: str) -> dict[str, str]:
    if worker_backend == "postgresql":
        # Every new connection to this module's database waits at most 0.3 s for a lock.
        name = worker_db_url.rsplit("/", 1)[1]
        with psycopg.connect(_plain(worker_db_url), autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {name} SET lock_timeout = '300ms'")
        return {}
    return {"RUNWARDEN_SQLITE_BUSY_TIMEOUT_SECONDS": WORKER_TIMEOUT}


@contextlib.contextmanager
def _lock_run(live: LiveWorker, run_id: int) -> Iterator[None]:
    """Hold a write lock the worker's start of ``run_id`` has to wait for."""
    if live.backend == "sqlite":
        conn = sqlite3.connect(live.db_url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("ROLLBACK")
        finally:
            conn.close()
        return
    with psycopg.connect(_plain(live.db_url)) as pg:
        pg.execute("SELECT id FROM operation_runs WHERE id = %s FOR UPDATE", (run_id,))
        yield
        pg.rollback()


def _send(name: str, *, task_id: str, **kwargs: object) -> None:
    from worker.celery_app import app

    app.send_task(name, kwargs=kwargs, task_id=task_id)


def _body_running(live: LiveWorker, run_id: int) -> None:
    wait_for(lambda: live.executions(run_id), what=f"the body of run {run_id} to start")


def _done(live: LiveWorker, task_id: str, *, deliveries: int = 1) -> None:
    """Wait until the worker has finished with ``deliveries`` deliveries of ``task_id``,
    whatever became of them."""
    pattern = re.compile(rf"\[{re.escape(task_id)}\] (succeeded|ignored|raised|retry|rejected)")
    wait_for(
        lambda: len(pattern.findall(live.log())) >= deliveries,
        what=f"{deliveries} deliveries of {task_id} to finish",
    )


@pytest.mark.parametrize("type_", ["test.hold", "test.hold_retrying"])
def test_duplicate_delivery__start_hits_a_database_fault__body_runs_once_and_run_succeeds(
    live: LiveWorker, type_: str
) -> None:
    """Issue 9, items 1 (with autoretry: the start error became a retry that ran the body a
    second time) and 2 (without: the start error failed the healthy run as run.job_failed)."""
    tenancy = seed_tenancy(live.engine)
    run_id = start_operation(type_, workspace_id=tenancy["workspace_id"])
    _body_running(live, run_id)
    task_id = str(live.run(run_id).celery_task_id)

    with _lock_run(live, run_id):
        # A redelivery of the very same message arrives while its body runs, and its
        # start waits for the lock until the worker's timeout.
        _send(f"operations.{type_}", task_id=task_id, operation_run_id=run_id)
        live.wait_log(f"[{task_id}] received", count=2)
        time.sleep(LOCK_AFTER_RECEIPT_SECONDS)

    live.wait_terminal(run_id, timeout=60)
    time.sleep(1.5)  # a retry the fault might have scheduled comes after one second
    run = live.run(run_id)
    assert (run.status, run.outcome) == ("completed", "succeeded")
    assert run.attempts == 1
    assert run.summary_counts == {"attempt": 1}
    assert [e["attempt"] for e in live.executions(run_id)] == [1]
    assert live.audit_rows(run_id) == []


def test_message_under_another_task_id__body_never_runs_and_run_unchanged(
    live: LiveWorker,
) -> None:
    """Issue 9, item 3: a hand-made message for run N with a new task id ran its body."""
    tenancy = seed_tenancy(live.engine)
    run_id = make_run(live.engine, workspace_id=tenancy["workspace_id"], type="test.ok")
    foreign = str(uuid.uuid4())
    _send("operations.test.ok", task_id=foreign, operation_run_id=run_id)

    _done(live, foreign)
    assert f"operation run {run_id} not executed: not_owner" in live.log()
    run = live.run(run_id)
    assert (run.status, run.outcome, run.attempts) == ("queued", "pending", 0)
    assert live.executions(run_id) == []
    assert live.audit_rows(run_id) == []


@pytest.mark.parametrize(
    "bad_id",
    [0.7, "0", True, -1, 0, 2**63, None],
    ids=["float", "string", "bool", "negative", "zero", "past bigint", "missing"],
)
def test_message_with_a_run_id_that_is_not_a_positive_integer__refused_before_reading(
    live: LiveWorker, bad_id: object
) -> None:
    """Issue 9, item 3: ``operation_run_id=2.7`` was truncated to 2 and ran run 2."""
    tenancy = seed_tenancy(live.engine)
    run_id = make_run(live.engine, workspace_id=tenancy["workspace_id"], type="test.ok")
    task_id = str(live.run(run_id).celery_task_id)
    value = run_id + bad_id if isinstance(bad_id, float) else bad_id
    kwargs = {} if value is None else {"operation_run_id": value}
    _send("operations.test.ok", task_id=task_id, **kwargs)

    _done(live, task_id)
    assert f"operation run {value!r} not executed: invalid_run_id" in live.log()
    # The run the malformed id would have been truncated to is untouched.
    run = live.run(run_id)
    assert (run.status, run.attempts) == ("queued", 0)
    assert live.executions(run_id) == []
