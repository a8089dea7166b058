"""Task start checks the gate in SQL (one statement on the usual path); its verdicts must
be the Python gate's, for every combination of tenant, user, type and status."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from models import AuditLog, OperationRun, utcnow
from tests.factories import make_run, seed_gate_combinations, seed_tenancy
from worker.db import read_session, statement_session, write_session
from worker.lifecycle import execution as x
from worker.lifecycle.evidence import iso
from worker.lifecycle.execution import StartDecision, start_execution
from worker.lifecycle.gate import QueuedExecutionLegitimacyGate
from worker.lifecycle.policy import LifecyclePolicy, TypePolicy

POLICY = LifecyclePolicy(
    batch_limit=100,
    types=(
        TypePolicy("inventory.sync", queued_stale_after_seconds=60, running_stale_after_seconds=60),
    ),
)


def test_start__sql_gate_agrees_with_python_gate_for_every_combination(engine: Engine) -> None:
    run_ids = seed_gate_combinations(
        engine,
        types=("inventory.sync", "not.covered"),
        statuses=("queued", "running", "completed"),
    )
    gate = QueuedExecutionLegitimacyGate(POLICY)
    for run_id in run_ids:
        with read_session(engine) as session:
            run = session.get(OperationRun, run_id)
            assert run is not None
            verdict = gate.evaluate(session, run)
            status, task_id = run.status, str(run.celery_task_id)
        with statement_session(engine) as session:
            start = start_execution(
                session, run_id, gate=gate, celery_task_id=task_id, retries=0, now=utcnow()
            )
        if status == "completed":
            expected = StartDecision.ALREADY_TERMINAL
        elif status == "running":
            # This attempt already started under another delivery of the message: that
            # delivery owns the run, whatever this one sees of its tenant.
            expected = StartDecision.DUPLICATE
        elif verdict.allowed:
            expected = StartDecision.STARTED
        else:
            expected = StartDecision.BLOCKED
        assert start.decision is expected, (run_id, verdict, status)
        if expected is StartDecision.BLOCKED:
            assert start.reason_code == verdict.reason_code
        if expected is StartDecision.STARTED:
            assert start.run is not None and start.run.id == run_id
    with read_session(engine) as session:
        rows = {r.id: r for r in session.scalars(select(OperationRun)).all()}
        blocked = {a.resource_id for a in session.scalars(select(AuditLog)).all()}
    assert {str(i) for i, r in rows.items() if r.outcome == "blocked"} == blocked
    # Every verdict the gate can give here was exercised.
    reasons = {r.context.get("legitimacy", {}).get("reason_code") for r in rows.values()}
    assert {
        "execution.tenant_inactive",
        "execution.tenant_workspace_mismatch",
        "execution.user_inactive",
        "execution.type_not_covered",
    } <= reasons


# -- the non-terminal moves, one statement each --------------------------------------------

GATE = QueuedExecutionLegitimacyGate(POLICY)


def _started(
    session: Session, run_id: int, *, retries: int, now: datetime, task_id: str | None = None
) -> bool:
    """Did delivery ``retries`` of the run's own message (or of ``task_id``'s) start it?"""
    run = session.get(OperationRun, run_id)
    assert run is not None
    owner = task_id or str(run.celery_task_id)
    session.expunge(run)
    started = x.start_run(
        session, run_id, gate=GATE, celery_task_id=owner, retries=retries, now=now
    )
    return started is not None


def _run(engine: Engine, run_id: int) -> OperationRun:
    with read_session(engine) as session:
        run = session.get(OperationRun, run_id)
        assert run is not None
        return run


@pytest.fixture
def ids(engine: Engine) -> dict[str, int]:
    return seed_tenancy(engine)


def test_start_run__first_delivery_starts_and_duplicate_loses(
    engine: Engine, ids: dict[str, int]
) -> None:
    run_id = make_run(engine, workspace_id=ids["workspace_id"])
    with write_session(engine) as session:
        assert _started(session, run_id, retries=0, now=utcnow())
    with write_session(engine) as session:
        assert not _started(session, run_id, retries=0, now=utcnow())
    run = _run(engine, run_id)
    assert (run.status, run.attempts) == ("running", 1)
    assert run.started_at is not None and run.last_heartbeat_at is not None


def test_start_run__retry_starts_next_attempt_once(engine: Engine, ids: dict[str, int]) -> None:
    run_id = make_run(engine, workspace_id=ids["workspace_id"])
    first_start = utcnow()
    with write_session(engine) as session:
        assert _started(session, run_id, retries=0, now=first_start)
    later = first_start + timedelta(seconds=5)
    with write_session(engine) as session:
        assert _started(session, run_id, retries=1, now=later)
    with write_session(engine) as session:
        assert not _started(session, run_id, retries=1, now=later)  # duplicate of retry 1
    run = _run(engine, run_id)
    assert run.attempts == 2
    assert run.started_at == first_start
    assert run.last_heartbeat_at == later


def test_start_run__terminal_run_never_starts(engine: Engine, ids: dict[str, int]) -> None:
    run_id = make_run(
        engine, workspace_id=ids["workspace_id"], status="completed", outcome="failed"
    )
    with write_session(engine) as session:
        assert not _started(session, run_id, retries=0, now=utcnow())
        assert not _started(session, run_id, retries=3, now=utcnow())
    assert _run(engine, run_id).status == "completed"


def test_start_run__a_message_under_another_task_id_never_starts(
    engine: Engine, ids: dict[str, int]
) -> None:
    run_id = make_run(engine, workspace_id=ids["workspace_id"])
    with write_session(engine) as session:
        assert not _started(session, run_id, retries=0, now=utcnow(), task_id="hand-made")
    run = _run(engine, run_id)
    assert (run.status, run.attempts) == ("queued", 0)


def test_start_run__a_retry_of_an_attempt_that_never_started_is_refused(
    engine: Engine, ids: dict[str, int]
) -> None:
    run_id = make_run(engine, workspace_id=ids["workspace_id"])
    with write_session(engine) as session:
        assert not _started(session, run_id, retries=2, now=utcnow())
    assert _run(engine, run_id).status == "queued"


def test_start_execution__foreign_task_id_is_not_the_owner_and_writes_nothing(
    engine: Engine, ids: dict[str, int]
) -> None:
    # An inactive tenant would block the run -- but not on the word of a stranger.
    inactive = seed_tenancy(engine, tenant_active=False)
    run_id = make_run(
        engine, workspace_id=inactive["workspace_id"], tenant_id=inactive["tenant_id"]
    )
    with statement_session(engine) as session:
        start = start_execution(
            session, run_id, gate=GATE, celery_task_id="hand-made", retries=0, now=utcnow()
        )
    assert start.decision is StartDecision.NOT_OWNER
    run = _run(engine, run_id)
    assert (run.status, run.outcome, run.attempts) == ("queued", "pending", 0)


def test_start_execution__duplicate_of_a_running_attempt_never_blocks_it(
    engine: Engine, ids: dict[str, int]
) -> None:
    inactive = seed_tenancy(engine, tenant_active=False)
    run_id = make_run(
        engine,
        workspace_id=inactive["workspace_id"],
        tenant_id=inactive["tenant_id"],
        status="running",
    )
    task_id = str(_run(engine, run_id).celery_task_id)
    with statement_session(engine) as session:
        start = start_execution(
            session, run_id, gate=GATE, celery_task_id=task_id, retries=0, now=utcnow()
        )
    assert start.decision is StartDecision.DUPLICATE
    assert (_run(engine, run_id).status, _run(engine, run_id).outcome) == ("running", "pending")


def _fence(engine: Engine, run_id: int) -> dict[str, Any]:
    run = _run(engine, run_id)
    return {"attempt": run.attempts, "celery_task_id": str(run.celery_task_id)}


def test_heartbeat__only_running_runs(engine: Engine, ids: dict[str, int]) -> None:
    queued = make_run(engine, workspace_id=ids["workspace_id"])
    running = make_run(engine, workspace_id=ids["workspace_id"], status="running")
    now = utcnow()
    with write_session(engine) as session:
        assert not x.heartbeat(session, queued, now=now, **_fence(engine, queued))
        assert x.heartbeat(session, running, now=now, **_fence(engine, running))
    assert _run(engine, running).last_heartbeat_at == now
    assert _run(engine, queued).last_heartbeat_at is None


@pytest.mark.parametrize(
    "stranger",
    [{"attempt": 2}, {"attempt": 0}, {"celery_task_id": "hand-made"}],
    ids=["a later attempt", "an earlier attempt", "another task id"],
)
def test_heartbeat__a_delivery_that_does_not_own_the_run_changes_nothing(
    engine: Engine, ids: dict[str, int], stranger: dict[str, Any]
) -> None:
    run_id = make_run(engine, workspace_id=ids["workspace_id"], status="running")
    with write_session(engine) as session:
        fence = {**_fence(engine, run_id), **stranger}
        assert not x.heartbeat(session, run_id, now=utcnow(), **fence)
    assert _run(engine, run_id).last_heartbeat_at is None


def test_record_retry__keeps_run_running_with_last_error(
    engine: Engine, ids: dict[str, int]
) -> None:
    run_id = make_run(
        engine,
        workspace_id=ids["workspace_id"],
        context={"inputs": {"full": True}, "bridge": {"note": "kept"}},
    )
    now = utcnow()
    with write_session(engine) as session:
        assert _started(session, run_id, retries=0, now=now)
    first = _fence(engine, run_id)
    with write_session(engine) as session:
        error = {"exception_type": "IOError"}
        assert x.record_retry(session, run_id, evidence=error, now=now, **first)
    with write_session(engine) as session:
        assert _started(session, run_id, retries=1, now=now)
    second = _fence(engine, run_id)
    with write_session(engine) as session:
        error = {"exception_type": "TimeoutError"}
        assert x.record_retry(session, run_id, evidence=error, now=now, **second)
        # The first attempt's delivery, reporting late, no longer owns the run.
        assert not x.record_retry(session, run_id, evidence={"late": True}, now=now, **first)
    run = _run(engine, run_id)
    assert run.status == "running"
    # The latest attempt's error replaces the earlier one; the rest of the context stays.
    assert run.context == {
        "inputs": {"full": True},
        "bridge": {
            "note": "kept",
            "last_retry": {"exception_type": "TimeoutError", "recorded_at": iso(now)},
        },
    }


def test_record_retry__a_run_that_is_not_running_is_not_touched(
    engine: Engine, ids: dict[str, int]
) -> None:
    run_id = make_run(engine, workspace_id=ids["workspace_id"], status="queued")
    with write_session(engine) as session:
        fence = _fence(engine, run_id)
        assert not x.record_retry(session, run_id, evidence={"retries": 0}, now=utcnow(), **fence)
    assert _run(engine, run_id).context == {}
