"""Staleness is decided on the database's clock: a dispatcher, worker or reconciler host
whose clock is off never makes a fresh run look stale, nor a dead run look fresh.

Each test runs one party in its own process under Debian's ``faketime`` (a shifted clock
for that process alone) against the suite's PostgreSQL, whose clock is right. On SQLite,
the embedded default, every process is on one host and SQLite's "now" is the executing
process's own clock, so there is no other clock to trust (DESIGN.md, "Whose clock").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from models import OperationRun, utcnow
from tests.factories import make_run, seed_tenancy
from worker.db import build_engine, read_session
from worker.lifecycle.policy import LifecyclePolicy, TypePolicy
from worker.lifecycle.reconciler import OperationLifecycleReconciler

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[2]
POLICY_TOML = """
[types."inventory.sync"]
queued_stale_after_seconds = 120
running_stale_after_seconds = 120
"""
POLICY = LifecyclePolicy(
    types=(
        TypePolicy(
            "inventory.sync", queued_stale_after_seconds=120, running_stale_after_seconds=120
        ),
    ),
)


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    if shutil.which("faketime") is None:
        pytest.fail("faketime is not installed (Debian package faketime; scripts/ensure-servers)")
    engine = build_engine(pg_url)
    yield engine
    engine.dispose()


def _under_shifted_clock(
    shift: str, code: str, *, url: str, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a Python process whose clock is shifted by ``shift`` ("-5m", "+1d")."""
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY_TOML)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RUNWARDEN_")},
        "RUNWARDEN_DATABASE_URL": url,
        "RUNWARDEN_POLICY_FILE": str(policy),
        "RUNWARDEN_VAR_DIR": str(tmp_path / "var"),
        "PYTHONPATH": str(REPO),
    }
    done = subprocess.run(
        ["faketime", "-f", shift, sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


def _status(engine: Engine, run_id: int) -> tuple[str, str]:
    with read_session(engine) as session:
        run = session.get(OperationRun, run_id)
        assert run is not None
        return run.status, run.outcome


def test_clock__dispatcher_five_minutes_behind__run_just_created_is_not_stale(
    pg_engine: Engine, pg_url: str, tmp_path: Path
) -> None:
    ids = seed_tenancy(pg_engine)
    done = _under_shifted_clock(
        "-5m",
        f"""
        from worker.dispatch import _create_run
        run_id, _ = _create_run(
            type_name="inventory.sync", workspace_id={ids["workspace_id"]}, tenant_id=None,
            user_id=None, inputs={{}}, identity_hash=None, celery_task_id="task-skewed")
        print(run_id)
        """,
        url=pg_url,
        tmp_path=tmp_path,
    )
    run_id = int(done.stdout.strip())

    result = OperationLifecycleReconciler(POLICY).reconcile(pg_engine)

    assert result.reconciled == 0
    assert _status(pg_engine, run_id) == ("queued", "pending")


def test_clock__worker_five_minutes_behind__its_heartbeating_run_is_not_stale(
    pg_engine: Engine, pg_url: str, tmp_path: Path
) -> None:
    ids = seed_tenancy(pg_engine)
    run_id = make_run(pg_engine, workspace_id=ids["workspace_id"])
    with read_session(pg_engine) as session:
        task_id = session.scalar(
            select(OperationRun.celery_task_id).where(OperationRun.id == run_id)
        )
    _under_shifted_clock(
        "-5m",
        f"""
        from worker.db import statement_session
        from worker.lifecycle.execution import heartbeat, start_execution
        from worker.lifecycle.gate import QueuedExecutionLegitimacyGate
        from worker.settings import current_policy
        gate = QueuedExecutionLegitimacyGate(current_policy())
        with statement_session() as session:
            start = start_execution(
                session, {run_id}, gate=gate, celery_task_id="{task_id}", retries=0)
            assert start.started, start
            assert heartbeat(session, {run_id}, attempt=1, celery_task_id="{task_id}")
        """,
        url=pg_url,
        tmp_path=tmp_path,
    )

    result = OperationLifecycleReconciler(POLICY).reconcile(pg_engine)

    assert result.reconciled == 0
    assert _status(pg_engine, run_id) == ("running", "pending")


@pytest.mark.parametrize("shift", ["+1d", "-1d"])
def test_clock__reconciler_a_day_off__judges_by_the_database_clock(
    pg_engine: Engine, pg_url: str, tmp_path: Path, shift: str
) -> None:
    """A day ahead must not fail a fresh run; a day behind must not hide a dead one."""
    ids = seed_tenancy(pg_engine)
    now = utcnow()
    fresh = make_run(pg_engine, workspace_id=ids["workspace_id"], now=now)
    dead = make_run(
        pg_engine,
        workspace_id=ids["workspace_id"],
        status="running",
        now=now,
        age_seconds=3600,
        started_age_seconds=3600,
    )
    done = _under_shifted_clock(
        shift,
        """
        import json
        from worker.db import get_engine
        from worker.lifecycle.reconciler import OperationLifecycleReconciler
        from worker.settings import current_policy
        result = OperationLifecycleReconciler(current_policy()).reconcile(get_engine())
        print(json.dumps([c.operation_run_id for c in result.changes]))
        """,
        url=pg_url,
        tmp_path=tmp_path,
    )
    assert json.loads(done.stdout) == [dead]
    assert _status(pg_engine, fresh) == ("queued", "pending")
    assert _status(pg_engine, dead) == ("completed", "failed")
