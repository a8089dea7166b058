"""Recovery with real prefork workers (issue 11): a ``recovery = "retry"`` run whose whole
worker died, or whose message never reached the broker, is requeued and done by another
worker -- never overlapping the attempt it replaces, whose late writes are refused.

Each test starts the workers it needs: ``victim`` workers consume only the ``victims``
queue, where this module routes its runs; a ``beat`` worker runs the reconcile ticks.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests.acceptance.cli import run_cli
from tests.factories import make_run, seed_tenancy
from tests.servers import RedisServer
from tests.worker.conftest import (
    BROKER_DB,
    LiveWorker,
    Spawn,
    wait_for,
    worker_cluster,
)
from worker.dispatch import start_operation
from worker.lifecycle.policy import parse_policy
from worker.lifecycle.reconciler import OperationLifecycleReconciler
from worker.publishing import publish_requeued
from worker.settings import get_settings

pytestmark = [pytest.mark.redis, pytest.mark.slow]

LOST_AFTER_S = 4
QUEUED_WINDOW_S = 3
POLICY = f"""
[reconciliation]
batch_limit = 100
interval_seconds = 1

[workers]
heartbeat_interval_seconds = 1
lost_after_seconds = {LOST_AFTER_S}

[types."test.recover"]
queued_stale_after_seconds = {QUEUED_WINDOW_S}
running_stale_after_seconds = 600
recovery = "retry"
max_attempts = 2
"""


@pytest.fixture(scope="module")
def worker_policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recovery-policy") / "policy.toml"
    path.write_text(POLICY)
    return path


ROUTES = {"operations.test.recover": {"queue": "victims"}}


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
        routes=ROUTES,
        prefix="rw-recovery-",
    ) as spawn:
        yield spawn
    get_settings.cache_clear()


def _journal(worker: LiveWorker, run_id: int) -> list[dict[str, Any]]:
    path = worker.executions_dir / f"{run_id}.journal"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _events(worker: LiveWorker, run_id: int) -> list[tuple[str, int]]:
    return [(e["event"], e["attempt"]) for e in _journal(worker, run_id)]


def _run(worker: LiveWorker, seconds_by_attempt: dict[str, float]) -> int:
    tenancy = seed_tenancy(worker.engine)
    return start_operation(
        "test.recover",
        workspace_id=tenancy["workspace_id"],
        inputs={"seconds_by_attempt": seconds_by_attempt},
    )


def _started(worker: LiveWorker, run_id: int, attempt: int) -> None:
    wait_for(
        lambda: ("start", attempt) in _events(worker, run_id),
        what=f"run {run_id} attempt {attempt} started",
    )


def test_recovery__worker_killed_in_attempt_1__attempt_2_on_another_worker_succeeds(
    cluster: Spawn,
) -> None:
    cluster("beat", beat=True)
    first = cluster("victim")
    run_id = _run(first, {"1": 120})
    _started(first, run_id, 1)
    old_task_id = first.run(run_id).celery_task_id
    first.kill()
    second = cluster("victim")

    run = second.wait_terminal(run_id, timeout=LOST_AFTER_S + 40)
    assert (run.status, run.outcome, run.attempts) == ("completed", "succeeded", 2)
    assert run.summary_counts == {"attempt": 2}
    assert run.celery_task_id != old_task_id
    # Attempt 1 started and never ended; attempt 2 started after it, and ended.
    assert _events(second, run_id) == [("start", 1), ("start", 2), ("end", 2)]
    one, two, _ = _journal(second, run_id)
    assert two["pid"] != one["pid"] and two["t"] > one["t"]
    assert second.process is not None and run.worker_id is not None
    [requeued] = second.audit_rows(run_id)
    assert requeued.action == "operation_run.requeued"
    assert requeued.metadata_["reason_code"] == "run.worker_lost"
    evidence = requeued.metadata_["evidence"]
    assert (evidence["attempt"], evidence["max_attempts"]) == (1, 2)
    assert evidence["worker"]["nodename"].startswith(f"rwtest-{first.backend}-victim-")


def test_recovery__both_attempts_killed__failed_worker_lost_with_attempts_2(
    cluster: Spawn,
) -> None:
    cluster("beat", beat=True)
    first = cluster("victim")
    run_id = _run(first, {"1": 120, "2": 120})
    _started(first, run_id, 1)
    first.kill()
    second = cluster("victim")
    _started(second, run_id, 2)
    second.kill()

    run = first.wait_terminal(run_id, timeout=LOST_AFTER_S + 40)
    assert (run.status, run.outcome, run.attempts) == ("completed", "failed", 2)
    record = run.context["reconciliation"]
    assert record["reason_code"] == "run.worker_lost"
    assert (record["evidence"]["attempts"], record["evidence"]["max_attempts"]) == (2, 2)
    assert [a.action for a in first.audit_rows(run_id)] == [
        "operation_run.requeued",
        "operation_run.force_failed",
    ]
    assert _events(first, run_id) == [("start", 1), ("start", 2)]


def _unpublished_run(worker: LiveWorker) -> int:
    """A queued run whose message never reached the broker: the row, and nothing else."""
    tenancy = seed_tenancy(worker.engine)
    return make_run(worker.engine, workspace_id=tenancy["workspace_id"], type="test.recover")


def test_recovery__message_never_published__republished_after_its_window_runs_once(
    cluster: Spawn,
) -> None:
    cluster("beat", beat=True)
    victim = cluster("victim")
    run_id = _unpublished_run(victim)

    run = victim.wait_terminal(run_id, timeout=QUEUED_WINDOW_S + 30)
    assert (run.status, run.outcome, run.attempts) == ("completed", "succeeded", 1)
    assert _events(victim, run_id) == [("start", 1), ("end", 1)]
    [requeued] = victim.audit_rows(run_id)
    assert requeued.metadata_["reason_code"] == "run.stale_queued"
    assert (requeued.metadata_["evidence"]["attempt"], run.unstarted_attempts) == (1, 1)


def test_recovery__broker_down_at_the_requeue__a_later_pass_publishes_it_once(
    cluster: Spawn,
) -> None:
    victim = cluster("victim")
    run_id = _unpublished_run(victim)
    wait_for(lambda: victim.run(run_id), what="the row")
    time.sleep(QUEUED_WINDOW_S + 0.5)
    # A reconciler whose broker is down: nothing listens on port 1.
    down = Celery("down", broker="redis://127.0.0.1:1/0")
    down.conf.broker_connection_timeout = 1
    policy = parse_policy(POLICY)
    reconciler = OperationLifecycleReconciler(
        policy, publisher=lambda claim: publish_requeued(claim, app=down)
    )
    result = reconciler.reconcile(victim.engine)
    assert (result.reconciled, result.requeued) == (1, 1)
    run = victim.run(run_id)
    assert (run.status, run.publish_pending) == ("queued", True)

    # The broker is back for the next reconciler: beat's first tick publishes it.
    cluster("beat", beat=True)
    run = victim.wait_terminal(run_id, timeout=30)
    assert (run.outcome, run.attempts) == ("succeeded", 1)
    assert run.publish_pending is False
    assert _events(victim, run_id) == [("start", 1), ("end", 1)]


def test_recovery__a_command_drain_publishes_the_requeue__a_worker_runs_it_once(
    cluster: Spawn, worker_policy_file: Path
) -> None:
    # `runwarden reconcile` knows no routes but the configured ones: the default queue.
    victim = cluster("victim", queues="celery")
    run_id = _unpublished_run(victim)
    wait_for(lambda: victim.run(run_id), what="the row")
    time.sleep(QUEUED_WINDOW_S + 0.5)

    result = run_cli(
        "reconcile",
        "--drain",
        "--json",
        env={
            "RUNWARDEN_DATABASE_URL": victim.db_url,
            "RUNWARDEN_BROKER_URL": victim.broker_url,
            "RUNWARDEN_POLICY_FILE": str(worker_policy_file),
        },
    )
    assert result.returncode == 0, result.stderr
    [change] = json.loads(result.stdout)["changes"]
    assert (change["operation_run_id"], change["action"]) == (run_id, "requeue")

    run = victim.wait_terminal(run_id, timeout=30)
    assert (run.outcome, run.attempts, run.publish_pending) == ("succeeded", 1, False)
    assert _events(victim, run_id) == [("start", 1), ("end", 1)]


def test_recovery__partitioned_old_attempt_finishes_late__its_completion_is_refused(
    cluster: Spawn,
) -> None:
    cluster("beat", beat=True)
    first = cluster("victim")
    run_id = _run(first, {"1": 2 * LOST_AFTER_S})
    _started(first, run_id, 1)
    assert first.process is not None
    # The old worker's heartbeats stop; its body is frozen mid-attempt.
    os.killpg(first.process.pid, signal.SIGSTOP)
    second = cluster("victim")
    run = second.wait_terminal(run_id, timeout=LOST_AFTER_S + 40)
    assert (run.outcome, run.attempts, run.summary_counts) == ("succeeded", 2, {"attempt": 2})

    os.killpg(first.process.pid, signal.SIGCONT)
    wait_for(lambda: ("end", 1) in _events(first, run_id), what="the old attempt to finish")
    first.wait_log("succeeded", timeout=30)
    time.sleep(1)  # its completion, refused, has been written by now
    run = second.run(run_id)
    assert (run.status, run.outcome, run.attempts) == ("completed", "succeeded", 2)
    assert run.summary_counts == {"attempt": 2}
    assert _events(second, run_id) == [("start", 1), ("start", 2), ("end", 2), ("end", 1)]
