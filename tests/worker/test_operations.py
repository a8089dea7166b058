"""Operation tasks in a real prefork worker: the guarded start and the failed-job bridge.

Every test runs on SQLite and on PostgreSQL (one worker per backend) and asserts what a
user would see: the run's status, outcome, reason, evidence and audit rows, and whether
the body ran at all.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import update

from models import Tenant, utcnow
from tests.factories import make_run, seed_tenancy
from tests.worker.conftest import LiveWorker, wait_for
from worker.db import write_session
from worker.dispatch import start_operation
from worker.lifecycle.policy import load_policy
from worker.lifecycle.reconciler import OperationLifecycleReconciler

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def _reason(run: object) -> str:
    summary = run.failure_summary  # type: ignore[attr-defined]
    assert len(summary) == 1, summary
    return str(summary[0]["reason_code"])


def test_operation__body_returns_result__run_succeeds_with_counts(live: LiveWorker) -> None:
    tenancy = seed_tenancy(live.engine)
    run_id = start_operation(
        "test.ok",
        workspace_id=tenancy["workspace_id"],
        tenant_id=tenancy["tenant_id"],
        user_id=tenancy["user_id"],
        inputs={"full": True},
    )

    run = live.wait_terminal(run_id)

    assert (run.status, run.outcome) == ("completed", "succeeded")
    assert run.summary_counts == {"items": 3}
    assert run.attempts == 1
    assert run.started_at is not None and run.last_heartbeat_at is not None
    assert run.failure_summary == []
    assert live.audit_rows(run_id) == []
    assert [e["inputs"] for e in live.executions(run_id)] == [{"full": True}]


def test_operation__raises_after_retries__job_failed_with_scrubbed_evidence(
    live: LiveWorker,
) -> None:
    tenancy = seed_tenancy(live.engine)
    run_id = start_operation("test.fail", workspace_id=tenancy["workspace_id"])

    run = live.wait_terminal(run_id)

    assert (run.status, run.outcome) == ("completed", "failed")
    assert _reason(run) == "run.job_failed"
    assert run.attempts == 2
    assert [e["attempt"] for e in live.executions(run_id)] == [1, 2]
    evidence = run.context["bridge"]["evidence"]
    assert evidence["exception_type"] == "TransientError"
    assert evidence["retries"] == 1
    assert evidence["task_name"] == "operations.test.fail"
    assert evidence["celery_task_id"] == run.celery_task_id
    assert evidence["hostname"] and evidence["pid"]
    assert "hunter2" not in evidence["exception_message"]
    assert "abc123secret" not in evidence["exception_message"]
    assert "db.internal" in evidence["exception_message"]
    assert evidence["last_retry"]["exception_type"] == "TransientError"
    # Which rules decided: the hash of the effective policy the worker ran with.
    assert evidence["policy_sha256"] == load_policy(live.policy_file).sha256
    [audit] = live.audit_rows(run_id)
    assert audit.action == "operation_run.force_failed"
    assert audit.metadata_["reason_code"] == "run.job_failed"
    # Celery logs the raw exception ("raised unexpected"); the filter scrubs it.
    live.wait_log(f"{run.celery_task_id}] raised unexpected")
    assert "hunter2" not in live.log()


def test_operation__retry_then_success__counts_attempts(live: LiveWorker) -> None:
    tenancy = seed_tenancy(live.engine)
    run_id = start_operation("test.flaky", workspace_id=tenancy["workspace_id"])

    run = live.wait_terminal(run_id)

    assert (run.status, run.outcome) == ("completed", "partially_succeeded")
    assert run.summary_counts == {"attempt": 2}
    assert run.attempts == 2
    assert [e["attempt"] for e in live.executions(run_id)] == [1, 2]
    assert live.audit_rows(run_id) == []


def test_operation__pool_child_sigkilled__worker_lost_within_seconds(live: LiveWorker) -> None:
    tenancy = seed_tenancy(live.engine)
    run_id = start_operation("test.crash", workspace_id=tenancy["workspace_id"])

    run = live.wait_terminal(run_id, timeout=20)

    assert (run.status, run.outcome) == ("completed", "failed")
    assert _reason(run) == "run.worker_lost"
    assert run.context["bridge"]["evidence"]["exception_type"] == "WorkerLostError"
    assert len(live.executions(run_id)) == 1
    assert [a.metadata_["reason_code"] for a in live.audit_rows(run_id)] == ["run.worker_lost"]


def test_operation__hard_time_limit__exactly_one_transition_and_audit_row(
    live: LiveWorker,
) -> None:
    tenancy = seed_tenancy(live.engine)
    run_id = start_operation("test.sleep", workspace_id=tenancy["workspace_id"])

    run = live.wait_terminal(run_id, timeout=30)
    # Celery 5.7 reports one hard time limit through task_failure twice; wait until the
    # bridge has seen both, then prove that only the first one wrote anything.
    log = live.wait_log(f"bridge task_failure: task {run.celery_task_id}", count=2)

    assert (run.status, run.outcome) == ("completed", "failed")
    assert _reason(run) == "run.time_limit_exceeded"
    assert run.context["bridge"]["evidence"]["exception_type"] == "TimeLimitExceeded"
    assert len(live.audit_rows(run_id)) == 1
    assert len(live.run(run_id).failure_summary) == 1
    assert log.count(f"task {run.celery_task_id} -> applied") == 1


def test_operation__revoked_with_terminate__cancelled(live: LiveWorker) -> None:
    from worker.celery_app import app

    tenancy = seed_tenancy(live.engine)
    run_id = start_operation("test.wait", workspace_id=tenancy["workspace_id"])
    run = live.wait_status(run_id, "running")
    wait_for(lambda: live.executions(run_id), what="the body to start")

    app.control.revoke(run.celery_task_id, terminate=True, signal="SIGTERM")

    run = live.wait_terminal(run_id, timeout=20)
    assert (run.status, run.outcome) == ("completed", "cancelled")
    assert _reason(run) == "run.cancelled"
    assert run.context["bridge"]["evidence"]["terminated"] is True
    [audit] = live.audit_rows(run_id)
    assert audit.action == "operation_run.cancelled"


def test_operation__message_expired__run_expired_and_body_never_ran(live: LiveWorker) -> None:
    from worker.celery_app import app

    tenancy = seed_tenancy(live.engine)
    task_id = str(uuid.uuid4())
    run_id = make_run(
        live.engine, workspace_id=tenancy["workspace_id"], type="test.ok", celery_task_id=task_id
    )

    app.send_task(
        "operations.test.ok",
        kwargs={"operation_run_id": run_id},
        task_id=task_id,
        expires=utcnow() - timedelta(seconds=5),
    )

    run = live.wait_terminal(run_id)
    assert (run.status, run.outcome) == ("completed", "failed")
    assert _reason(run) == "run.expired"
    assert live.executions(run_id) == []
    assert len(live.audit_rows(run_id)) == 1


def test_operation__no_task_registered__task_unknown(live: LiveWorker) -> None:
    tenancy = seed_tenancy(live.engine)
    run_id = start_operation("test.unregistered", workspace_id=tenancy["workspace_id"])

    run = live.wait_terminal(run_id)

    assert (run.status, run.outcome) == ("completed", "failed")
    assert _reason(run) == "run.task_unknown"
    assert run.context["bridge"]["evidence"]["task_name"] == "operations.test.unregistered"
    assert len(live.audit_rows(run_id)) == 1


def test_operation__reconciled_while_message_waited__body_never_runs(live: LiveWorker) -> None:
    from worker.celery_app import app

    tenancy = seed_tenancy(live.engine)
    task_id = str(uuid.uuid4())
    run_id = make_run(
        live.engine,
        workspace_id=tenancy["workspace_id"],
        type="test.stale",
        celery_task_id=task_id,
        age_seconds=120,
    )
    reconciler = OperationLifecycleReconciler(load_policy(live.policy_file))
    reconciler.reconcile(live.engine, {"types": ["test.stale"]})
    assert live.run(run_id).outcome == "failed"

    # The message the run was waiting for finally arrives.
    app.send_task("operations.test.stale", kwargs={"operation_run_id": run_id}, task_id=task_id)

    live.wait_log(f"operation run {run_id} not executed: already_terminal")
    run = live.run(run_id)
    assert (run.status, run.outcome) == ("completed", "failed")
    assert _reason(run) == "run.stale_queued"
    assert live.executions(run_id) == []
    assert len(live.audit_rows(run_id)) == 1


def test_operation__same_message_delivered_twice__body_runs_once(live: LiveWorker) -> None:
    from worker.celery_app import app

    tenancy = seed_tenancy(live.engine)
    run_id = start_operation("test.slow_ok", workspace_id=tenancy["workspace_id"])
    task_id = live.run(run_id).celery_task_id
    # A redelivery: the very same message (same task id, same kwargs) a second time.
    app.send_task("operations.test.slow_ok", kwargs={"operation_run_id": run_id}, task_id=task_id)

    run = live.wait_terminal(run_id)
    live.wait_log(f"operation run {run_id} not executed")

    assert (run.status, run.outcome) == ("completed", "succeeded")
    assert run.attempts == 1
    assert len(live.executions(run_id)) == 1
    assert live.audit_rows(run_id) == []


def test_operation__tenant_deactivated_before_start__blocked(live: LiveWorker) -> None:
    tenancy = seed_tenancy(live.engine)
    with write_session(live.engine) as session:
        session.execute(
            update(Tenant).where(Tenant.id == tenancy["tenant_id"]).values(is_active=False)
        )

    run_id = start_operation(
        "test.ok", workspace_id=tenancy["workspace_id"], tenant_id=tenancy["tenant_id"]
    )

    run = live.wait_terminal(run_id)
    assert (run.status, run.outcome) == ("completed", "blocked")
    assert _reason(run) == "execution.tenant_inactive"
    assert run.context["legitimacy"]["evidence"]["execution_legitimacy"]["allowed"] is False
    policy_sha256 = load_policy(live.policy_file).sha256
    assert run.context["legitimacy"]["evidence"]["policy_sha256"] == policy_sha256
    assert live.executions(run_id) == []
    [audit] = live.audit_rows(run_id)
    assert audit.action == "operation_run.blocked"


def test_operation__direct_failed_bridge_false__run_left_running(live: LiveWorker) -> None:
    tenancy = seed_tenancy(live.engine)
    run_id = start_operation("test.nobridge", workspace_id=tenancy["workspace_id"])
    task_id = live.run(run_id).celery_task_id

    live.wait_log(f"bridge task_failure: task {task_id} -> left_to_reconciler")

    run = live.run(run_id)
    assert (run.status, run.outcome) == ("running", "pending")
    assert len(live.executions(run_id)) == 1
    assert live.audit_rows(run_id) == []


def test_operation__waiting_for_a_retry_countdown_past_its_window__not_stale(
    live: LiveWorker,
) -> None:
    """Issue 9, item 9: a run whose retry is due after its running window was failed as
    run.stale_running while it waited, and its retry was then refused."""
    tenancy = seed_tenancy(live.engine)
    run_id = start_operation("test.retry_later", workspace_id=tenancy["workspace_id"])
    wait_for(
        lambda: "last_retry" in (live.run(run_id).context.get("bridge") or {}),
        what="the retry to be recorded",
    )
    time.sleep(2.5)  # past the 2 s window, well before the retry is due

    result = OperationLifecycleReconciler(load_policy(live.policy_file)).reconcile(live.engine)
    assert result.reconciled == 0
    assert live.run(run_id).status == "running"

    run = live.wait_terminal(run_id)
    assert (run.status, run.outcome, run.attempts) == ("completed", "succeeded", 2)
    assert [e["attempt"] for e in live.executions(run_id)] == [1, 2]
