"""The legitimacy gate over an application's own tables ([tenancy]), with runwarden in its
own schema: the Python reference, the reconcile pass and the task start give the same
verdict for every combination of tenant and user, in each form of ``active``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine, inspect, select

from models import OperationRun, utcnow
from tests.hostdb import (
    ACTIVE_FORMS,
    APPLICATION_DDL,
    HOST_TENANTS,
    MISSING_TENANT,
    ORGANIZATIONS_DDL,
    empty_database,
    expected_reason,
    schema_checksum,
    seed_host_rows,
    seed_host_runs,
    set_active,
    tenancy_toml,
)
from tests.integration import test_reconciler_parity as parity
from tests.servers import PostgresServer
from worker import db
from worker.errors import PolicyError
from worker.lifecycle.execution import StartDecision, start_execution
from worker.lifecycle.gate import QueuedExecutionLegitimacyGate
from worker.lifecycle.policy import LifecyclePolicy, parse_policy
from worker.lifecycle.reconciler import OperationLifecycleReconciler
from worker.migrate import upgrade
from worker.settings import get_settings

pytestmark = pytest.mark.postgres

SCHEMA = "runwarden"
TYPES_TOML = """
[reconciliation]
batch_limit = 500

[types."inventory.sync"]
queued_stale_after_seconds = 60
running_stale_after_seconds = 120

[types."report.export"]
queued_stale_after_seconds = 30
running_stale_after_seconds = 90
direct_failed_bridge = false
"""
ALL_VERDICTS = {
    None,
    "execution.tenant_missing",
    "execution.tenant_inactive",
    "execution.tenant_workspace_mismatch",
    "execution.user_inactive",
}


@dataclass
class HostDatabase:
    url: str
    engine: Engine
    policy: LifecyclePolicy
    application_checksum: str


def _configure(monkeypatch: pytest.MonkeyPatch, url: str) -> Engine:
    monkeypatch.setenv("RUNWARDEN_DATABASE_URL", url)
    monkeypatch.setenv("RUNWARDEN_DB_SCHEMA", SCHEMA)
    get_settings.cache_clear()
    return db.get_engine(url)


@pytest.fixture(params=sorted(ACTIVE_FORMS))
def host(
    request: pytest.FixtureRequest,
    postgres_server: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[HostDatabase]:
    with empty_database(postgres_server, *APPLICATION_DDL, *ORGANIZATIONS_DDL) as url:
        seed_host_rows(url)
        policy = parse_policy(
            TYPES_TOML + tenancy_toml(ACTIVE_FORMS[request.param]), source="policy.toml"
        )
        before = schema_checksum(url)
        upgrade(url, schema=SCHEMA, policy=policy)
        yield HostDatabase(url, _configure(monkeypatch, url), policy, before)
        get_settings.cache_clear()


def test_host_tenancy__pass_and_dry_run_match_the_python_reference(host: HostDatabase) -> None:
    now = utcnow()
    stale = seed_host_runs(
        host.engine,
        types=("inventory.sync", "report.export"),
        heartbeats=(False, True),
        now=now,
        age_seconds=3600,
    )
    fresh = seed_host_runs(host.engine, types=("inventory.sync",), now=now, spacing_seconds=0.01)
    reconciler = OperationLifecycleReconciler(host.policy, now=lambda: now)
    expected = parity._reference(host.engine, reconciler)
    assert sorted(expected) == sorted(stale)

    dry = reconciler.reconcile(host.engine, {"dry_run": True})
    applied = reconciler.reconcile(host.engine)

    assert applied.reconciled == len(stale)
    sql = {c.operation_run_id: c.to_dict() for c in applied.changes}
    preview = {c.operation_run_id: c.to_dict() for c in dry.changes}
    assert set(sql) == set(preview) == set(expected)
    for run_id, change in sql.items():
        assert parity._normalise(change) == parity._normalise(expected[run_id]), run_id
        assert parity._normalise(preview[run_id]) == parity._normalise(
            {**expected[run_id], "applied": False}
        )
    verdicts = {c["evidence"]["execution_legitimacy"]["reason_code"] for c in sql.values()}
    assert verdicts == ALL_VERDICTS
    with db.read_session(host.engine) as session:
        done = session.scalars(select(OperationRun.id).where(OperationRun.status == "completed"))
        assert set(done) == set(stale)
    assert set(fresh).isdisjoint(sql)
    # The application's tables were read, never written.
    assert schema_checksum(host.url) == host.application_checksum


def test_host_tenancy__task_start_gives_the_python_verdict(host: HostDatabase) -> None:
    run_ids = seed_host_runs(
        host.engine, types=("inventory.sync",), statuses=("queued",), now=utcnow()
    )
    gate = QueuedExecutionLegitimacyGate(host.policy)
    seen = set()
    for run_id in run_ids:
        with db.read_session(host.engine) as session:
            run = session.get(OperationRun, run_id)
            assert run is not None
            task_id = run.celery_task_id
            assert task_id is not None
            verdict = gate.evaluate(session, run)
            assert verdict.reason_code == expected_reason(run.tenant_id, run.user_id)
        with db.statement_session(host.engine) as session:
            start = start_execution(session, run_id, gate=gate, celery_task_id=task_id, retries=0)
        seen.add(verdict.reason_code)
        if verdict.allowed:
            assert start.decision is StartDecision.STARTED, run_id
        else:
            assert (start.decision, start.reason_code) == (
                StartDecision.BLOCKED,
                verdict.reason_code,
            ), run_id
            with db.read_session(host.engine) as session:
                blocked = session.get(OperationRun, run_id)
                assert blocked is not None
                assert (blocked.status, blocked.outcome) == ("completed", "blocked")
    assert seen == ALL_VERDICTS


def test_host_tenancy__deactivating_an_organization_blocks_its_queued_runs(
    host: HostDatabase,
) -> None:
    gate = QueuedExecutionLegitimacyGate(host.policy)
    tenant = HOST_TENANTS["active"]
    runs = seed_host_runs(
        host.engine, types=("inventory.sync",), statuses=("queued",), now=utcnow()
    )
    with db.read_session(host.engine) as session:
        mine = list(
            session.execute(
                select(OperationRun.id, OperationRun.celery_task_id).where(
                    OperationRun.id.in_(runs),
                    OperationRun.tenant_id == tenant,
                    OperationRun.user_id.is_(None),
                )
            )
        )
    assert mine
    with db.read_session(host.engine) as session:
        before = gate.evaluate_many(session, session.scalars(select(OperationRun)))
    assert all(before[run_id].allowed for run_id, _ in mine)

    set_active(host.url, "organizations", tenant, False)

    for run_id, task_id in mine:
        with db.statement_session(host.engine) as session:
            start = start_execution(session, run_id, gate=gate, celery_task_id=task_id, retries=0)
        assert (start.decision, start.reason_code) == (
            StartDecision.BLOCKED,
            "execution.tenant_inactive",
        )


def test_host_tenancy__no_foreign_keys_to_runwardens_tables_until_the_mapping_goes(
    host: HostDatabase,
) -> None:
    tables = inspect(host.engine)
    # Only the key to runwarden's own workers table is left.
    assert [fk["referred_table"] for fk in tables.get_foreign_keys("operation_runs")] == [
        "runwarden_workers"
    ]
    # A run names the application's ids, which runwarden's own tables never heard of.
    seed_host_runs(host.engine, types=("inventory.sync",), statuses=("queued",), now=utcnow())
    with db.read_session(host.engine) as session:
        assert MISSING_TENANT in set(session.scalars(select(OperationRun.tenant_id)))

    # The views are the mapping's: a policy without [tenancy] is refused until migrated.
    without = parse_policy(TYPES_TOML, source="plain.toml")
    with pytest.raises(PolicyError, match=r"^plain\.toml: tenancy: .*run `runwarden migrate`$"):
        db.check_gate(host.engine, host.url, without)
    db.check_gate(host.engine, host.url, host.policy)


def test_host_tenancy__removing_the_mapping_brings_the_foreign_keys_back(
    postgres_server: PostgresServer,
) -> None:
    with empty_database(postgres_server, *ORGANIZATIONS_DDL) as url:
        mapped = parse_policy(TYPES_TOML + tenancy_toml(), source="mapped.toml")
        upgrade(url, schema=SCHEMA, policy=mapped)
        upgrade(url, schema=SCHEMA, policy=parse_policy(TYPES_TOML, source="plain.toml"))
        engine = db.build_engine(url, schema=SCHEMA)
        try:
            names = {fk["name"] for fk in inspect(engine).get_foreign_keys("operation_runs")}
            assert names == {
                "fk_operation_runs_workspace_id_workspaces",
                "fk_operation_runs_tenant_id_tenants",
                "fk_operation_runs_user_id_users",
                "fk_operation_runs_worker_id_runwarden_workers",
            }
        finally:
            engine.dispose()


def test_schema__the_reconcile_pass_in_a_schema_matches_the_python_reference(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parity test of the default layout, run on runwarden's tables in a schema beside
    an application's own users, tenants and workspaces."""
    with empty_database(postgres_server, *APPLICATION_DDL) as url:
        upgrade(url, schema=SCHEMA)
        before = schema_checksum(url)
        parity.test_pass__changes_match_the_python_reference_check_for_check(
            _configure(monkeypatch, url)
        )
        assert schema_checksum(url) == before
        get_settings.cache_clear()
