"""A run waiting for its retry countdown is alive until the retry is due plus its window
(issue 9, item 9: ``run.retry(countdown=30)`` with a 20 s window was failed at +24 s)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine

from models import OperationRun, utcnow
from tests.factories import make_run, seed_tenancy
from worker.db import read_session, write_session
from worker.lifecycle.execution import record_retry, start_run
from worker.lifecycle.gate import QueuedExecutionLegitimacyGate
from worker.lifecycle.policy import LifecyclePolicy, TypePolicy
from worker.lifecycle.reconciler import OperationLifecycleReconciler

POLICY = LifecyclePolicy(
    types=(
        TypePolicy("inventory.sync", queued_stale_after_seconds=20, running_stale_after_seconds=20),
    ),
)


def test_retry_countdown__run_is_alive_until_its_retry_is_due_plus_its_window(
    engine: Engine,
) -> None:
    ids = seed_tenancy(engine)
    started = utcnow() - timedelta(minutes=5)
    run_id = make_run(engine, workspace_id=ids["workspace_id"], now=started)
    with read_session(engine) as session:
        run = session.get(OperationRun, run_id)
        assert run is not None
        task_id = str(run.celery_task_id)
    gate = QueuedExecutionLegitimacyGate(POLICY)
    with write_session(engine) as session:
        assert start_run(session, run_id, gate=gate, celery_task_id=task_id, retries=0, now=started)
        assert record_retry(
            session,
            run_id,
            attempt=1,
            celery_task_id=task_id,
            evidence={"exception_type": "TimeoutError"},
            retry_in_seconds=30,
            now=started + timedelta(seconds=1),
        )
    due = started + timedelta(seconds=31)

    for after, stale in ((25, False), (50, False), (52, True)):
        reconciler = OperationLifecycleReconciler(
            POLICY, now=lambda after=after: started + timedelta(seconds=after)
        )
        with read_session(engine) as session:
            loaded = session.get(OperationRun, run_id)
            assert loaded is not None
            assert (reconciler.assessment(session, loaded) is not None) is stale, after
        result = reconciler.reconcile(engine, {"dry_run": True})
        assert [c.operation_run_id for c in result.changes] == ([run_id] if stale else []), after

    (change,) = result.changes
    assert change.reason_code == "run.stale_running"
    # SQLite keeps the due time to the millisecond (its strftime's precision).
    reference = datetime.fromisoformat(change.evidence["reference_time"])
    assert abs(reference - due) < timedelta(milliseconds=1)
    assert change.evidence["threshold_seconds"] == 20
