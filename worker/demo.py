"""``runwarden demo``: the whole lifecycle, end to end, on the embedded default.

Starts the real service (embedded Redis, a prefork worker with beat) in a throw-away var
dir, dispatches five runs and prints how each one ended and why:

- a run that succeeds,
- a run whose task raises (the bridge fails it; the credentials in the error are scrubbed),
- a run whose pool process is SIGKILLed mid-task (worker lost),
- a run blocked because its tenant was deactivated before it started,
- a queued run whose message was lost, healed by the beat-scheduled reconciler.

The worker imports this module (``RUNWARDEN_IMPORTS=worker.demo``) for the demo's
operation tasks; importing it has no other effect.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.tasks import OperationResult, RunContext, operation

DEMO_POLICY = """
[reconciliation]
batch_limit = 100
interval_seconds = 2

[types."demo.sync"]
queued_stale_after_seconds = 60
running_stale_after_seconds = 120

[types."demo.export"]
queued_stale_after_seconds = 60
running_stale_after_seconds = 120

[types."demo.crash"]
queued_stale_after_seconds = 60
running_stale_after_seconds = 120
"""
DEADLINE_SECONDS = 45.0


@operation("demo.sync")
def demo_sync(run: RunContext, **inputs: Any) -> OperationResult:
    run.heartbeat()
    return OperationResult(outcome="succeeded", summary_counts={"items": int(inputs["items"])})


@operation("demo.export")
def demo_export(run: RunContext, **inputs: Any) -> None:
    raise ConnectionError(
        f"export of {inputs['report']} failed: https://exporter:s3cr3t@reports.example/upload"
    )


@operation("demo.crash")
def demo_crash(run: RunContext, **inputs: Any) -> None:
    # What the OOM killer does to a pool process.
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class _Planned:
    run_id: int
    story: str


def _configure_environment(var_dir: Path) -> None:
    policy = var_dir / "policy.toml"
    policy.write_text(DEMO_POLICY)
    for key in ("RUNWARDEN_DATABASE_URL", "RUNWARDEN_BROKER_URL", "RUNWARDEN_RESULT_BACKEND"):
        os.environ.pop(key, None)  # the embedded default: SQLite and Redis under var_dir
    os.environ["RUNWARDEN_VAR_DIR"] = str(var_dir)
    os.environ["RUNWARDEN_POLICY_FILE"] = str(policy)
    os.environ["RUNWARDEN_IMPORTS"] = "worker.demo"
    os.environ["RUNWARDEN_LOG_LEVEL"] = "WARNING"

    from worker.settings import current_policy, get_settings

    get_settings.cache_clear()
    current_policy.cache_clear()


def _dispatch(echo: Callable[[str], None]) -> list[_Planned]:
    from datetime import timedelta

    from sqlalchemy import update

    from models import OperationRun, Tenant, User, Workspace, utcnow
    from worker.db import write_session
    from worker.dispatch import start_operation

    with write_session() as session:
        workspace = Workspace(name="acme")
        session.add(workspace)
        session.flush()
        eu = Tenant(workspace_id=workspace.id, name="acme-eu")
        us = Tenant(workspace_id=workspace.id, name="acme-us")
        user = User(email="ops@acme.example")
        session.add_all([eu, us, user])
        session.flush()
        ids = {"workspace": workspace.id, "eu": eu.id, "us": us.id, "user": user.id}

    planned: list[_Planned] = []

    def start(type_name: str, tenant: int, story: str, **inputs: Any) -> None:
        run_id = start_operation(
            type_name,
            workspace_id=ids["workspace"],
            tenant_id=tenant,
            user_id=ids["user"],
            inputs=inputs,
        )
        planned.append(_Planned(run_id, story))
        echo(f"  run {run_id}: {type_name:<12} {story}")

    start("demo.sync", ids["eu"], "succeeds", items=3)
    start("demo.export", ids["eu"], "raises (error carries a password)", report="q3")
    start("demo.crash", ids["eu"], "its pool process is SIGKILLed")
    with write_session() as session:
        session.execute(update(Tenant).where(Tenant.id == ids["us"]).values(is_active=False))
    start("demo.sync", ids["us"], "tenant deactivated before it started", items=1)

    # A run whose message never reached the broker (say, the web process died right after
    # committing it): only the scheduled reconciler can end it.
    created = utcnow() - timedelta(minutes=10)
    with write_session() as session:
        lost = OperationRun(
            workspace_id=ids["workspace"],
            tenant_id=ids["eu"],
            user_id=ids["user"],
            type="demo.sync",
            context={"inputs": {"items": 7}},
            created_at=created,
            updated_at=created,
        )
        session.add(lost)
        session.flush()
        planned.append(_Planned(lost.id, "queued 10 min ago, message lost"))
        echo(f"  run {lost.id}: {'demo.sync':<12} queued 10 min ago, its message lost")
    return planned


@dataclass(frozen=True)
class _Ended:
    id: int
    type: str
    status: str
    outcome: str
    failure_summary: list[dict[str, Any]]
    summary_counts: dict[str, Any]
    context: dict[str, Any]


def _wait_all_terminal(run_ids: list[int], deadline: float) -> list[_Ended]:
    from sqlalchemy import select

    from models import OperationRun
    from worker.db import read_session

    while True:
        with read_session() as session:
            runs = [
                _Ended(
                    id=r.id,
                    type=r.type,
                    status=r.status,
                    outcome=r.outcome,
                    failure_summary=list(r.failure_summary or []),
                    summary_counts=dict(r.summary_counts or {}),
                    context=dict(r.context or {}),
                )
                for r in session.scalars(
                    select(OperationRun)
                    .where(OperationRun.id.in_(run_ids))
                    .order_by(OperationRun.id)
                )
            ]
        if all(run.status == "completed" for run in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(0.2)


def _table(runs: list[_Ended], stories: dict[int, str]) -> list[str]:
    rows = [("id", "type", "status", "outcome", "reason", "detail")]
    for run in runs:
        failure = run.failure_summary[0] if run.failure_summary else None
        if failure is not None:
            reason = failure["reason_code"]
            record = (run.context or {}).get("bridge") or {}
            message = (record.get("evidence") or {}).get("exception_message")
            detail = message or failure["message"]
        else:
            reason = "-"
            detail = f"summary_counts={dict(run.summary_counts)}" if run.summary_counts else ""
        if run.status != "completed":
            detail = f"still {run.status} ({stories[run.id]})"
        rows.append((str(run.id), run.type, run.status, run.outcome, reason, detail))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:5])) + "  " + row[5]
        for row in rows
    ]


def run_demo(*, keep: bool = False, echo: Callable[[str], None] = print) -> int:
    """Run the demo; 0 when every run ended as the story says."""
    started = time.monotonic()
    # /tmp, not ./var: a short path (unix sockets allow 107 bytes) and nothing left over.
    var_dir = Path(tempfile.mkdtemp(prefix="rw-demo-", dir="/tmp"))
    _configure_environment(var_dir)

    from worker.service import Service
    from worker.settings import get_settings

    service = Service(get_settings(), concurrency=2, log_file=var_dir / "worker.log")
    echo(f"runwarden demo in {var_dir} (SQLite + embedded Redis, prefork worker + beat)")
    try:
        service.start()
        echo("dispatching:")
        planned = _dispatch(echo)
        echo("waiting for every run to end (the stale one waits for a beat tick)...")
        runs = _wait_all_terminal([p.run_id for p in planned], started + DEADLINE_SECONDS)
    finally:
        service.stop()
    echo("")
    for line in _table(runs, {p.run_id: p.story for p in planned}):
        echo(line)
    expected = [
        "succeeded",
        "run.job_failed",
        "run.worker_lost",
        "execution.tenant_inactive",
        "run.stale_queued",
    ]
    got = [
        run.failure_summary[0]["reason_code"] if run.failure_summary else run.outcome
        for run in runs
    ]
    echo("")
    if keep:
        echo(f"kept {var_dir} (worker.log, runwarden.db)")
    else:
        shutil.rmtree(var_dir, ignore_errors=True)
    elapsed = time.monotonic() - started
    if got != expected:
        echo(f"unexpected endings after {elapsed:.1f} s: {got} (expected {expected})")
        return 1
    echo(f"done in {elapsed:.1f} s: every run ended, each with an evidenced reason")
    return 0
