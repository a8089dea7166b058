"""The named SQL of a pass must say exactly what the Python reference says.

On PostgreSQL a pass (and its dry run) is one statement that scans, gates and builds the
evidence in the database; on SQLite the scan is SQL and the rest Python. The reference is
the per-run assessment (``OperationLifecycleReconciler.assessment``: freshness, gate,
evidence in Python). Same runs, same clock: the changes must be the same, check for check.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select

from models import AuditLog, OperationRun, Tenant, Workspace, utcnow
from tests.factories import make_run, make_worker, seed_gate_combinations, seed_tenancy
from worker.db import build_engine, read_session, write_session
from worker.lifecycle.evidence import iso
from worker.lifecycle.policy import LifecyclePolicy, TypePolicy, WorkerPolicy
from worker.lifecycle.reconciler import OperationLifecycleReconciler
from worker.lifecycle.reconciler.assessment import change_of

POLICY = LifecyclePolicy(
    batch_limit=500,
    types=(
        TypePolicy(
            "inventory.sync", queued_stale_after_seconds=60, running_stale_after_seconds=120
        ),
        TypePolicy(
            "report.export",
            queued_stale_after_seconds=30,
            running_stale_after_seconds=90,
            direct_failed_bridge=False,
        ),
    ),
)


def _normalise(value: Any) -> Any:
    """Timestamps compare as instants: the database and Python format fractions differently."""
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, str) and len(value) >= 19 and value[4] == "-" and value[10] == "T":
        return datetime.fromisoformat(value)
    return value


def _reference(engine: Engine, reconciler: OperationLifecycleReconciler) -> dict[int, Any]:
    """The Python reference's verdict on every run: its change, for the runs it would fail."""
    with read_session(engine) as session:
        predicted = {}
        for run in session.scalars(select(OperationRun)).all():
            assessment = reconciler.assessment(session, run)
            if assessment is not None:
                predicted[run.id] = change_of(run, assessment, applied=True).to_dict()
    return predicted


def test_pass__changes_match_the_python_reference_check_for_check(engine: Engine) -> None:
    """The named SQL (reconcile_pass on PostgreSQL; scan_stale_runs on SQLite) selects and
    describes exactly the runs the Python reference would fail, and a dry run says the
    same without writing."""
    now = utcnow()
    stale_ids = seed_gate_combinations(
        engine,
        types=("inventory.sync", "report.export"),
        heartbeats=(False, True),
        now=now,
        age_seconds=3600,
    )
    fresh_ids = seed_gate_combinations(
        engine, types=("inventory.sync", "report.export"), now=now, spacing_seconds=0.01
    )
    reconciler = OperationLifecycleReconciler(POLICY, now=lambda: now)
    expected = _reference(engine, reconciler)
    assert sorted(expected) == sorted(stale_ids)

    dry = reconciler.reconcile(engine, {"dry_run": True})
    applied = reconciler.reconcile(engine)

    assert (applied.candidates, applied.reconciled, applied.skipped) == (
        len(stale_ids),
        len(stale_ids),
        0,
    )
    sql = {c.operation_run_id: c.to_dict() for c in applied.changes}
    preview = {c.operation_run_id: c.to_dict() for c in dry.changes}
    assert set(sql) == set(preview) == set(expected)
    for run_id, change in sql.items():
        assert _normalise(change) == _normalise(expected[run_id]), run_id
        assert _normalise(preview[run_id]) == _normalise({**expected[run_id], "applied": False})
    # Which rules decided, in every change: the policy's hash.
    assert {c["evidence"]["policy_sha256"] for c in sql.values()} == {POLICY.sha256}
    # Every gate verdict is exercised, not just "allowed".
    verdicts = {c["evidence"]["execution_legitimacy"]["reason_code"] for c in sql.values()}
    assert verdicts == {
        None,
        "execution.tenant_inactive",
        "execution.tenant_workspace_mismatch",
        "execution.user_inactive",
    }

    # What was written matches what was reported.
    with read_session(engine) as session:
        runs = {r.id: r for r in session.scalars(select(OperationRun)).all()}
        audits = {a.resource_id: a for a in session.scalars(select(AuditLog)).all()}
    for run_id, change in sql.items():
        record = runs[run_id].context["reconciliation"]
        assert record["reason_code"] == change["reason_code"]
        assert _normalise(record["evidence"]) == _normalise(change["evidence"])
        assert _normalise(record["reconciled_at"]) == now
        assert runs[run_id].failure_summary == [
            {"reason_code": change["reason_code"], "message": change["reason_message"]}
        ]
        audit = audits[str(run_id)]
        assert audit.action == "operation_run.force_failed"
        assert audit.metadata_["reason_code"] == change["reason_code"]
        assert audit.metadata_["outcome"] == "failed"
        assert _normalise(audit.metadata_["evidence"]) == _normalise(change["evidence"])
    assert len(audits) == len(stale_ids)
    assert all(runs[i].status != "completed" for i in fresh_ids)


def test_pass__scoped_by_tenant_and_workspace(engine: Engine) -> None:
    now = utcnow()
    seed_gate_combinations(
        engine,
        types=("inventory.sync", "report.export"),
        heartbeats=(False, True),
        now=now,
        age_seconds=3600,
    )
    reconciler = OperationLifecycleReconciler(POLICY, now=lambda: now)
    with read_session(engine) as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == "a"))
    with read_session(engine) as session:
        home = session.scalar(select(Workspace.id).where(Workspace.name == "home"))
    result = reconciler.reconcile(engine, {"tenant_ids": [tenant_id], "workspace_ids": [home]})
    with read_session(engine) as session:
        mine = set(
            session.scalars(
                select(OperationRun.id).where(
                    OperationRun.tenant_id == tenant_id, OperationRun.status == "completed"
                )
            ).all()
        )
        others_done = session.scalars(
            select(OperationRun.id).where(
                OperationRun.status == "completed", OperationRun.tenant_id != tenant_id
            )
        ).all()
    assert {c.operation_run_id for c in result.changes} == mine
    assert len(mine) == 24
    assert others_done == []


@pytest.mark.postgres
def test_pass__timestamps_are_written_exactly_as_python_writes_them(pg_url: str) -> None:
    # Fractions with trailing zeros (and none at all) are where formats drift apart.
    engine = build_engine(pg_url)
    now = datetime(2026, 11, 26, 12, 0, 0, 120000, tzinfo=UTC)
    created = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)
    with write_session(engine) as session:
        workspace = Workspace(name="w")
        session.add(workspace)
        session.flush()
        session.add(
            OperationRun(
                workspace_id=workspace.id,
                type="inventory.sync",
                status="queued",
                created_at=created,
                updated_at=created,
            )
        )
    reconciler = OperationLifecycleReconciler(POLICY, now=lambda: now)
    with read_session(engine) as session:
        loaded = session.scalars(select(OperationRun)).one()
        reference = reconciler.assessment(session, loaded)
    assert reference is not None
    predicted = reference.evidence
    (change,) = reconciler.reconcile(engine).changes
    assert change.evidence["evaluated_at"] == predicted["evaluated_at"] == iso(now)
    assert change.evidence["evaluated_at"] == "2026-11-26T12:00:00.120000+00:00"
    assert change.evidence["reference_time"] == predicted["reference_time"] == iso(created)
    with read_session(engine) as session:
        run = session.scalars(select(OperationRun)).one()
    assert run.context["reconciliation"]["reconciled_at"] == "2026-11-26T12:00:00.120000+00:00"
    assert run.context["reconciliation"]["evidence"]["reference_time"] == (
        "2026-11-26T10:00:00.000000+00:00"
    )
    engine.dispose()


WORKERS_POLICY = LifecyclePolicy(
    batch_limit=500,
    types=(
        *POLICY.types,
        TypePolicy(
            "manual.only",
            queued_stale_after_seconds=60,
            running_stale_after_seconds=120,
            scheduled_reconciliation=False,
        ),
    ),
    workers=WorkerPolicy(heartbeat_interval_seconds=10, lost_after_seconds=60),
)


def test_pass__worker_liveness_matches_the_python_reference(engine: Engine) -> None:
    """run.worker_lost where the worker that started a running run is lost or stopped,
    the window elsewhere -- the same runs, reasons and evidence from the named SQL as from
    the Python reference, on both backends."""
    now = utcnow()
    tenancy = seed_tenancy(engine)
    ws = tenancy["workspace_id"]
    alive = make_worker(engine, now=now, heartbeat_age_seconds=5, nodename="celery@alive")
    edge = make_worker(engine, now=now, heartbeat_age_seconds=59, nodename="celery@edge")
    lost = make_worker(engine, now=now, heartbeat_age_seconds=61, nodename="celery@lost")
    stopped = make_worker(
        engine, now=now, heartbeat_age_seconds=1, stopped_age_seconds=1, nodename="celery@stop"
    )

    def running(worker_id: int | None, *, age: float = 10, **fields: Any) -> int:
        return make_run(
            engine,
            workspace_id=ws,
            status="running",
            age_seconds=age,
            started_age_seconds=age,
            worker_id=worker_id,
            now=now,
            **fields,
        )

    expected_reasons = {
        running(alive): None,
        running(edge): None,
        running(lost): "run.worker_lost",
        running(stopped): "run.worker_lost",
        running(None): None,
        # Past its window on a live worker: a hung body, judged by the window.
        running(alive, age=600): "run.stale_running",
        # Past its window and its worker is gone: the worker's loss is what happened.
        running(lost, age=600): "run.worker_lost",
        running(None, age=600): "run.stale_running",
        # Waiting for a retry that may start on any worker: its due time decides.
        running(lost, retry_due_at=now + timedelta(seconds=30)): None,
        running(lost, age=900, retry_due_at=now - timedelta(seconds=600)): "run.stale_running",
        # A type the reconciler never fails, whatever its worker.
        running(lost, type="manual.only"): None,
        running(stopped, type="report.export"): "run.worker_lost",
    }
    reconciler = OperationLifecycleReconciler(WORKERS_POLICY, now=lambda: now)
    expected = _reference(engine, reconciler)
    assert {run_id: c["reason_code"] for run_id, c in expected.items()} == {
        run_id: reason for run_id, reason in expected_reasons.items() if reason is not None
    }

    dry = reconciler.reconcile(engine, {"dry_run": True})
    applied = reconciler.reconcile(engine)
    sql = {c.operation_run_id: c.to_dict() for c in applied.changes}
    preview = {c.operation_run_id: c.to_dict() for c in dry.changes}
    assert set(sql) == set(preview) == set(expected)
    for run_id, change in sql.items():
        assert _normalise(change) == _normalise(expected[run_id]), run_id
        assert _normalise(preview[run_id]) == _normalise({**expected[run_id], "applied": False})

    lost_change = next(
        c
        for c in sql.values()
        if c["evidence"].get("worker", {})
        and (c["evidence"]["worker"]["nodename"] == "celery@lost")
    )
    evidence = lost_change["evidence"]
    assert evidence["threshold_seconds"] == 60
    assert set(evidence["worker"]) == {
        "id",
        "nodename",
        "hostname",
        "pid",
        "last_heartbeat_at",
        "stopped_at",
    }
    assert _normalise(evidence["reference_time"]) == _normalise(
        evidence["worker"]["last_heartbeat_at"]
    )
    stopped_change = next(
        c for c in sql.values() if (c["evidence"].get("worker") or {}).get("id") == stopped
    )
    assert stopped_change["evidence"]["worker"]["stopped_at"] is not None
    with read_session(engine) as session:
        audits = session.scalars(select(AuditLog)).all()
    assert sorted(int(a.resource_id) for a in audits) == sorted(sql)
