"""The reconciler against real SQLite and PostgreSQL: every branch of the seed's
reconcile / reconcileRun / assessment, plus the contract's differences."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, insert, select

from models import AuditLog, OperationRun, Tenant, Workspace, utcnow
from tests.factories import make_run, seed_tenancy
from worker.db import read_session, write_session
from worker.errors import InvalidOptionsError
from worker.lifecycle import transitions
from worker.lifecycle.evidence import iso
from worker.lifecycle.execution import start_run
from worker.lifecycle.gate import QueuedExecutionLegitimacyGate
from worker.lifecycle.policy import LifecyclePolicy, TypePolicy, parse_policy
from worker.lifecycle.reconciler import OperationLifecycleReconciler, ReconcileOptions

POLICY = LifecyclePolicy(
    batch_limit=100,
    types=(
        TypePolicy(
            "inventory.sync", queued_stale_after_seconds=600, running_stale_after_seconds=3600
        ),
        TypePolicy(
            "report.export",
            queued_stale_after_seconds=600,
            running_stale_after_seconds=3600,
            direct_failed_bridge=False,
        ),
        TypePolicy(
            "archive.prune",
            queued_stale_after_seconds=600,
            running_stale_after_seconds=3600,
            scheduled_reconciliation=False,
        ),
        TypePolicy("long.job", queued_stale_after_seconds=600, running_stale_after_seconds=86_400),
    ),
)
STALE_QUEUED = 601
STALE_RUNNING = 3601


@pytest.fixture
def now() -> datetime:
    return utcnow()


@pytest.fixture
def ids(engine: Engine) -> dict[str, Any]:
    return seed_tenancy(engine, tenants=2)


@pytest.fixture
def reconciler(now: datetime) -> OperationLifecycleReconciler:
    return OperationLifecycleReconciler(POLICY, now=lambda: now)


def _run(engine: Engine, run_id: int) -> OperationRun:
    with read_session(engine) as session:
        run = session.get(OperationRun, run_id)
        assert run is not None
        session.expunge(run)  # keep it loaded after the read transaction ends
        return run


def _audits(engine: Engine, run_id: int | None = None) -> list[AuditLog]:
    with read_session(engine) as session:
        statement = select(AuditLog).order_by(AuditLog.id)
        if run_id is not None:
            statement = statement.where(AuditLog.resource_id == str(run_id))
        return list(session.scalars(statement).all())


def _statuses(engine: Engine) -> dict[int, tuple[str, str]]:
    with read_session(engine) as session:
        rows = session.execute(select(OperationRun.id, OperationRun.status, OperationRun.outcome))
        return {row.id: (row.status, row.outcome) for row in rows}


def _insert_runs(engine: Engine, rows: list[dict[str, Any]]) -> list[int]:
    with write_session(engine) as session:
        first = session.scalar(select(func.coalesce(func.max(OperationRun.id), 0)))
        session.execute(insert(OperationRun), rows)
        return list(
            session.scalars(
                select(OperationRun.id).where(OperationRun.id > first).order_by(OperationRun.id)
            )
        )


def _row(ids: dict[str, Any], now: datetime, **fields: Any) -> dict[str, Any]:
    created = fields.pop("created_at", now)
    return {
        "workspace_id": ids["workspace_id"],
        "tenant_id": ids["tenant_id"],
        "user_id": ids["user_id"],
        "type": "inventory.sync",
        "status": "queued",
        "outcome": "pending",
        "created_at": created,
        "updated_at": created,
        **fields,
    }


@pytest.fixture
def statements(engine: Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def _count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", _count)
    yield seen
    event.remove(engine, "before_cursor_execute", _count)


# -- reconcile: the seed's branches ---------------------------------------------------


def test_reconcile__stale_queued_past_threshold_is_failed_with_evidence_and_audit(
    engine: Engine, ids: dict[str, Any], now: datetime, reconciler: OperationLifecycleReconciler
) -> None:
    run_id = make_run(
        engine,
        workspace_id=ids["workspace_id"],
        tenant_id=ids["tenant_id"],
        user_id=ids["user_id"],
        now=now,
        age_seconds=STALE_QUEUED,
        context={"inputs": {"full": True}},
    )
    result = reconciler.reconcile(engine)
    assert (result.candidates, result.reconciled, result.skipped) == (1, 1, 0)

    run = _run(engine, run_id)
    assert (run.status, run.outcome, run.completed_at) == ("completed", "failed", now)
    assert run.context["inputs"] == {"full": True}
    record = run.context["reconciliation"]
    assert record["reason_code"] == "run.stale_queued"
    assert (
        record["reason_message"] == "Run was queued but never started within its lifecycle window."
    )
    assert record["source"] == "scheduled_reconciler"
    assert record["reconciled_at"] == iso(now)
    evidence = record["evidence"]
    assert evidence["evaluated_at"] == iso(now)
    assert evidence["freshness_state"] == "likely_stale"
    assert evidence["threshold_seconds"] == 600
    assert evidence["reference_time"] == iso(run.created_at)
    assert evidence["status"] == "queued"
    assert evidence["execution_legitimacy"]["allowed"] is True
    assert evidence["terminal_truth_path"] == "direct_and_scheduled"
    assert run.failure_summary == [
        {"reason_code": "run.stale_queued", "message": record["reason_message"]}
    ]
    (audit,) = _audits(engine, run_id)
    assert audit.action == "operation_run.force_failed"
    assert audit.resource_type == "operation_run"
    assert (audit.workspace_id, audit.tenant_id) == (ids["workspace_id"], ids["tenant_id"])
    assert audit.metadata_["reason_code"] == "run.stale_queued"
    assert audit.metadata_["source"] == "scheduled_reconciler"
    assert audit.metadata_["evidence"] == evidence


def test_reconcile__stale_running_past_threshold_is_failed_with_start_as_reference(
    engine: Engine, ids: dict[str, Any], now: datetime, reconciler: OperationLifecycleReconciler
) -> None:
    run_id = make_run(
        engine,
        workspace_id=ids["workspace_id"],
        status="running",
        now=now,
        age_seconds=90_000,
        started_age_seconds=STALE_RUNNING,
    )
    (change,) = reconciler.reconcile(engine).changes
    assert change.applied is True
    assert change.reason_code == "run.stale_running"
    assert change.reason_message == "Run started but did not finish within its lifecycle window."
    assert change.evidence["threshold_seconds"] == 3600
    assert change.evidence["reference_time"] == iso(now - timedelta(seconds=STALE_RUNNING))
    assert change.evidence["status"] == "running"
    run = _run(engine, run_id)
    assert (run.status, run.outcome) == ("completed", "failed")
    assert run.context["reconciliation"]["reason_code"] == "run.stale_running"


def test_reconcile__old_heartbeat_is_the_reference_of_a_stale_running_run(
    engine: Engine, ids: dict[str, Any], now: datetime, reconciler: OperationLifecycleReconciler
) -> None:
    make_run(
        engine,
        workspace_id=ids["workspace_id"],
        status="running",
        now=now,
        age_seconds=90_000,
        started_age_seconds=80_000,
        heartbeat_age_seconds=STALE_RUNNING,
    )
    (change,) = reconciler.reconcile(engine).changes
    assert change.evidence["reference_time"] == iso(now - timedelta(seconds=STALE_RUNNING))


def test_reconcile__running_run_that_still_heartbeats_is_not_failed(
    engine: Engine, ids: dict[str, Any], now: datetime, reconciler: OperationLifecycleReconciler
) -> None:
    run_id = make_run(
        engine,
        workspace_id=ids["workspace_id"],
        status="running",
        now=now,
        age_seconds=90_000,
        started_age_seconds=80_000,
        heartbeat_age_seconds=30,
    )
    assert reconciler.reconcile(engine).to_dict()["candidates"] == 0
    assert _statuses(engine)[run_id] == ("running", "pending")


def test_reconcile__completed_runs_are_ignored(
    engine: Engine, ids: dict[str, Any], now: datetime, reconciler: OperationLifecycleReconciler
) -> None:
    for outcome in ("succeeded", "failed", "blocked", "cancelled"):
        make_run(
            engine,
            workspace_id=ids["workspace_id"],
            status="completed",
            outcome=outcome,
            now=now,
            age_seconds=10**6,
        )
    before = _statuses(engine)
    result = reconciler.reconcile(engine)
    assert (result.candidates, result.reconciled, result.skipped) == (0, 0, 0)
    assert _statuses(engine) == before
    assert _audits(engine) == []


def test_reconcile__uncovered_types_are_ignored(
    engine: Engine, ids: dict[str, Any], now: datetime, reconciler: OperationLifecycleReconciler
) -> None:
    run_id = make_run(
        engine, workspace_id=ids["workspace_id"], type="other.thing", now=now, age_seconds=10**6
    )
    assert reconciler.reconcile(engine).candidates == 0
    assert _statuses(engine)[run_id] == ("queued", "pending")


def test_reconcile__scheduled_reconciliation_disabled_is_ignored(
    engine: Engine, ids: dict[str, Any], now: datetime, reconciler: OperationLifecycleReconciler
) -> None:
    run_id = make_run(
        engine, workspace_id=ids["workspace_id"], type="archive.prune", now=now, age_seconds=10**6
    )
    # Not even when asked for by name: the type opted out of reconciliation.
    assert reconciler.reconcile(engine, {"types": ["archive.prune"]}).candidates == 0
    assert reconciler.reconcile(engine).candidates == 0
    assert _statuses(engine)[run_id] == ("queued", "pending")


def test_reconcile__fresh_runs_are_ignored(
    engine: Engine, ids: dict[str, Any], now: datetime, reconciler: OperationLifecycleReconciler
) -> None:
    ws = ids["workspace_id"]
    queued = make_run(engine, workspace_id=ws, now=now, age_seconds=599)
    running = make_run(
        engine,
        workspace_id=ws,
        status="running",
        now=now,
        age_seconds=90_000,
        started_age_seconds=3599,
    )
    result = reconciler.reconcile(engine)
    assert (result.candidates, result.reconciled) == (0, 0)
    assert _statuses(engine) == {queued: ("queued", "pending"), running: ("running", "pending")}


def test_reconcile__terminal_truth_path_follows_direct_failed_bridge(
    engine: Engine, ids: dict[str, Any], now: datetime, reconciler: OperationLifecycleReconciler
) -> None:
    ws = ids["workspace_id"]
    both = make_run(
        engine, workspace_id=ws, type="inventory.sync", now=now, age_seconds=STALE_QUEUED
    )
    scheduled = make_run(
        engine, workspace_id=ws, type="report.export", now=now, age_seconds=STALE_QUEUED
    )
    paths = {
        c.operation_run_id: c.evidence["terminal_truth_path"]
        for c in reconciler.reconcile(engine).changes
    }
    assert paths == {both: "direct_and_scheduled", scheduled: "scheduled_only"}


def test_reconcile__dry_run_reports_applied_false_and_writes_nothing(
    engine: Engine, ids: dict[str, Any], now: datetime, reconciler: OperationLifecycleReconciler
) -> None:
    ws = ids["workspace_id"]
    stale = make_run(engine, workspace_id=ws, now=now, age_seconds=STALE_QUEUED)
    make_run(engine, workspace_id=ws, now=now, age_seconds=10)
    before = _run(engine, stale)
    result = reconciler.reconcile(engine, {"dry_run": True})
    assert (result.candidates, result.reconciled, result.skipped) == (1, 0, 0)
    (change,) = result.changes
    assert change.applied is False
    assert change.to_dict()["after"] == {
        "status": "completed",
        "outcome": "failed",
        "freshness_state": "reconciled_failed",
    }
    after = _run(engine, stale)
    assert (after.status, after.outcome, after.updated_at) == (
        "queued",
        "pending",
        before.updated_at,
    )
    assert after.context == {}
    assert after.failure_summary == []
    assert _audits(engine) == []


def test_reconcile__result_has_exactly_the_contract_shape(
    engine: Engine, ids: dict[str, Any], now: datetime, reconciler: OperationLifecycleReconciler
) -> None:
    run_id = make_run(
        engine,
        workspace_id=ids["workspace_id"],
        status="running",
        now=now,
        age_seconds=STALE_RUNNING,
    )
    data = reconciler.reconcile(engine).to_dict()
    assert list(data) == ["candidates", "reconciled", "skipped", "changes"]
    (change,) = data["changes"]
    assert set(change) == {
        "applied",
        "operation_run_id",
        "type",
        "action",
        "before",
        "after",
        "reason_code",
        "reason_message",
        "evidence",
    }
    assert change["action"] == "force_fail"
    assert change["operation_run_id"] == run_id
    assert change["type"] == "inventory.sync"
    assert change["before"] == {
        "status": "running",
        "outcome": "pending",
        "freshness_state": "likely_stale",
    }
    assert set(change["evidence"]) == {
        "evaluated_at",
        "freshness_state",
        "threshold_seconds",
        "reference_time",
        "status",
        "execution_legitimacy",
        "terminal_truth_path",
        "policy_sha256",
        "worker",
        "attempt",
        "attempts",
        "max_attempts",
    }
    assert (change["evidence"]["attempt"], change["evidence"]["max_attempts"]) == (1, 1)
    assert set(change["evidence"]["execution_legitimacy"]) == {"allowed", "reason_code", "checks"}


def test_reconcile__evidence_records_failed_legitimacy_but_reason_stays_stale(
    engine: Engine, now: datetime, reconciler: OperationLifecycleReconciler
) -> None:
    ids = seed_tenancy(engine, tenant_active=False, user_active=False)
    make_run(
        engine,
        workspace_id=ids["workspace_id"],
        tenant_id=ids["tenant_id"],
        user_id=ids["user_id"],
        now=now,
        age_seconds=STALE_QUEUED,
    )
    (change,) = reconciler.reconcile(engine).changes
    assert change.reason_code == "run.stale_queued"
    legitimacy = change.evidence["execution_legitimacy"]
    assert legitimacy["allowed"] is False
    assert legitimacy["reason_code"] == "execution.tenant_inactive"
    assert legitimacy["checks"]["tenant_active"] is False
    assert legitimacy["checks"]["user_active"] is False


def test_reconcile__counts_mix_of_stale_fresh_and_ignored_runs(
    engine: Engine, ids: dict[str, Any], now: datetime, reconciler: OperationLifecycleReconciler
) -> None:
    ws = ids["workspace_id"]
    for _ in range(3):
        make_run(engine, workspace_id=ws, now=now, age_seconds=STALE_QUEUED)
    make_run(engine, workspace_id=ws, now=now, age_seconds=5)
    make_run(
        engine, workspace_id=ws, status="completed", outcome="succeeded", now=now, age_seconds=10**5
    )
    result = reconciler.reconcile(engine)
    assert (result.candidates, result.reconciled, result.skipped, len(result.changes)) == (
        3,
        3,
        0,
        3,
    )
    # A second pass finds nothing: a reconciled run is never touched again.
    again = reconciler.reconcile(engine)
    assert (again.candidates, again.reconciled) == (0, 0)
    assert len(_audits(engine)) == 3


def test_reconcile__on_demand_source_is_recorded(
    engine: Engine, ids: dict[str, Any], now: datetime, reconciler: OperationLifecycleReconciler
) -> None:
    run_id = make_run(engine, workspace_id=ids["workspace_id"], now=now, age_seconds=STALE_QUEUED)
    reconciler.reconcile(engine, ReconcileOptions(source="on_demand_reconciler"))
    assert _run(engine, run_id).context["reconciliation"]["source"] == "on_demand_reconciler"
    assert _audits(engine, run_id)[0].metadata_["source"] == "on_demand_reconciler"


def test_reconcile__runs_in_the_callers_write_session(
    engine: Engine, ids: dict[str, Any], now: datetime, reconciler: OperationLifecycleReconciler
) -> None:
    run_id = make_run(engine, workspace_id=ids["workspace_id"], now=now, age_seconds=STALE_QUEUED)
    with pytest.raises(RuntimeError), write_session(engine) as session:
        assert reconciler.reconcile(session).reconciled == 1
        raise RuntimeError("caller rolls back")
    assert _statuses(engine)[run_id] == ("queued", "pending")
    assert _audits(engine) == []


# -- the contract's differences -------------------------------------------------------


def test_reconcile__fresh_runs_with_lower_ids_never_hide_stale_ones(
    engine: Engine, ids: dict[str, Any], now: datetime, reconciler: OperationLifecycleReconciler
) -> None:
    started = now - timedelta(hours=2)
    fresh = _insert_runs(
        engine,
        [
            _row(
                ids, now, type="long.job", status="running", created_at=started, started_at=started
            )
            for _ in range(600)
        ],
    )
    stale = _insert_runs(
        engine, [_row(ids, now, created_at=now - timedelta(seconds=STALE_QUEUED)) for _ in range(5)]
    )
    assert max(fresh) < min(stale)
    result = reconciler.reconcile(engine, {"limit": 100})
    assert (result.candidates, result.reconciled, result.skipped) == (5, 5, 0)
    assert sorted(c.operation_run_id for c in result.changes) == stale
    statuses = _statuses(engine)
    assert all(statuses[i] == ("running", "pending") for i in fresh)


def test_reconcile__limit_bounds_the_pass_in_id_order_and_is_capped_at_500(
    engine: Engine, ids: dict[str, Any], now: datetime, reconciler: OperationLifecycleReconciler
) -> None:
    stale = _insert_runs(
        engine,
        [_row(ids, now, created_at=now - timedelta(seconds=STALE_QUEUED)) for _ in range(510)],
    )
    first = reconciler.reconcile(engine, {"limit": 3})
    assert [c.operation_run_id for c in first.changes] == stale[:3]
    capped = reconciler.reconcile(engine, {"limit": 10_000})
    assert (capped.candidates, capped.reconciled) == (500, 500)
    assert reconciler.reconcile(engine).reconciled == 7


def test_reconcile__default_limit_is_the_policy_batch_limit(
    engine: Engine, ids: dict[str, Any], now: datetime
) -> None:
    policy = LifecyclePolicy(batch_limit=4, types=POLICY.types)
    _insert_runs(
        engine, [_row(ids, now, created_at=now - timedelta(seconds=STALE_QUEUED)) for _ in range(6)]
    )
    result = OperationLifecycleReconciler(policy, now=lambda: now).reconcile(engine)
    assert result.reconciled == 4


@pytest.mark.parametrize("scope", ["tenant", "workspace", "type"])
def test_reconcile__scoping_touches_nothing_else(
    engine: Engine, now: datetime, reconciler: OperationLifecycleReconciler, scope: str
) -> None:
    one = seed_tenancy(engine, tenants=2)
    other = seed_tenancy(engine)
    old = now - timedelta(seconds=10**5)
    target = _insert_runs(engine, [_row(one, now, created_at=old)])[0]
    others = _insert_runs(
        engine,
        [
            _row(one, now, created_at=old, tenant_id=one["tenant_ids"][1], type="report.export"),
            _row(other, now, created_at=old, type="report.export"),
            _row(one, now, created_at=old, tenant_id=None, type="report.export"),
        ],
    )
    options = {
        "tenant": {"tenant_ids": [one["tenant_id"]]},
        "workspace": {"workspace_ids": [one["workspace_id"]], "types": ["inventory.sync"]},
        "type": {"types": ["inventory.sync"]},
    }[scope]
    result = reconciler.reconcile(engine, options)
    assert [c.operation_run_id for c in result.changes] == [target]
    statuses = _statuses(engine)
    assert statuses[target] == ("completed", "failed")
    assert all(statuses[i] == ("queued", "pending") for i in others)
    assert [a.resource_id for a in _audits(engine)] == [str(target)]


def test_reconcile__workspace_scope_includes_workspace_level_runs(
    engine: Engine, now: datetime, reconciler: OperationLifecycleReconciler
) -> None:
    one, other = seed_tenancy(engine), seed_tenancy(engine)
    old = now - timedelta(seconds=10**5)
    mine = _insert_runs(engine, [_row(one, now, created_at=old, tenant_id=None, user_id=None)])
    theirs = _insert_runs(engine, [_row(other, now, created_at=old)])
    result = reconciler.reconcile(engine, {"workspace_ids": [one["workspace_id"]]})
    assert [c.operation_run_id for c in result.changes] == mine
    assert result.changes[0].evidence["execution_legitimacy"]["allowed"] is True
    assert _statuses(engine)[theirs[0]] == ("queued", "pending")


TEN_YEARS = 315_360_000


def test_reconcile__policy_at_its_bounds_dry_runs_and_reconciles(
    engine: Engine, ids: dict[str, Any], now: datetime
) -> None:
    # The largest policy that loads: each threshold ten years, the interval one day. Its
    # cutoffs must fit a datetime and PostgreSQL's int recordset column in the real pass.
    policy = parse_policy(
        "[reconciliation]\ninterval_seconds = 86400\nbatch_limit = 500\n"
        '[types."inventory.sync"]\n'
        f"queued_stale_after_seconds = {TEN_YEARS}\nrunning_stale_after_seconds = {TEN_YEARS}\n"
    )
    ws = ids["workspace_id"]
    stale = make_run(
        engine,
        workspace_id=ws,
        status="running",
        now=now,
        age_seconds=TEN_YEARS + 60,
        started_age_seconds=TEN_YEARS + 30,
    )
    fresh = make_run(engine, workspace_id=ws, now=now, age_seconds=TEN_YEARS - 60)
    reconciler = OperationLifecycleReconciler(policy, now=lambda: now)

    dry = reconciler.reconcile(engine, ReconcileOptions(dry_run=True))
    assert [c.operation_run_id for c in dry.changes] == [stale]
    result = reconciler.reconcile(engine)

    assert (result.candidates, result.reconciled) == (1, 1)
    (change,) = result.changes
    assert change.evidence["threshold_seconds"] == TEN_YEARS
    assert _run(engine, stale).status == "completed"
    assert _run(engine, fresh).status == "queued"


def test_reconcile__invalid_options_fail_before_any_statement(
    engine: Engine,
    ids: dict[str, Any],
    now: datetime,
    reconciler: OperationLifecycleReconciler,
    statements: list[str],
) -> None:
    for bad in ({"limit": 0}, {"tenant_ids": [-1]}, {"types": ["not.covered"]}, {"dry": True}):
        with pytest.raises(InvalidOptionsError):
            reconciler.reconcile(engine, bad)
    assert statements == []


def test_reconcile__statement_count_of_a_500_run_pass_is_a_small_constant(
    engine: Engine,
    ids: dict[str, Any],
    now: datetime,
    reconciler: OperationLifecycleReconciler,
    statements: list[str],
) -> None:
    # Spread over many tenants and users, so per-row gate lookups would show.
    with write_session(engine) as session:
        tenants = [
            Tenant(workspace_id=ids["workspace_id"], name=f"t{i}", is_active=i % 2 == 0)
            for i in range(50)
        ]
        session.add_all(tenants)
        session.flush()
        tenant_ids = [t.id for t in tenants]
    old = now - timedelta(seconds=10**5)

    def seed(count: int) -> None:
        _insert_runs(
            engine,
            [
                _row(ids, now, created_at=old, tenant_id=tenant_ids[i % 50], status="queued")
                if i % 2
                else _row(ids, now, created_at=old, started_at=old, status="running")
                for i in range(count)
            ],
        )

    seed(5)
    statements.clear()
    small = reconciler.reconcile(engine)
    small_count = len(statements)

    seed(500)
    statements.clear()
    large = reconciler.reconcile(engine, {"limit": 500})
    assert (small.reconciled, large.reconciled) == (5, 500)
    assert len(statements) == small_count
    assert len(statements) <= 8, statements
    assert len(_audits(engine)) == 505


def test_drain__repeats_passes_until_one_reconciles_nothing(
    engine: Engine, ids: dict[str, Any], now: datetime, reconciler: OperationLifecycleReconciler
) -> None:
    _insert_runs(
        engine,
        [_row(ids, now, created_at=now - timedelta(seconds=STALE_QUEUED)) for _ in range(25)],
    )
    result = reconciler.drain(engine, {"limit": 10})
    assert (result.candidates, result.reconciled, result.skipped, result.passes) == (25, 25, 0, 4)
    assert len(result.changes) == 25
    assert result.to_dict()["passes"] == 4
    assert set(result.to_dict()) == {"candidates", "reconciled", "skipped", "changes", "passes"}


def test_drain__refuses_dry_run(engine: Engine, reconciler: OperationLifecycleReconciler) -> None:
    with pytest.raises(InvalidOptionsError, match="dry_run"):
        reconciler.drain(engine, {"dry_run": True})


# -- reconcile_run / assessment on a loaded run ---------------------------------------


def test_reconcile_run__returns_none_for_runs_that_need_nothing(
    engine: Engine, ids: dict[str, Any], now: datetime, reconciler: OperationLifecycleReconciler
) -> None:
    ws = ids["workspace_id"]
    runs = [
        make_run(
            engine,
            workspace_id=ws,
            status="completed",
            outcome="succeeded",
            now=now,
            age_seconds=10**5,
        ),
        make_run(engine, workspace_id=ws, type="other.thing", now=now, age_seconds=10**5),
        make_run(engine, workspace_id=ws, type="archive.prune", now=now, age_seconds=10**5),
        make_run(engine, workspace_id=ws, now=now, age_seconds=10),
    ]
    with write_session(engine) as session:
        for run_id in runs:
            run = session.get(OperationRun, run_id)
            assert run is not None
            assert reconciler.assessment(session, run) is None
            assert reconciler.reconcile_run(session, run) is None
    assert _audits(engine) == []


def test_reconcile_run__dry_run_returns_the_change_and_writes_nothing(
    engine: Engine, ids: dict[str, Any], now: datetime, reconciler: OperationLifecycleReconciler
) -> None:
    run_id = make_run(engine, workspace_id=ids["workspace_id"], now=now, age_seconds=STALE_QUEUED)
    with write_session(engine) as session:
        run = session.get(OperationRun, run_id)
        assert run is not None
        change = reconciler.reconcile_run(session, run, dry_run=True)
    assert change is not None
    assert (change.applied, change.reason_code) == (False, "run.stale_queued")
    assert _statuses(engine)[run_id] == ("queued", "pending")
    assert _audits(engine) == []


def test_assessment__stale_run_has_reason_message_and_evidence(
    engine: Engine, ids: dict[str, Any], now: datetime, reconciler: OperationLifecycleReconciler
) -> None:
    run_id = make_run(
        engine,
        workspace_id=ids["workspace_id"],
        status="running",
        now=now,
        age_seconds=STALE_RUNNING,
    )
    with read_session(engine) as session:
        run = session.get(OperationRun, run_id)
        assert run is not None
        assessment = reconciler.assessment(session, run)
    assert assessment is not None
    data = assessment.to_dict()
    assert data["should_reconcile"] is True
    assert data["reason_code"] == "run.stale_running"
    assert data["evidence"]["reference_time"] == iso(run.created_at)  # never started
    assert data["evidence"]["threshold_seconds"] == 3600


def test_reconcile_run__run_completed_by_another_connection_after_the_read_is_not_overwritten(
    engine: Engine, ids: dict[str, Any], now: datetime, reconciler: OperationLifecycleReconciler
) -> None:
    run_id = make_run(
        engine,
        workspace_id=ids["workspace_id"],
        status="running",
        now=now,
        age_seconds=STALE_RUNNING,
        started_age_seconds=STALE_RUNNING,
    )
    loaded = _run(engine, run_id)
    # The candidate read saw it stale...
    with read_session(engine) as session:
        assert reconciler.assessment(session, loaded) is not None
    # ...then the task finished on its own through another connection...
    with write_session(engine) as session:
        assert transitions.complete(
            session,
            run_id,
            outcome="succeeded",
            attempt=loaded.attempts,
            celery_task_id=str(loaded.celery_task_id),
            now=utcnow(),
        )
    # ...so the write loses the compare-and-set and the completion stands.
    with write_session(engine) as session:
        assert reconciler.reconcile_run(session, loaded) is None
    run = _run(engine, run_id)
    assert (run.status, run.outcome) == ("completed", "succeeded")
    assert "reconciliation" not in run.context
    assert run.failure_summary == []
    assert _audits(engine) == []


def test_reconcile_run__queued_run_started_after_the_read_is_not_failed_as_never_started(
    engine: Engine, ids: dict[str, Any], now: datetime, reconciler: OperationLifecycleReconciler
) -> None:
    run_id = make_run(engine, workspace_id=ids["workspace_id"], now=now, age_seconds=STALE_QUEUED)
    loaded = _run(engine, run_id)
    with write_session(engine) as session:
        gate = QueuedExecutionLegitimacyGate(POLICY)
        task_id = str(loaded.celery_task_id)
        started = start_run(session, run_id, gate=gate, celery_task_id=task_id, retries=0, now=now)
        assert started is not None
    with write_session(engine) as session:
        assert reconciler.reconcile_run(session, loaded) is None
    assert _statuses(engine)[run_id] == ("running", "pending")
    assert _audits(engine) == []


# -- the gate, in bulk ----------------------------------------------------------------


def test_gate__evaluate_many_checks_each_run_with_two_queries(
    engine: Engine, now: datetime, reconciler: OperationLifecycleReconciler, statements: list[str]
) -> None:

    ok = seed_tenancy(engine)
    inactive = seed_tenancy(engine, tenant_active=False, user_active=False)
    with write_session(engine) as session:
        elsewhere = Workspace(name="elsewhere")
        session.add(elsewhere)
        session.flush()
        foreign = Tenant(workspace_id=elsewhere.id, name="foreign")
        session.add(foreign)
        session.flush()
        foreign_id = foreign.id
    ws = ok["workspace_id"]
    runs = {
        "allowed": make_run(
            engine, workspace_id=ws, tenant_id=ok["tenant_id"], user_id=ok["user_id"]
        ),
        "workspace_level": make_run(engine, workspace_id=ws),
        "terminal": make_run(engine, workspace_id=ws, status="completed", outcome="succeeded"),
        "tenant_inactive": make_run(
            engine, workspace_id=inactive["workspace_id"], tenant_id=inactive["tenant_id"]
        ),
        "mismatch": make_run(engine, workspace_id=ws, tenant_id=foreign_id),
        "user_inactive": make_run(engine, workspace_id=ws, user_id=inactive["user_id"]),
        "uncovered": make_run(engine, workspace_id=ws, type="other.thing"),
    }
    gate = QueuedExecutionLegitimacyGate(POLICY)
    with read_session(engine) as session:
        loaded = list(session.scalars(select(OperationRun)))
        statements.clear()
        results = gate.evaluate_many(session, loaded)
        assert len(statements) == 2
        single = gate.evaluate(session, next(r for r in loaded if r.id == runs["mismatch"]))
    reasons = {name: results[run_id].reason_code for name, run_id in runs.items()}
    assert reasons == {
        "allowed": None,
        "workspace_level": None,
        "terminal": "execution.run_terminal",
        "tenant_inactive": "execution.tenant_inactive",
        "mismatch": "execution.tenant_workspace_mismatch",
        "user_inactive": "execution.user_inactive",
        "uncovered": "execution.type_not_covered",
    }
    assert results[runs["allowed"]].allowed is True
    assert all(results[runs["workspace_level"]].checks.values())
    assert results[runs["mismatch"]].checks["tenant_exists"] is True
    assert single == results[runs["mismatch"]]
