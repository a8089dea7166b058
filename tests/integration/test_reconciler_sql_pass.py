"""PostgreSQL passes assess in SQL; they must say exactly what the Python assessment says.

The dry run takes the Python path (scan, bulk gate, evidence built per run); the real pass
on PostgreSQL is one statement that gates and builds evidence in the database. Same runs,
same clock: the changes must be the same, check for check.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import product
from typing import Any

import pytest
from sqlalchemy import Engine, select

from models import AuditLog, OperationRun, Tenant, User, Workspace, utcnow
from worker.db import build_engine, read_session, write_session
from worker.lifecycle.evidence import iso
from worker.lifecycle.policy import LifecyclePolicy, TypePolicy
from worker.lifecycle.reconciler import OperationLifecycleReconciler

pytestmark = pytest.mark.postgres

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


def _seed_every_gate_combination(engine: Engine, now: datetime) -> list[int]:
    run_ids = []
    with write_session(engine) as session:
        home, other = Workspace(name="home"), Workspace(name="other")
        session.add_all([home, other])
        session.flush()
        tenants = {
            "active": Tenant(workspace_id=home.id, name="a", is_active=True),
            "inactive": Tenant(workspace_id=home.id, name="i", is_active=False),
            "elsewhere": Tenant(workspace_id=other.id, name="e", is_active=True),
            "elsewhere_inactive": Tenant(workspace_id=other.id, name="ei", is_active=False),
        }
        users = {
            "active": User(email="a@example.test", is_active=True),
            "inactive": User(email="i@example.test", is_active=False),
        }
        session.add_all([*tenants.values(), *users.values()])
        session.flush()
        combos = product(
            [None, *tenants],
            [None, *users],
            ["queued", "running"],
            ["inventory.sync", "report.export"],
            [False, True],  # heartbeat present
        )
        for index, (tenant, user, status, type_, beat) in enumerate(combos):
            created = now - timedelta(seconds=3600 + index)
            run = OperationRun(
                workspace_id=home.id,
                tenant_id=tenants[tenant].id if tenant else None,
                user_id=users[user].id if user else None,
                type=type_,
                status=status,
                created_at=created,
                updated_at=created,
                started_at=created + timedelta(seconds=5) if status == "running" else None,
                last_heartbeat_at=(
                    created + timedelta(seconds=7) if beat and status == "running" else None
                ),
            )
            session.add(run)
            session.flush()
            run_ids.append(run.id)
        # Fresh runs the pass must leave alone.
        for type_ in ("inventory.sync", "report.export"):
            session.add(
                OperationRun(
                    workspace_id=home.id,
                    type=type_,
                    status="running",
                    started_at=now,
                    created_at=now,
                    updated_at=now,
                )
            )
    return run_ids


def test_sql_pass__changes_match_the_python_assessment_check_for_check(pg_url: str) -> None:
    engine = build_engine(pg_url)
    now = utcnow()
    stale_ids = _seed_every_gate_combination(engine, now)
    reconciler = OperationLifecycleReconciler(POLICY, now=lambda: now)

    predicted = reconciler.reconcile(engine, {"dry_run": True})  # the Python path
    applied = reconciler.reconcile(engine)  # the SQL path

    assert (applied.candidates, applied.reconciled, applied.skipped) == (
        len(stale_ids),
        len(stale_ids),
        0,
    )
    assert sorted(c.operation_run_id for c in applied.changes) == sorted(stale_ids)
    python = {c.operation_run_id: c.to_dict() for c in predicted.changes}
    sql = {c.operation_run_id: c.to_dict() for c in applied.changes}
    assert set(python) == set(sql)
    for run_id, change in sql.items():
        expected = {**python[run_id], "applied": True}
        assert _normalise(change) == _normalise(expected), run_id
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
        assert audits[str(run_id)].metadata_["reason_code"] == change["reason_code"]
        assert _normalise(audits[str(run_id)].metadata_["evidence"]) == _normalise(
            change["evidence"]
        )
    assert len(audits) == len(stale_ids)
    engine.dispose()


def test_sql_pass__scoped_by_tenant_and_workspace(pg_url: str) -> None:
    engine = build_engine(pg_url)
    now = utcnow()
    _seed_every_gate_combination(engine, now)
    reconciler = OperationLifecycleReconciler(POLICY, now=lambda: now)
    with read_session(engine) as session:
        tenant_id = session.scalar(select(Tenant.id).where(Tenant.name == "a"))
    result = reconciler.reconcile(engine, {"tenant_ids": [tenant_id], "workspace_ids": [1]})
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
    engine.dispose()


def test_sql_pass__timestamps_are_written_exactly_as_python_writes_them(pg_url: str) -> None:
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
    predicted = reconciler.reconcile(engine, {"dry_run": True}).changes[0].evidence
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
