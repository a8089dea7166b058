"""Several reconciler processes draining one PostgreSQL table while tasks finish on their
own: every run ends with exactly one terminal transition."""

from __future__ import annotations

import multiprocessing
import random
from typing import Any

import pytest
from sqlalchemy import func, select, text

from models import AuditLog, OperationRun, RunOutcome, utcnow
from tests.factories import make_worker, seed_tenancy
from worker.db import build_engine, read_session, statement_session, write_session
from worker.lifecycle import execution, transitions
from worker.lifecycle.policy import LifecyclePolicy, TypePolicy, WorkerPolicy
from worker.lifecycle.reconciler import OperationLifecycleReconciler
from worker.lifecycle.sql import statement

RUNS = 3000
RECONCILERS = 3
COMPLETIONS = 900
POLICY = LifecyclePolicy(
    types=(
        TypePolicy("inventory.sync", queued_stale_after_seconds=60, running_stale_after_seconds=60),
    )
)

pytestmark = pytest.mark.postgres


def _reconciler_process(url: str, start: Any, results: Any) -> None:
    engine = build_engine(url)
    try:
        start.wait(60)
        drained = OperationLifecycleReconciler(POLICY).drain(engine, {"limit": 50})
        results.put(("reconciler", [c.operation_run_id for c in drained.changes if c.applied]))
    finally:
        engine.dispose()


def _completer_process(url: str, run_ids: list[int], start: Any, results: Any) -> None:
    # Plays the tasks that finish on their own while the reconcilers run. It starts first
    # and lets the reconcilers go once it is under way, so the two really overlap.
    engine = build_engine(url)
    won: list[int] = []
    try:
        for offset in range(0, len(run_ids), 10):
            with write_session(engine) as session:
                for run_id in run_ids[offset : offset + 10]:
                    if transitions.complete(
                        session,
                        run_id,
                        outcome=RunOutcome.SUCCEEDED,
                        attempt=1,
                        celery_task_id=f"task-{run_id}",
                        now=utcnow(),
                    ):
                        won.append(run_id)
            if offset == 300:
                start.set()  # the reconcilers join while most completions are still to come
        results.put(("completer", won))
    finally:
        engine.dispose()


def test_reconcile__concurrent_reconcilers_and_completions_give_one_transition_per_run(
    pg_url: str,
) -> None:
    engine = build_engine(pg_url)
    ids = seed_tenancy(engine)
    with write_session(engine) as session:
        session.execute(
            text(
                "INSERT INTO operation_runs (workspace_id, tenant_id, user_id, type, status,"
                " outcome, attempts, context, summary_counts, failure_summary, created_at,"
                " updated_at, started_at)"
                " SELECT :ws, :tenant, :user, 'inventory.sync', 'running', 'pending', 1, '{}',"
                " '{}', '[]', now() - interval '2 hours', now() - interval '2 hours',"
                " now() - interval '2 hours' FROM generate_series(1, :n)"
            ),
            {
                "ws": ids["workspace_id"],
                "tenant": ids["tenant_id"],
                "user": ids["user_id"],
                "n": RUNS,
            },
        )
        # Each run carries its message's task id, as dispatch writes it.
        session.execute(text("UPDATE operation_runs SET celery_task_id = 'task-' || id"))
    with read_session(engine) as session:
        run_ids = list(session.scalars(select(OperationRun.id).order_by(OperationRun.id)))
    to_complete = random.Random(7).sample(run_ids, COMPLETIONS)

    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    results: Any = ctx.Queue()
    processes = [
        ctx.Process(target=_reconciler_process, args=(pg_url, start, results))
        for _ in range(RECONCILERS)
    ]
    processes.append(
        ctx.Process(target=_completer_process, args=(pg_url, to_complete, start, results))
    )
    for process in processes:
        process.start()
    reported = [results.get(timeout=90) for _ in processes]
    for process in processes:
        process.join(30)
        assert process.exitcode == 0

    failed_by = [ids for role, ids in reported if role == "reconciler"]
    (completed,) = [ids for role, ids in reported if role == "completer"]
    failed = [run_id for ids in failed_by for run_id in ids]
    # Every run has exactly one winner: a reconciler or its own completion, never both.
    assert len(failed) == len(set(failed))
    assert not set(failed) & set(completed)
    assert sorted(failed + completed) == run_ids
    assert len(failed_by) == RECONCILERS
    assert failed and completed  # both sides really raced

    with read_session(engine) as session:
        rows = {
            row.id: row
            for row in session.execute(
                select(
                    OperationRun.id,
                    OperationRun.status,
                    OperationRun.outcome,
                    OperationRun.context,
                    OperationRun.failure_summary,
                )
            )
        }
        audits = dict(
            session.execute(
                select(AuditLog.resource_id, func.count()).group_by(AuditLog.resource_id)
            ).all()
        )
    for run_id in completed:
        row = rows[run_id]
        assert (row.status, row.outcome) == ("completed", "succeeded")
        assert "reconciliation" not in row.context
        assert row.failure_summary == []
    for run_id in failed:
        row = rows[run_id]
        assert (row.status, row.outcome) == ("completed", "failed")
        assert row.context["reconciliation"]["reason_code"] == "run.stale_running"
        assert len(row.failure_summary) == 1
    assert audits == {str(run_id): 1 for run_id in failed}
    engine.dispose()


LIVENESS_RUNS = 1200
LIVENESS_POLICY = LifecyclePolicy(
    types=POLICY.types,
    workers=WorkerPolicy(heartbeat_interval_seconds=1, lost_after_seconds=30),
)


def _liveness_reconciler(url: str, start: Any, results: Any) -> None:
    engine = build_engine(url)
    try:
        start.wait(60)
        drained = OperationLifecycleReconciler(LIVENESS_POLICY).drain(engine, {"limit": 50})
        results.put(("reconciler", [c.operation_run_id for c in drained.changes if c.applied]))
    finally:
        engine.dispose()


def _heartbeater(
    url: str, run_ids: list[int], worker_id: int | None, start: Any, results: Any
) -> None:
    # Plays a worker's bodies heartbeating their runs (fenced on attempt and task id), and
    # with ``worker_id`` its main process heartbeating too, while the reconcilers drain.
    engine = build_engine(url)
    refused: list[int] = []
    try:
        start.set()
        for _ in range(3):
            for run_id in run_ids:
                with statement_session(engine) as session:
                    if not execution.heartbeat(
                        session, run_id, attempt=1, celery_task_id=f"task-{run_id}"
                    ):
                        refused.append(run_id)
                    if worker_id is not None and run_id % 50 == 0:
                        session.execute(
                            statement("postgresql", "worker_heartbeat"), {"worker_id": worker_id}
                        )
        results.put(("heartbeater", (worker_id, sorted(set(refused)))))
    finally:
        engine.dispose()


def test_reconcile__lost_worker_runs_with_racing_heartbeats__one_transition_each(
    pg_url: str,
) -> None:
    """Two reconcilers drain runs of a lost worker while that worker's bodies still send run
    heartbeats and a live worker heartbeats its own: each lost run fails once, as
    run.worker_lost with one audit row; a heartbeat never brings a failed run back; the
    live worker's runs are not touched."""
    engine = build_engine(pg_url)
    ids = seed_tenancy(engine)
    lost = make_worker(engine, heartbeat_age_seconds=600, nodename="celery@lost")
    alive = make_worker(engine, heartbeat_age_seconds=0, nodename="celery@alive")
    with write_session(engine) as session:
        session.execute(
            text(
                "INSERT INTO operation_runs (workspace_id, tenant_id, user_id, type, status,"
                " outcome, attempts, celery_task_id, worker_id, context, summary_counts,"
                " failure_summary, created_at, updated_at, started_at, last_heartbeat_at)"
                " SELECT :ws, :tenant, :user, 'inventory.sync', 'running', 'pending', 1,"
                " 'task-' || i, CASE WHEN i % 2 = 0 THEN :lost ELSE :alive END, '{}', '{}',"
                " '[]', now(), now(), now(), now() FROM generate_series(1, :n) AS i"
            ),
            {
                "ws": ids["workspace_id"],
                "tenant": ids["tenant_id"],
                "user": ids["user_id"],
                "lost": lost,
                "alive": alive,
                "n": LIVENESS_RUNS,
            },
        )
        session.execute(text("UPDATE operation_runs SET celery_task_id = 'task-' || id"))
    with read_session(engine) as session:
        on_lost = list(
            session.scalars(select(OperationRun.id).where(OperationRun.worker_id == lost))
        )
        on_alive = list(
            session.scalars(select(OperationRun.id).where(OperationRun.worker_id == alive))
        )

    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    results: Any = ctx.Queue()
    processes = [
        ctx.Process(target=_liveness_reconciler, args=(pg_url, start, results)) for _ in range(2)
    ]
    processes.append(ctx.Process(target=_heartbeater, args=(pg_url, on_lost, None, start, results)))
    processes.append(
        ctx.Process(target=_heartbeater, args=(pg_url, on_alive, alive, start, results))
    )
    for process in processes:
        process.start()
    reported = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(30)
        assert process.exitcode == 0

    failed = [i for role, ids_ in reported if role == "reconciler" for i in ids_]
    refused = dict(ids_ for role, ids_ in reported if role == "heartbeater")
    assert len(failed) == len(set(failed))
    assert sorted(failed) == sorted(on_lost)
    with read_session(engine) as session:
        rows = {
            row.id: row
            for row in session.execute(
                select(
                    OperationRun.id, OperationRun.status, OperationRun.outcome, OperationRun.context
                )
            )
        }
        audits = dict(
            session.execute(
                select(AuditLog.resource_id, func.count()).group_by(AuditLog.resource_id)
            ).all()
        )
    for run_id in on_lost:
        row = rows[run_id]
        assert (row.status, row.outcome) == ("completed", "failed")
        assert row.context["reconciliation"]["reason_code"] == "run.worker_lost"
        assert row.context["reconciliation"]["evidence"]["worker"]["id"] == lost
    assert all(rows[i].status == "running" for i in on_alive)
    assert audits == {str(run_id): 1 for run_id in on_lost}
    # A live worker's runs accept every heartbeat; a failed run refuses them.
    assert refused[alive] == []
    assert set(refused[None]) <= set(on_lost)
    engine.dispose()
