"""Real concurrent processes racing terminal writes on PostgreSQL."""

from __future__ import annotations

import multiprocessing
import random

import pytest
from sqlalchemy import func, select, text

from models import AuditLog, OperationRun, RunOutcome, utcnow
from tests.factories import seed_tenancy
from worker.db import build_engine, read_session, write_session
from worker.lifecycle import transitions as t
from worker.lifecycle.reasons import ReasonCode

RUNS = 400
WORKERS = 4


def _racer(url: str, worker: int, run_ids: list[int], queue: multiprocessing.Queue[object]) -> None:
    engine = build_engine(url)
    won: list[tuple[int, str]] = []
    rng = random.Random(worker)
    order = run_ids[:]
    rng.shuffle(order)
    try:
        if worker == 0:
            # This process plays the tasks finishing on their own: one run per transaction,
            # as a task's completion is.
            for run_id in order:
                with write_session(engine) as session:
                    if t.complete(
                        session,
                        run_id,
                        outcome=RunOutcome.SUCCEEDED,
                        attempt=1,
                        celery_task_id=f"task-{run_id}",
                        now=utcnow(),
                    ):
                        won.append((run_id, "succeeded"))
        else:
            # Reconciler-like batches that overlap other processes' batches in random order.
            for start in range(0, len(order), 25):
                batch = [
                    t.forced_failure(rid, reason_code=ReasonCode.STALE_RUNNING, source=f"r{worker}")
                    for rid in order[start : start + 25]
                ]
                with write_session(engine) as session:
                    winners = t.apply_terminal_transitions(session, batch, now=utcnow())
                won.extend((rid, "failed") for rid in winners)
        queue.put(won)
    finally:
        engine.dispose()


def test_terminal_writes__racing_processes_produce_exactly_one_transition_per_run(
    pg_url: str,
) -> None:
    engine = build_engine(pg_url)
    ids = seed_tenancy(engine)
    with write_session(engine) as session:
        session.execute(
            text(
                "INSERT INTO operation_runs (workspace_id, type, status, outcome, attempts,"
                " context, summary_counts, failure_summary, created_at, updated_at, started_at)"
                " SELECT :ws, 'inventory.sync', 'running', 'pending', 1, '{}', '{}', '[]',"
                " now(), now(), now() FROM generate_series(1, :n)"
            ),
            {"ws": ids["workspace_id"], "n": RUNS},
        )
        # Each run carries its message's task id, as dispatch writes it.
        session.execute(text("UPDATE operation_runs SET celery_task_id = 'task-' || id"))
    with read_session(engine) as session:
        run_ids = list(session.scalars(select(OperationRun.id)).all())

    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[object] = ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(pg_url, w, run_ids, queue)) for w in range(WORKERS)]
    for proc in procs:
        proc.start()
    claims: list[tuple[int, str]] = []
    for _ in procs:
        claims.extend(queue.get(timeout=90))  # type: ignore[arg-type]
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0

    # Every run won by exactly one process, and the row agrees with the winner.
    assert sorted(rid for rid, _ in claims) == sorted(run_ids)
    with read_session(engine) as session:
        rows = {r.id: r for r in session.scalars(select(OperationRun)).all()}
        audits = session.execute(
            select(AuditLog.resource_id, func.count()).group_by(AuditLog.resource_id)
        ).all()
    for run_id, outcome in claims:
        assert rows[run_id].status == "completed"
        assert rows[run_id].outcome == outcome
        assert len(rows[run_id].failure_summary) == (1 if outcome == "failed" else 0)
    failed = {str(rid) for rid, outcome in claims if outcome == "failed"}
    assert {rid for rid, _ in audits} == failed
    assert all(count == 1 for _, count in audits)
    engine.dispose()


pytestmark = pytest.mark.postgres
