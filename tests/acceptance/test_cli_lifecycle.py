"""``runwarden reconcile / runs / explain`` as a user runs them: the real console script."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from models import AuditLog, OperationRun
from tests.acceptance.cli import one_line_error as _one_line_error
from tests.acceptance.cli import run_cli as _run
from tests.factories import make_run, seed_tenancy
from tests.servers import free_port
from worker.db import build_engine, read_session
from worker.lifecycle.policy import load_policy, parse_policy

POLICY = """
[reconciliation]
batch_limit = 50

[types."inventory.sync"]
queued_stale_after_seconds = 600
running_stale_after_seconds = 3600

[types."report.export"]
queued_stale_after_seconds = 600
running_stale_after_seconds = 3600
direct_failed_bridge = false
"""


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return path


@pytest.fixture
def seeded(sqlite_url: str, policy_file: Path) -> Iterator[dict[str, Any]]:
    """A small example database: 2 stale runs, 1 fresh, 1 completed, 1 uncovered."""
    engine = build_engine(sqlite_url)
    ids = seed_tenancy(engine)
    ws, tenant = ids["workspace_id"], ids["tenant_id"]
    runs = {
        "stale_queued": make_run(engine, workspace_id=ws, tenant_id=tenant, age_seconds=900),
        "stale_running": make_run(
            engine,
            workspace_id=ws,
            type="report.export",
            status="running",
            age_seconds=9000,
            started_age_seconds=4000,
        ),
        "fresh": make_run(engine, workspace_id=ws, tenant_id=tenant, age_seconds=30),
        "completed": make_run(
            engine, workspace_id=ws, status="completed", outcome="succeeded", age_seconds=9000
        ),
        "uncovered": make_run(engine, workspace_id=ws, type="other.thing", age_seconds=9000),
    }
    yield {
        "engine": engine,
        "runs": runs,
        "env": {"RUNWARDEN_DATABASE_URL": sqlite_url, "RUNWARDEN_POLICY_FILE": str(policy_file)},
    }
    engine.dispose()


def _state(engine: Engine) -> tuple[dict[int, tuple[str, str]], int]:
    with read_session(engine) as session:
        rows = session.execute(select(OperationRun.id, OperationRun.status, OperationRun.outcome))
        audits = session.scalar(select(func.count()).select_from(AuditLog)) or 0
        return {r.id: (r.status, r.outcome) for r in rows}, audits


# -- reconcile ------------------------------------------------------------------------


def test_cli_reconcile__json_matches_the_contract_and_fails_stale_runs(
    db_url: str, policy_file: Path
) -> None:
    engine = build_engine(db_url)
    ids = seed_tenancy(engine)
    stale = make_run(engine, workspace_id=ids["workspace_id"], status="running", age_seconds=4000)
    fresh = make_run(engine, workspace_id=ids["workspace_id"], age_seconds=10)
    env = {"RUNWARDEN_DATABASE_URL": db_url, "RUNWARDEN_POLICY_FILE": str(policy_file)}

    result = _run("reconcile", "--json", env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert list(data) == ["candidates", "reconciled", "skipped", "changes"]
    assert (data["candidates"], data["reconciled"], data["skipped"]) == (1, 1, 0)
    (change,) = data["changes"]
    assert change["applied"] is True
    assert change["operation_run_id"] == stale
    assert change["before"] == {
        "status": "running",
        "outcome": "pending",
        "freshness_state": "likely_stale",
    }
    assert change["after"]["freshness_state"] == "reconciled_failed"
    assert change["reason_code"] == "run.stale_running"
    assert change["evidence"]["threshold_seconds"] == 3600
    assert change["evidence"]["terminal_truth_path"] == "direct_and_scheduled"
    # The rules that decided are the ones `runwarden policy` shows.
    shown = json.loads(_run("policy", "--json", env=env).stdout)
    assert change["evidence"]["policy_sha256"] == shown["sha256"]

    statuses, audits = _state(engine)
    assert statuses == {stale: ("completed", "failed"), fresh: ("queued", "pending")}
    assert audits == 1
    with read_session(engine) as session:
        run = session.get(OperationRun, stale)
        assert run is not None
        assert run.context["reconciliation"]["source"] == "on_demand_reconciler"
    engine.dispose()


def test_cli_reconcile__dry_run_prints_summary_and_table_and_writes_nothing(
    seeded: dict[str, Any],
) -> None:
    before = _state(seeded["engine"])
    result = _run("reconcile", "--dry-run", env=seeded["env"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("dry run: 2 candidates, 2 would be force-failed")
    assert lines[1].split()[:3] == ["RUN", "TYPE", "WAS"]
    assert str(seeded["runs"]["stale_queued"]) in result.stdout
    assert "run.stale_running" in result.stdout
    assert _state(seeded["engine"]) == before


def test_cli_reconcile__scoped_by_type_touches_only_that_type(seeded: dict[str, Any]) -> None:
    result = _run("reconcile", "--type", "report.export", "--json", env=seeded["env"])
    assert result.returncode == 0, result.stderr
    changed = [c["operation_run_id"] for c in json.loads(result.stdout)["changes"]]
    assert changed == [seeded["runs"]["stale_running"]]
    statuses, _ = _state(seeded["engine"])
    assert statuses[seeded["runs"]["stale_queued"]] == ("queued", "pending")


def test_cli_reconcile__drain_reports_passes_and_sums(seeded: dict[str, Any]) -> None:
    result = _run("reconcile", "--drain", "--limit", "1", "--json", env=seeded["env"])
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["reconciled"], data["passes"], len(data["changes"])) == (2, 3, 2)
    text = _run("reconcile", "--drain", env=seeded["env"])
    assert text.stdout.startswith("0 candidates, 0 reconciled, 0 skipped in 1 passes")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("reconcile", "--limit", "0"), "limit"),
        (("reconcile", "--tenant", "-4"), "--tenant"),
        (("reconcile", "--workspace", "0"), "--workspace"),
        (("reconcile", "--type", "no.such.type"), "no.such.type"),
        (("reconcile", "--type", ""), "types"),
        (("reconcile", "--drain", "--dry-run"), "--drain"),
        (("runs", "--status", "lost"), "--status"),
        (("runs", "--freshness", "stale"), "--freshness"),
        (("explain", "abc"), "RUN_ID"),
    ],
)
def test_cli__bad_input_exits_2_naming_the_problem_and_changes_nothing(
    seeded: dict[str, Any], args: tuple[str, ...], needle: str
) -> None:
    before = _state(seeded["engine"])
    result = _run(*args, env=seeded["env"])
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert needle in error
    assert _state(seeded["engine"]) == before


def test_cli_reconcile__bad_input_from_click_is_exit_2(seeded: dict[str, Any]) -> None:
    result = _run("reconcile", "--tenant", "abc", env=seeded["env"])
    assert result.returncode == 2
    assert "'abc' is not a valid integer" in result.stderr


BEYOND_64_BITS = str(2**63)  # one past the largest id SQLite and PostgreSQL bigint hold


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("reconcile", "--tenant", BEYOND_64_BITS), "--tenant"),
        (("reconcile", "--workspace", BEYOND_64_BITS), "--workspace"),
        (("reconcile", "--dry-run", "--tenant", BEYOND_64_BITS), "--tenant"),
        (("runs", "--tenant", BEYOND_64_BITS), "--tenant"),
        (("explain", BEYOND_64_BITS), "RUN_ID"),
        (("runs", "--limit", "10001"), "--limit"),
        (("runs", "--limit", str(10**22)), "--limit"),
    ],
)
def test_cli__id_or_limit_out_of_range_is_one_line_exit_2_naming_the_option(
    seeded: dict[str, Any], args: tuple[str, ...], option: str
) -> None:
    before = _state(seeded["engine"])
    line = _one_line_error(_run(*args, env=seeded["env"]), 2)
    assert line.startswith("runwarden: error: ")
    assert option in line
    assert _state(seeded["engine"]) == before


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("runs", "--tenant", "1e23"), "--tenant"),
        (("runs", "--limit", "1e20"), "--limit"),
        (("explain", "1e23"), "RUN_ID"),
        (("reconcile", "--workspace", "1.5"), "--workspace"),
    ],
)
def test_cli__number_that_is_not_an_integer_is_one_line_exit_2_naming_the_option(
    seeded: dict[str, Any], args: tuple[str, ...], option: str
) -> None:
    line = _one_line_error(_run(*args, env=seeded["env"]), 2)
    assert line.startswith("runwarden: error: ")
    assert option in line


@pytest.mark.parametrize("command", ["runs", "reconcile"])
def test_cli__type_that_is_not_utf8_is_one_line_exit_2_naming_the_option(
    seeded: dict[str, Any], command: str
) -> None:
    before = _state(seeded["engine"])
    # argv byte 0xff: Python hands it to click surrogate-escaped, as "\udcff".
    line = _one_line_error(_run(command, "--type", "\udcff", env=seeded["env"]), 2)
    assert line.startswith("runwarden: error: ")
    assert "--type" in line
    assert "UTF-8" in line
    assert _state(seeded["engine"]) == before


def test_cli_reconcile__huge_limit_is_capped_at_500_not_refused(seeded: dict[str, Any]) -> None:
    result = _run("reconcile", "--dry-run", "--json", "--limit", str(10**22), env=seeded["env"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["candidates"] == 2


def test_cli_runs__limit_at_its_bound_lists(seeded: dict[str, Any]) -> None:
    result = _run("runs", "--json", "--limit", "10000", env=seeded["env"])
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == len(seeded["runs"])


@pytest.mark.parametrize("command", [("reconcile",), ("runs",), ("explain", "1")])
def test_cli__bad_policy_file_is_one_line_exit_2_naming_file_and_key(
    seeded: dict[str, Any], tmp_path: Path, command: tuple[str, ...]
) -> None:
    bad = tmp_path / "bad-policy.toml"
    bad.write_text('[types."inventory.sync"]\nqueued_stale_after_seconds = -1\n')
    env = {**seeded["env"], "RUNWARDEN_POLICY_FILE": str(bad)}
    line = _one_line_error(_run(*command, env=env), 2)
    assert str(bad) in line
    assert 'types."inventory.sync".queued_stale_after_seconds' in line


def test_cli__missing_policy_file_is_one_line_exit_2(
    seeded: dict[str, Any], tmp_path: Path
) -> None:
    env = {**seeded["env"], "RUNWARDEN_POLICY_FILE": str(tmp_path / "missing.toml")}
    line = _one_line_error(_run("reconcile", env=env), 2)
    assert "missing.toml" in line


@pytest.mark.parametrize("command", [("reconcile",), ("runs",), ("explain", "1")])
def test_cli__unreachable_database_is_one_line_exit_1(command: tuple[str, ...]) -> None:
    url = f"postgresql+psycopg://app:s3cret@127.0.0.1:{free_port()}/nowhere"
    line = _one_line_error(_run(*command, env={"RUNWARDEN_DATABASE_URL": url}), 1)
    assert line.startswith("runwarden: error: cannot use")
    assert "s3cret" not in line


# -- runs -----------------------------------------------------------------------------


def test_cli_runs__json_lists_runs_with_freshness(seeded: dict[str, Any]) -> None:
    result = _run("runs", "--json", env=seeded["env"])
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    runs = seeded["runs"]
    assert [r["id"] for r in listed] == sorted(runs.values(), reverse=True)
    required = {
        "id",
        "type",
        "status",
        "outcome",
        "freshness_state",
        "workspace_id",
        "tenant_id",
        "created_at",
        "started_at",
        "completed_at",
    }
    assert all(required <= set(r) for r in listed)
    states = {r["id"]: r["freshness_state"] for r in listed}
    assert states == {
        runs["stale_queued"]: "likely_stale",
        runs["stale_running"]: "likely_stale",
        runs["fresh"]: "fresh",
        runs["completed"]: "terminal_normal",
        runs["uncovered"]: "unknown",
    }


def test_cli_runs__filters_by_freshness_status_type_and_limit(seeded: dict[str, Any]) -> None:
    runs = seeded["runs"]

    def ids(*args: str) -> list[int]:
        result = _run("runs", "--json", *args, env=seeded["env"])
        assert result.returncode == 0, result.stderr
        return [r["id"] for r in json.loads(result.stdout)]

    assert ids("--freshness", "likely_stale") == [runs["stale_running"], runs["stale_queued"]]
    assert ids("--freshness", "likely_stale", "--limit", "1") == [runs["stale_running"]]
    assert ids("--status", "completed") == [runs["completed"]]
    assert ids("--type", "other.thing") == [runs["uncovered"]]
    assert ids("--status", "completed", "--freshness", "fresh") == []
    _run("reconcile", env=seeded["env"])
    assert ids("--freshness", "reconciled_failed") == [runs["stale_running"], runs["stale_queued"]]


def test_cli_runs__text_output_is_a_table_with_freshness(seeded: dict[str, Any]) -> None:
    result = _run("runs", env=seeded["env"])
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split()[:5] == ["ID", "TYPE", "STATUS", "OUTCOME", "FRESHNESS"]
    assert len(rows) == 5
    assert any("likely_stale" in row for row in rows)


# -- explain --------------------------------------------------------------------------


def test_cli_explain__stale_run_says_why_and_shows_evidence(seeded: dict[str, Any]) -> None:
    run_id = seeded["runs"]["stale_queued"]
    result = _run("explain", str(run_id), env=seeded["env"])
    assert result.returncode == 0, result.stderr
    assert "likely_stale" in result.stdout
    assert "past its 600 s window" in result.stdout
    assert "run.stale_queued" in result.stdout
    assert '"threshold_seconds": 600' in result.stdout

    data = json.loads(_run("explain", str(run_id), "--json", env=seeded["env"]).stdout)
    assert data["run"]["id"] == run_id
    assert data["would_reconcile"] is True
    assert data["assessment"]["reason_code"] == "run.stale_queued"
    assert data["assessment"]["evidence"]["threshold_seconds"] == 600


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("fresh", "within its 600 s window"),
        ("completed", "completed with outcome succeeded"),
        ("uncovered", "not covered by the lifecycle policy"),
    ],
)
def test_cli_explain__says_why_not(seeded: dict[str, Any], name: str, says: str) -> None:
    result = _run("explain", str(seeded["runs"][name]), "--json", env=seeded["env"])
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["would_reconcile"] is False
    assert data["assessment"] is None
    assert says in data["why"]


def test_cli_explain__reconciled_run_shows_its_record(seeded: dict[str, Any]) -> None:
    _run("reconcile", env=seeded["env"])
    result = _run("explain", str(seeded["runs"]["stale_running"]), env=seeded["env"])
    assert result.returncode == 0, result.stderr
    assert "already reconciled" in result.stdout
    assert "reconciliation record:" in result.stdout
    assert '"source": "on_demand_reconciler"' in result.stdout


def test_cli_explain__missing_run_is_one_line_exit_2(seeded: dict[str, Any]) -> None:
    line = _one_line_error(_run("explain", "999999", env=seeded["env"]), 2)
    assert line == "runwarden: error: no operation run has id 999999"


def test_cli_policy__prints_the_effective_policy_and_its_hash(policy_file: Path) -> None:
    env = {"RUNWARDEN_POLICY_FILE": str(policy_file)}
    shown = _run("policy", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    policy = load_policy(policy_file)
    assert data == {"source": str(policy_file), "sha256": policy.sha256, "policy": policy.to_dict()}
    # Defaults are filled in: the file leaves scheduled_reconciliation unsaid.
    assert data["policy"]["types"]["report.export"]["scheduled_reconciliation"] is True

    text = _run("policy", env=env)
    assert text.returncode == 0, text.stderr
    first, *rest = text.stdout.splitlines()
    assert first == f"# policy {policy_file}, sha256 {policy.sha256}"
    assert parse_policy("\n".join(rest)).sha256 == policy.sha256
