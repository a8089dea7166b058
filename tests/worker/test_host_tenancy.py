"""A real prefork worker with runwarden in its own schema and the gate on the
application's own organizations and people ([tenancy]): every combination starts, or is
blocked, as the Python gate says; deactivating an organization in the application's
table blocks its queued runs at start."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from models import OperationRun
from tests.hostdb import (
    APPLICATION_DDL,
    HOME_ACCOUNT,
    HOST_TENANTS,
    ORGANIZATIONS_DDL,
    empty_database,
    expected_reason,
    host_combinations,
    schema_checksum,
    seed_host_rows,
    set_active,
    tenancy_toml,
)
from tests.servers import PostgresServer
from tests.worker.conftest import POLICY, LiveWorker
from worker import db
from worker.dispatch import start_operation
from worker.lifecycle.gate import QueuedExecutionLegitimacyGate
from worker.lifecycle.policy import load_policy
from worker.migrate import upgrade

pytestmark = pytest.mark.postgres

SCHEMA = "runwarden"


@pytest.fixture(scope="module")
def worker_backend() -> str:
    return "postgresql"


@pytest.fixture(scope="module")
def worker_policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("host-policy") / "policy.toml"
    path.write_text(POLICY + tenancy_toml('{ column = "deleted_at", is_null = true }'))
    return path


@pytest.fixture(scope="module")
def worker_extra_env() -> dict[str, str]:
    return {"RUNWARDEN_DB_SCHEMA": SCHEMA}


@pytest.fixture(scope="module")
def worker_db_url(postgres_server: PostgresServer, worker_policy_file: Path) -> Iterator[str]:
    with empty_database(postgres_server, *APPLICATION_DDL, *ORGANIZATIONS_DDL) as url:
        seed_host_rows(url)
        upgrade(url, schema=SCHEMA, policy=load_policy(worker_policy_file))
        yield url


def test_worker__every_host_combination__started_or_blocked_as_the_python_gate_says(
    live: LiveWorker,
) -> None:
    before = schema_checksum(live.db_url)
    dispatched = {
        start_operation("test.ok", HOME_ACCOUNT, tenant_id=tenant, user_id=user): (tenant, user)
        for tenant, user in host_combinations()
    }
    gate = QueuedExecutionLegitimacyGate(load_policy(live.policy_file))
    seen = set()
    for run_id, (tenant, user) in dispatched.items():
        run = live.wait_terminal(run_id)
        reason = expected_reason(tenant, user)
        seen.add(reason)
        # The Python gate's verdict on the run as it was queued, over the same rows.
        queued = OperationRun(
            id=run.id,
            type=run.type,
            status="queued",
            workspace_id=run.workspace_id,
            tenant_id=tenant,
            user_id=user,
        )
        with db.read_session(live.engine) as session:
            assert gate.evaluate(session, queued).reason_code == reason, (tenant, user)
        if reason is None:
            assert (run.outcome, len(live.executions(run_id))) == ("succeeded", 1), run_id
        else:
            assert run.outcome == "blocked", (run_id, tenant, user)
            assert run.context["legitimacy"]["reason_code"] == reason
            assert live.executions(run_id) == []
    assert len(seen) == 5  # allowed, missing, inactive, other account, user inactive
    assert schema_checksum(live.db_url) == before


def test_worker__organization_deactivated_while_its_runs_wait__blocked_at_start(
    live: LiveWorker,
) -> None:
    from worker.celery_app import app

    tenant = HOST_TENANTS["active"]
    # Queued rows whose messages are still on their way (published below).
    with db.write_session(live.engine) as session:
        runs = [
            OperationRun(
                workspace_id=HOME_ACCOUNT,
                tenant_id=tenant,
                type="test.ok",
                celery_task_id=f"host-deactivated-{i}",
                context={"inputs": {}},
            )
            for i in range(3)
        ]
        session.add_all(runs)
        session.flush()
        waiting = [(r.id, r.celery_task_id) for r in runs]
    set_active(live.db_url, "organizations", tenant, False)
    try:
        for run_id, task_id in waiting:
            app.send_task(
                "operations.test.ok", kwargs={"operation_run_id": run_id}, task_id=task_id
            )
        for run_id, _ in waiting:
            run = live.wait_terminal(run_id)
            assert (run.outcome, run.context["legitimacy"]["reason_code"]) == (
                "blocked",
                "execution.tenant_inactive",
            )
            assert live.executions(run_id) == []
            [audit] = live.audit_rows(run_id)
            assert audit.action == "operation_run.blocked"
    finally:
        set_active(live.db_url, "organizations", tenant, True)
    # Active again: the next run of that organization runs.
    run_id = start_operation("test.ok", HOME_ACCOUNT, tenant_id=tenant)
    assert live.wait_terminal(run_id).outcome == "succeeded"
    with db.read_session(live.engine) as session:
        assert session.scalar(select(OperationRun.id).where(OperationRun.id == run_id))
