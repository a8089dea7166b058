"""Recovery in the pass (issue 11), on both backends: which runs a pass requeues and which
it fails, the same from the named SQL as from the Python reference; what a requeue
writes; the outbox; and how the requeued run's next start passes the start's
compare-and-set while the old delivery loses every write."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select

from models import AuditLog, OperationRun, utcnow
from tests.factories import make_run, make_worker, seed_tenancy
from tests.integration.test_reconciler_parity import _normalise, _reference
from worker.db import read_session, statement_session, write_session
from worker.lifecycle.execution import StartDecision, heartbeat, start_execution
from worker.lifecycle.gate import QueuedExecutionLegitimacyGate
from worker.lifecycle.policy import LifecyclePolicy, TypePolicy, WorkerPolicy
from worker.lifecycle.reconciler import OperationLifecycleReconciler
from worker.lifecycle.recovery import Publication, PublishFailure, PublishResult
from worker.lifecycle.transitions import complete

POLICY = LifecyclePolicy(
    batch_limit=500,
    types=(
        TypePolicy(
            "sync.retry",
            queued_stale_after_seconds=60,
            running_stale_after_seconds=120,
            recovery="retry",
            max_attempts=2,
        ),
        TypePolicy("sync.fail", queued_stale_after_seconds=60, running_stale_after_seconds=120),
        # retry with max_attempts = 1 means fail.
        TypePolicy(
            "sync.once",
            queued_stale_after_seconds=60,
            running_stale_after_seconds=120,
            recovery="retry",
        ),
    ),
    workers=WorkerPolicy(heartbeat_interval_seconds=10, lost_after_seconds=60),
)


def _seed(engine: Engine) -> tuple[dict[int, tuple[str, str | None]], Any]:
    """Runs of every recovery case: id -> (expected action, reason)."""
    now = utcnow()
    ws = seed_tenancy(engine)["workspace_id"]
    alive = make_worker(engine, now=now, heartbeat_age_seconds=5, nodename="celery@alive")
    lost = make_worker(engine, now=now, heartbeat_age_seconds=90, nodename="celery@lost")

    def run(**fields: Any) -> int:
        fields.setdefault("type", "sync.retry")
        return make_run(engine, workspace_id=ws, now=now, **fields)

    def running(worker_id: int | None, **fields: Any) -> int:
        fields.setdefault("age_seconds", 10)
        fields.setdefault("started_age_seconds", fields["age_seconds"])
        return run(status="running", worker_id=worker_id, **fields)

    expected = {
        # The message never started within its window: attempt 1 of 2 -> requeued.
        run(age_seconds=600): ("requeue", "run.stale_queued"),
        # A second message lost: attempt 2 of 2 -> failed.
        run(age_seconds=600, unstarted_attempts=1): ("force_fail", "run.stale_queued"),
        # Requeued long ago, the window counts from the requeue.
        run(age_seconds=6000, requeued_at=now - timedelta(seconds=600), attempts=1): (
            "force_fail",
            "run.stale_queued",
        ),
        # Requeued a moment ago: its window counts from the requeue, not its creation.
        run(age_seconds=6000, requeued_at=now - timedelta(seconds=5), attempts=1): (None, None),
        # The worker died during attempt 1 -> requeued; during attempt 2 -> failed.
        running(lost, attempts=1): ("requeue", "run.worker_lost"),
        running(lost, attempts=2): ("force_fail", "run.worker_lost"),
        # A hung body on a live worker is never retried.
        running(alive, age_seconds=600, attempts=1): ("force_fail", "run.stale_running"),
        running(alive, attempts=1): (None, None),
        # recovery = "fail", and retry with max_attempts = 1: failed as before.
        run(type="sync.fail", age_seconds=600): ("force_fail", "run.stale_queued"),
        running(lost, type="sync.fail", attempts=1): ("force_fail", "run.worker_lost"),
        run(type="sync.once", age_seconds=600): ("force_fail", "run.stale_queued"),
    }
    return expected, now


def test_pass__recovery_matches_the_python_reference(engine: Engine) -> None:
    expected, now = _seed(engine)
    with read_session(engine) as session:
        before = {r.id: r for r in session.scalars(select(OperationRun)).all()}
    reconciler = OperationLifecycleReconciler(POLICY, now=lambda: now)
    reference = _reference(engine, reconciler)
    assert {i: (c["action"], c["reason_code"]) for i, c in reference.items()} == {
        i: e for i, e in expected.items() if e[0] is not None
    }

    dry = reconciler.reconcile(engine, {"dry_run": True})
    applied = reconciler.reconcile(engine)
    sql = {c.operation_run_id: c.to_dict() for c in applied.changes}
    preview = {c.operation_run_id: c.to_dict() for c in dry.changes}
    assert set(sql) == set(preview) == set(reference)
    for run_id, change in sql.items():
        assert _normalise(change) == _normalise(reference[run_id]), run_id
        assert _normalise(preview[run_id]) == _normalise({**reference[run_id], "applied": False})
    requeued = {i for i, c in sql.items() if c["action"] == "requeue"}
    assert applied.requeued == len(requeued) == 2
    assert applied.reconciled == len(sql)

    with read_session(engine) as session:
        after = {r.id: r for r in session.scalars(select(OperationRun)).all()}
        audits = {a.resource_id: a for a in session.scalars(select(AuditLog)).all()}
    for run_id in requeued:
        change, old, new = sql[run_id], before[run_id], after[run_id]
        assert change["after"] == {
            "status": "queued",
            "outcome": "pending",
            "freshness_state": "fresh",
        }
        assert change["evidence"]["attempt"] == 1
        assert change["evidence"]["max_attempts"] == 2
        assert (new.status, new.outcome, new.worker_id) == ("queued", "pending", None)
        assert new.celery_task_id not in (None, old.celery_task_id)
        assert new.requeued_at == now
        assert new.publish_pending is True
        assert new.attempts == old.attempts
        assert new.unstarted_attempts == old.unstarted_attempts + (old.status == "queued")
        assert new.failure_summary == [] and "reconciliation" not in new.context
        audit = audits[str(run_id)]
        assert audit.action == "operation_run.requeued"
        assert audit.metadata_["reason_code"] == change["reason_code"]
        assert audit.metadata_["outcome"] == "pending"
        assert _normalise(audit.metadata_["evidence"]) == _normalise(change["evidence"])
    lost_requeue = next(i for i in requeued if sql[i]["reason_code"] == "run.worker_lost")
    assert sql[lost_requeue]["evidence"]["worker"]["nodename"] == "celery@lost"
    exhausted = next(
        c
        for c in sql.values()
        if c["action"] == "force_fail"
        and c["reason_code"] == "run.worker_lost"
        and c["type"] == "sync.retry"
    )
    assert (exhausted["evidence"]["attempts"], exhausted["evidence"]["max_attempts"]) == (2, 2)
    assert after[exhausted["operation_run_id"]].status == "completed"
    assert {audits[str(i)].action for i in sql if i not in requeued} == {
        "operation_run.force_failed"
    }
    # A requeued run is fresh: the next pass leaves it alone.
    again = reconciler.reconcile(engine)
    assert again.reconciled == 0


def _requeued_run(engine: Engine) -> tuple[int, Any]:
    now = utcnow()
    ws = seed_tenancy(engine)["workspace_id"]
    lost = make_worker(engine, now=now, heartbeat_age_seconds=90)
    run_id = make_run(
        engine,
        workspace_id=ws,
        type="sync.retry",
        status="running",
        age_seconds=10,
        started_age_seconds=10,
        worker_id=lost,
        attempts=1,
    )
    return run_id, now


def test_outbox__publishes_after_commit_keeps_what_the_broker_refused_for_a_later_call(
    engine: Engine,
) -> None:
    run_id, _ = _requeued_run(engine)
    with read_session(engine) as session:
        old_task_id = session.get(OperationRun, run_id).celery_task_id  # type: ignore[union-attr]

    def broker_down(publications: Sequence[Publication]) -> list[PublishFailure]:
        raise ConnectionError("Error 111 connecting to localhost:6379. Connection refused.")

    down = OperationLifecycleReconciler(POLICY, publisher=broker_down)
    assert down.reconcile(engine).requeued == 1
    with read_session(engine) as session:
        run = session.get(OperationRun, run_id)
        assert run is not None
        assert (run.status, run.publish_pending) == ("queued", True)
        new_task_id = run.celery_task_id
    assert new_task_id != old_task_id

    sent: list[Publication] = []

    def broker(publications: Sequence[Publication]) -> list[PublishFailure]:
        # Published after the requeue committed: a reader sees the row as the message says.
        for publication in publications:
            with read_session(engine) as session:
                row = session.get(OperationRun, publication.run_id)
                assert row is not None and row.celery_task_id == publication.celery_task_id
            sent.append(publication)
        return []

    up = OperationLifecycleReconciler(POLICY, publisher=broker)
    # A later call with nothing to reconcile still publishes what waited, once.
    assert up.reconcile(engine).reconciled == 0
    assert up.reconcile(engine).reconciled == 0
    assert sent == [Publication(run_id, "sync.retry", new_task_id, retries=1)]
    with read_session(engine) as session:
        assert session.get(OperationRun, run_id).publish_pending is False  # type: ignore[union-attr]


def test_outbox__a_claim_the_broker_took_in_part__gives_back_exactly_the_rest(
    engine: Engine,
) -> None:
    run_ids = sorted(_requeued_run(engine)[0] for _ in range(4))
    claims: list[list[int]] = []

    def broker_fails_after_two(publications: Sequence[Publication]) -> list[PublishFailure]:
        # One call for the whole claim; the broker went away after its first two.
        claims.append([p.run_id for p in publications])
        error = ConnectionError("Connection reset by peer")
        return [PublishFailure(p, error) for p in publications[2:]]

    reconciler = OperationLifecycleReconciler(POLICY, publisher=broker_fails_after_two)
    result = reconciler.reconcile(engine)
    assert (result.reconciled, result.requeued) == (4, 4)
    assert claims == [run_ids]
    with read_session(engine) as session:
        pending = {
            run.id: run.publish_pending
            for run in session.scalars(select(OperationRun).where(OperationRun.id.in_(run_ids)))
        }
    assert pending == {run_ids[0]: False, run_ids[1]: False, run_ids[2]: True, run_ids[3]: True}

    sent: list[int] = []

    def broker(publications: Sequence[Publication]) -> list[PublishFailure]:
        sent.extend(p.run_id for p in publications)
        return []

    # The next call publishes what was given back, and only that.
    assert OperationLifecycleReconciler(POLICY, publisher=broker).publish_pending(
        engine
    ) == PublishResult(published=2, failed=0)
    assert sent == run_ids[2:]


def test_outbox__a_drain_publishes_each_pass_beside_the_next_and_waits_for_the_last(
    engine: Engine,
) -> None:
    run_ids = sorted(_requeued_run(engine)[0] for _ in range(4))
    second_pass_done = threading.Event()
    claims: list[tuple[list[int], str, bool]] = []

    def broker(publications: Sequence[Publication]) -> list[PublishFailure]:
        ids = [p.run_id for p in publications]
        if ids == run_ids[2:]:
            # The second pass's claim: the broker is gone.
            error = ConnectionError("Connection refused")
            claims.append((ids, threading.current_thread().name, True))
            return [PublishFailure(p, error) for p in publications]
        # The first pass's claim goes out while the second pass runs: it can wait for it.
        claims.append((ids, threading.current_thread().name, second_pass_done.wait(10)))
        return []

    def on_pass(passes: int, reconciled: int) -> None:
        if passes == 2:
            second_pass_done.set()

    reconciler = OperationLifecycleReconciler(POLICY, publisher=broker)
    result = reconciler.drain(engine, {"limit": 2}, on_pass=on_pass)

    assert (result.passes, result.requeued) == (3, 4)
    # Both claims were handed over in pass order, off the passes' thread, and the first
    # was still being published when the second pass committed.
    assert [(ids, waited) for ids, _, waited in claims] == [
        (run_ids[:2], True),
        (run_ids[2:], True),
    ]
    assert all(thread != threading.current_thread().name for _, thread, _ in claims)
    # The drain returned once the last claim was settled: what it could not send is back
    # in the outbox.
    with read_session(engine) as session:
        pending = {
            run.id: run.publish_pending
            for run in session.scalars(select(OperationRun).where(OperationRun.id.in_(run_ids)))
        }
    assert pending == dict.fromkeys(run_ids[:2], False) | dict.fromkeys(run_ids[2:], True)


def test_start__the_requeued_message_starts_the_next_attempt_and_the_old_delivery_loses(
    engine: Engine,
) -> None:
    run_id, _ = _requeued_run(engine)
    with read_session(engine) as session:
        old_task_id = session.get(OperationRun, run_id).celery_task_id  # type: ignore[union-attr]
    sent: list[Publication] = []

    def broker(publications: Sequence[Publication]) -> list[PublishFailure]:
        sent.extend(publications)
        return []

    OperationLifecycleReconciler(POLICY, publisher=broker).reconcile(engine)
    (publication,) = sent
    gate = QueuedExecutionLegitimacyGate(POLICY)

    # The old message, redelivered: not the run's task id any more.
    with statement_session(engine) as session:
        old = start_execution(session, run_id, gate=gate, celery_task_id=old_task_id, retries=0)
    assert old.decision is StartDecision.NOT_OWNER
    # The new message carries retries = attempts started: it starts attempt 2.
    with statement_session(engine) as session:
        new = start_execution(
            session,
            run_id,
            gate=gate,
            celery_task_id=publication.celery_task_id,
            retries=publication.retries,
        )
    assert new.decision is StartDecision.STARTED and new.run is not None
    assert new.run.attempt == 2
    # The same message delivered twice: one start only.
    with statement_session(engine) as session:
        twice = start_execution(
            session,
            run_id,
            gate=gate,
            celery_task_id=publication.celery_task_id,
            retries=publication.retries,
        )
    assert twice.decision is StartDecision.DUPLICATE
    # The old attempt, still alive somewhere, loses every write.
    with write_session(engine) as session:
        assert not heartbeat(session, run_id, attempt=1, celery_task_id=old_task_id)
        assert not complete(
            session, run_id, outcome="succeeded", attempt=1, celery_task_id=old_task_id
        )
        assert complete(
            session,
            run_id,
            outcome="succeeded",
            attempt=2,
            celery_task_id=publication.celery_task_id,
        )
    with read_session(engine) as session:
        run = session.get(OperationRun, run_id)
        assert run is not None
        assert (run.status, run.outcome, run.attempts) == ("completed", "succeeded", 2)


@pytest.mark.parametrize("key", ["recovery", "max_attempts"])
def test_policy__recovery_is_part_of_the_hash(key: str) -> None:
    base = TypePolicy("t", queued_stale_after_seconds=1, running_stale_after_seconds=1)
    changed = (
        TypePolicy("t", 1, 1, recovery="retry")
        if key == "recovery"
        else TypePolicy("t", 1, 1, max_attempts=3)
    )
    assert LifecyclePolicy(types=(base,)).sha256 != LifecyclePolicy(types=(changed,)).sha256
    assert LifecyclePolicy(types=(changed,)).to_dict()["types"]["t"][key] == getattr(changed, key)
