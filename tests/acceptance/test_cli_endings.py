"""How every run ended, on the command line: ``runs`` shows and filters the terminal
reason, ``explain`` of a completed run says who ended it, when and why, and ``reconcile
--drain`` shows its progress to a person at a terminal only."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.cli import RUNWARDEN
from tests.acceptance.cli import run_cli as _run
from tests.factories import make_run, seed_tenancy
from worker.db import build_engine, write_session
from worker.lifecycle.transitions import force_fail_non_terminal_run

POLICY = """
[types."inventory.sync"]
queued_stale_after_seconds = 600
running_stale_after_seconds = 3600
"""

SECRET = "hunter2"


@pytest.fixture
def ended(sqlite_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A run the bridge failed with run.task_unknown (its evidence holding a credential,
    as a row written before the scrubber knew the pattern would), a stale queued run, a
    run that succeeded on its own and a fresh one."""
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    engine = build_engine(sqlite_url)
    ids = seed_tenancy(engine)
    ws, tenant = ids["workspace_id"], ids["tenant_id"]
    bridged = make_run(engine, workspace_id=ws, tenant_id=tenant, status="running")
    with write_session(engine) as session:
        assert force_fail_non_terminal_run(
            session,
            bridged,
            reason_code="run.task_unknown",
            source="bridge",
            record_key="bridge",
            evidence={
                "exception_type": "NotRegistered",
                "exception_message": f"no task at redis://ops:{SECRET}@broker:6379/0",
                "hostname": "celery@web-1",
                "pid": 4242,
            },
        )
    runs = {
        "bridged": bridged,
        "stale": make_run(engine, workspace_id=ws, tenant_id=tenant, age_seconds=900),
        "succeeded": make_run(
            engine, workspace_id=ws, status="completed", outcome="succeeded", age_seconds=60
        ),
        "fresh": make_run(engine, workspace_id=ws, tenant_id=tenant, age_seconds=10),
    }
    yield {
        "runs": runs,
        "env": {"RUNWARDEN_DATABASE_URL": sqlite_url, "RUNWARDEN_POLICY_FILE": str(policy)},
    }
    engine.dispose()


def _listed(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    result = _run("runs", "--json", *args, env=env)
    assert result.returncode == 0, result.stderr
    listed: list[dict[str, Any]] = json.loads(result.stdout)
    return listed


def test_cli_runs__json_has_the_reason_code_of_the_record_that_ended_each_run(
    ended: dict[str, Any],
) -> None:
    runs = ended["runs"]
    assert _run("reconcile", env=ended["env"]).returncode == 0
    reasons = {r["id"]: r["reason_code"] for r in _listed(ended["env"])}
    assert reasons == {
        runs["bridged"]: "run.task_unknown",
        runs["stale"]: "run.stale_queued",
        runs["succeeded"]: None,
        runs["fresh"]: None,
    }


def test_cli_runs__table_has_a_reason_column(ended: dict[str, Any]) -> None:
    result = _run("runs", env=ended["env"])
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split()[:6] == ["ID", "TYPE", "STATUS", "OUTCOME", "FRESHNESS", "REASON"]
    by_id = {row.split()[0]: row.split()[5] for row in rows}
    assert by_id[str(ended["runs"]["bridged"])] == "run.task_unknown"
    assert by_id[str(ended["runs"]["succeeded"])] == "-"


def test_cli_runs__filters_by_outcome_and_reason(ended: dict[str, Any]) -> None:
    runs, env = ended["runs"], ended["env"]
    _run("reconcile", env=env)

    def ids(*args: str) -> list[int]:
        return [r["id"] for r in _listed(env, *args)]

    assert ids("--outcome", "failed") == [runs["stale"], runs["bridged"]]
    assert ids("--outcome", "succeeded") == [runs["succeeded"]]
    assert ids("--outcome", "pending") == [runs["fresh"]]
    assert ids("--reason", "run.task_unknown") == [runs["bridged"]]
    assert ids("--reason", "run.stale_queued", "--outcome", "failed") == [runs["stale"]]
    assert ids("--reason", "run.stale_running") == []


def test_cli_runs__bad_outcome_is_one_line_exit_2(ended: dict[str, Any]) -> None:
    result = _run("runs", "--outcome", "exploded", env=ended["env"])
    assert result.returncode == 2
    assert result.stdout == ""
    assert "--outcome" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_explain__bridged_run_says_how_it_ended_with_scrubbed_evidence_and_audit(
    ended: dict[str, Any],
) -> None:
    run_id = ended["runs"]["bridged"]
    result = _run("explain", str(run_id), env=ended["env"])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "completed with outcome failed: run.task_unknown by bridge at " in out
    assert "ended: run.task_unknown by bridge at " in out
    assert "message: No worker has a task registered under this operation's name." in out
    assert "exception_type: NotRegistered" in out
    assert "hostname: celery@web-1" in out
    assert "operation_run.force_failed" in out
    assert SECRET not in out

    data = json.loads(_run("explain", str(run_id), "--json", env=ended["env"]).stdout)
    terminal = data["terminal"]
    assert terminal["reason_code"] == "run.task_unknown"
    assert terminal["source"] == "bridge"
    assert terminal["record_key"] == "bridge"
    assert terminal["recorded_at"]
    assert terminal["key_evidence"]["exception_type"] == "NotRegistered"
    assert terminal["key_evidence"]["pid"] == 4242
    assert [a["action"] for a in data["audit"]] == ["operation_run.force_failed"]
    assert data["audit"][0]["reason_code"] == "run.task_unknown"
    assert data["audit"][0]["resource_id"] == str(run_id)
    assert data["run"]["reason_code"] == "run.task_unknown"
    assert SECRET not in json.dumps(data)


def test_cli_explain__reconciled_run_shows_threshold_and_reference_time(
    ended: dict[str, Any],
) -> None:
    _run("reconcile", env=ended["env"])
    data = json.loads(
        _run("explain", str(ended["runs"]["stale"]), "--json", env=ended["env"]).stdout
    )
    key = data["terminal"]["key_evidence"]
    assert data["terminal"]["source"] == "on_demand_reconciler"
    assert key["threshold_seconds"] == 600
    assert key["reference_time"]
    assert len(data["audit"]) == 1


def test_cli_explain__run_its_task_completed_has_no_terminal_record(
    ended: dict[str, Any],
) -> None:
    data = json.loads(
        _run("explain", str(ended["runs"]["succeeded"]), "--json", env=ended["env"]).stdout
    )
    assert data["terminal"] is None
    assert data["audit"] == []
    assert "completed with outcome succeeded reported by its task" in data["why"]


def _on_a_terminal(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """``runwarden *args`` with stdout and stderr on a pseudo-terminal: what a person sees."""
    master, slave = pty.openpty()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RUNWARDEN_")}
    process = subprocess.Popen([RUNWARDEN, *args], stdout=slave, stderr=slave, env={**clean, **env})
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return process.wait(timeout=60), b"".join(chunks).decode()


def test_cli_reconcile__drain_on_a_terminal_shows_progress(ended: dict[str, Any]) -> None:
    code, seen = _on_a_terminal("reconcile", "--drain", env=ended["env"])
    assert code == 0, seen
    assert "draining: 1 passes, 1 runs failed" in seen
    assert "1 candidates, 1 reconciled, 0 skipped in 2 passes" in seen


def test_cli_reconcile__drain_json_on_a_terminal_shows_no_progress(
    ended: dict[str, Any],
) -> None:
    code, seen = _on_a_terminal("reconcile", "--drain", "--json", env=ended["env"])
    assert code == 0, seen
    assert "draining" not in seen
    assert json.loads(seen)["reconciled"] == 1


def test_cli_reconcile__drain_in_a_pipe_shows_no_progress(ended: dict[str, Any]) -> None:
    result = _run("reconcile", "--drain", env=ended["env"])
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("1 candidates, 1 reconciled")
