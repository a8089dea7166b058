"""The named SQL of a pass must say exactly what the Python reference says.

On PostgreSQL a pass (and its dry run) is one statement that scans, gates and builds the
evidence in the database; on SQLite the scan is SQL and the rest Python. The reference is
the per-run assessment (``OperationLifecycleReconciler.assessment``: freshness, gate,
evidence in Python). Same runs, same clock: the changes must be the same, check for check.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, select

from models import AuditLog, OperationRun, Tenant, Workspace, utcnow
from tests.factories import seed_gate_combinations
from worker.db import build_engine, read_session, write_session
from worker.lifecycle.evidence import iso
from worker.lifecycle.policy import LifecyclePolicy, TypePolicy
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
