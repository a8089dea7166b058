from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from models import AuditLog, OperationRun, RunOutcome, RunStatus, utcnow
from tests.factories import make_run, seed_tenancy
from worker.db import read_session, write_session
from worker.lifecycle import transitions as t
from worker.lifecycle.evidence import iso
from worker.lifecycle.reasons import ReasonCode


def _run(engine: Engine, run_id: int) -> OperationRun:
    with read_session(engine) as session:
        run = session.get(OperationRun, run_id)
        assert run is not None
        return run


def _owner(engine: Engine, run_id: int) -> dict[str, Any]:
    """The fence of the delivery that owns the run: its current attempt and task id."""
    run = _run(engine, run_id)
    return {"attempt": run.attempts, "celery_task_id": run.celery_task_id}


def _audits(engine: Engine, run_id: int) -> list[AuditLog]:
    with read_session(engine) as session:
        return list(
            session.scalars(select(AuditLog).where(AuditLog.resource_id == str(run_id))).all()
        )


@pytest.fixture
def ids(engine: Engine) -> dict[str, int]:
    return seed_tenancy(engine)


def test_force_fail__writes_run_record_failure_entry_and_one_audit_row(
    engine: Engine, ids: dict[str, int]
) -> None:
    run_id = make_run(
        engine,
        workspace_id=ids["workspace_id"],
        tenant_id=ids["tenant_id"],
        status="running",
        context={"inputs": {"full": True}},
    )
    now = utcnow()
    with write_session(engine) as session:
        won = t.force_fail_non_terminal_run(
            session,
            run_id,
            reason_code=ReasonCode.STALE_RUNNING,
            source="scheduled_reconciler",
            evidence={"threshold_seconds": 60, "legitimacy": {"reason_code": None}},
            now=now,
        )
    assert won is True
    run = _run(engine, run_id)
    assert (run.status, run.outcome) == ("completed", "failed")
    assert run.completed_at == now
    assert run.context["inputs"] == {"full": True}
    record = run.context["reconciliation"]
    assert record["reason_code"] == "run.stale_running"
    assert record["reason_message"] == ReasonCode.STALE_RUNNING.default_message
    assert record["source"] == "scheduled_reconciler"
    assert record["evidence"] == {"threshold_seconds": 60, "legitimacy": {"reason_code": None}}
    assert record["reconciled_at"] == iso(now)
    assert run.failure_summary == [
        {"reason_code": "run.stale_running", "message": ReasonCode.STALE_RUNNING.default_message}
    ]
    [audit] = _audits(engine, run_id)
    assert audit.action == "operation_run.force_failed"
    assert audit.resource_type == "operation_run"
    assert (audit.workspace_id, audit.tenant_id) == (ids["workspace_id"], ids["tenant_id"])
    assert audit.metadata_["reason_code"] == "run.stale_running"
    assert audit.metadata_["source"] == "scheduled_reconciler"
    assert audit.metadata_["evidence"]["threshold_seconds"] == 60


def test_force_fail__completed_run_is_never_written_again(
    engine: Engine, ids: dict[str, int]
) -> None:
    run_id = make_run(
        engine,
        workspace_id=ids["workspace_id"],
        status="completed",
        outcome="succeeded",
        summary_counts={"items": 3},
    )
    before = _run(engine, run_id)
    with write_session(engine) as session:
        won = t.force_fail_non_terminal_run(
            session, run_id, reason_code=ReasonCode.STALE_RUNNING, source="x", now=utcnow()
        )
    assert won is False
    after = _run(engine, run_id)
    assert (after.outcome, after.context, after.failure_summary, after.updated_at) == (
        before.outcome,
        before.context,
        before.failure_summary,
        before.updated_at,
    )
    assert _audits(engine, run_id) == []


def test_force_fail__second_attempt_loses_and_writes_no_second_audit(
    engine: Engine, ids: dict[str, int]
) -> None:
    run_id = make_run(engine, workspace_id=ids["workspace_id"], status="running")
    results = []
    for reason in (ReasonCode.TIME_LIMIT_EXCEEDED, ReasonCode.TIME_LIMIT_EXCEEDED):
        with write_session(engine) as session:
            results.append(
                t.force_fail_non_terminal_run(
                    session,
                    run_id,
                    reason_code=reason,
                    source="bridge",
                    now=utcnow(),
                    record_key="bridge",
                )
            )
    assert results == [True, False]
    assert len(_audits(engine, run_id)) == 1
    assert len(_run(engine, run_id).failure_summary) == 1


def test_apply_terminal_transitions__batch_reports_only_winners_in_order(
    engine: Engine, ids: dict[str, int]
) -> None:
    ws = ids["workspace_id"]
    queued = make_run(engine, workspace_id=ws, status="queued")
    running = make_run(engine, workspace_id=ws, status="running")
    done = make_run(engine, workspace_id=ws, status="completed", outcome="succeeded")
    expects_queued_but_running = make_run(engine, workspace_id=ws, status="running")
    batch = [
        t.forced_failure(running, reason_code="run.stale_running", source="s"),
        t.forced_failure(done, reason_code="run.stale_running", source="s"),
        t.forced_failure(queued, reason_code="run.stale_queued", source="s"),
        t.forced_failure(
            expects_queued_but_running,
            reason_code="run.stale_queued",
            source="s",
            expected_status=RunStatus.QUEUED,
        ),
    ]
    with write_session(engine) as session:
        won = t.apply_terminal_transitions(session, batch, now=utcnow())
    assert won == [running, queued]
    assert _run(engine, expects_queued_but_running).status == "running"
    with read_session(engine) as session:
        assert session.scalar(select(func.count()).select_from(AuditLog)) == 2


def test_block__gate_refusal_completes_as_blocked_with_audit(
    engine: Engine, ids: dict[str, int]
) -> None:
    run_id = make_run(engine, workspace_id=ids["workspace_id"], tenant_id=ids["tenant_id"])
    with write_session(engine) as session:
        assert t.block(
            session,
            run_id,
            reason_code=ReasonCode.EXECUTION_TENANT_INACTIVE,
            source="gate",
            evidence={"checks": {"tenant_active": False}},
            now=utcnow(),
        )
    run = _run(engine, run_id)
    assert (run.status, run.outcome) == ("completed", "blocked")
    assert run.context["legitimacy"]["reason_code"] == "execution.tenant_inactive"
    assert [a.action for a in _audits(engine, run_id)] == ["operation_run.blocked"]


def test_cancel__revoked_run_completes_as_cancelled(engine: Engine, ids: dict[str, int]) -> None:
    run_id = make_run(engine, workspace_id=ids["workspace_id"], status="running")
    with write_session(engine) as session:
        assert t.cancel(session, run_id, source="bridge", now=utcnow())
    run = _run(engine, run_id)
    assert (run.status, run.outcome) == ("completed", "cancelled")
    assert run.context["bridge"]["reason_code"] == "run.cancelled"
    assert [a.action for a in _audits(engine, run_id)] == ["operation_run.cancelled"]


def test_complete__only_a_running_run_completes_and_without_audit(
    engine: Engine, ids: dict[str, int]
) -> None:
    queued = make_run(engine, workspace_id=ids["workspace_id"])
    running = make_run(engine, workspace_id=ids["workspace_id"], status="running")
    with write_session(engine) as session:
        assert not t.complete(
            session, queued, outcome=RunOutcome.SUCCEEDED, now=utcnow(), **_owner(engine, queued)
        )
        assert t.complete(
            session,
            running,
            outcome="partially_succeeded",
            summary_counts={"items": 2},
            now=utcnow(),
            **_owner(engine, running),
        )
    run = _run(engine, running)
    assert (run.status, run.outcome, run.summary_counts) == (
        "completed",
        "partially_succeeded",
        {"items": 2},
    )
    assert run.failure_summary == []
    assert _audits(engine, running) == []
    assert _run(engine, queued).status == "queued"


def test_complete__refuses_an_outcome_a_task_cannot_claim(
    engine: Engine, ids: dict[str, int]
) -> None:
    run_id = make_run(engine, workspace_id=ids["workspace_id"], status="running")
    with pytest.raises(ValueError), write_session(engine) as session:
        t.complete(session, run_id, outcome="blocked", now=utcnow(), **_owner(engine, run_id))
    assert _run(engine, run_id).status == "running"


@pytest.mark.parametrize(
    "stranger",
    [{"attempt": 2}, {"celery_task_id": "another-task-id"}, {"attempt": 0}],
    ids=["a later attempt", "another task id", "an earlier attempt"],
)
def test_complete__a_delivery_that_does_not_own_the_run_changes_nothing(
    engine: Engine, ids: dict[str, int], stranger: dict[str, Any]
) -> None:
    run_id = make_run(engine, workspace_id=ids["workspace_id"], status="running")
    with write_session(engine) as session:
        won = t.complete(
            session,
            run_id,
            outcome="succeeded",
            now=utcnow(),
            **{**_owner(engine, run_id), **stranger},
        )
    assert not won
    assert (_run(engine, run_id).status, _run(engine, run_id).outcome) == ("running", "pending")


def test_force_fail__fenced_on_a_delivery_that_no_longer_owns_the_run(
    engine: Engine, ids: dict[str, int]
) -> None:
    run_id = make_run(engine, workspace_id=ids["workspace_id"], status="running", attempts=2)
    owner = _owner(engine, run_id)
    with write_session(engine) as session:
        assert not t.force_fail_non_terminal_run(
            session,
            run_id,
            reason_code=ReasonCode.JOB_FAILED,
            source="bridge",
            now=utcnow(),
            record_key="bridge",
            expected_attempt=1,  # the failure of attempt 1, reported after attempt 2 began
            expected_task_id=owner["celery_task_id"],
        )
    assert _run(engine, run_id).status == "running"
    assert _audits(engine, run_id) == []
