from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect

from migrations import VERSION_TABLE
from tests.acceptance.cli import run_cli as _run
from tests.servers import free_port
from worker.db import build_engine


def test_migrate__creates_schema_on_the_embedded_default(tmp_path: Path) -> None:
    result = _run("migrate", env={"RUNWARDEN_VAR_DIR": str(tmp_path / "var")})
    assert result.returncode == 0, result.stderr
    assert "latest schema" in result.stdout
    engine = build_engine(f"sqlite:///{tmp_path / 'var' / 'runwarden.db'}")
    assert {"operation_runs", "audit_logs", VERSION_TABLE} <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_migrate__unreachable_database_is_one_line_exit_1() -> None:
    url = f"postgresql+psycopg://app:s3cret@127.0.0.1:{free_port()}/nowhere"
    result = _run("migrate", env={"RUNWARDEN_DATABASE_URL": url})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("runwarden: error: cannot use")
    assert "s3cret" not in result.stderr
    assert "Traceback" not in result.stderr


def test_migrate__bad_setting_is_exit_2_naming_it() -> None:
    result = _run("migrate", env={"RUNWARDEN_LOG_FORMAT": "xml"})
    assert result.returncode == 2
    assert "RUNWARDEN_LOG_FORMAT" in result.stderr


def test_help__lists_the_commands() -> None:
    result = _run("--help", env={})
    assert result.returncode == 0
    assert "migrate" in result.stdout


def test_migrate__secret_query_parameter_in_the_url__not_printed(tmp_path: Path) -> None:
    # SQLite ignores the parameter (SQLAlchemy warns that it does); the report of the
    # migration must not repeat it.
    url = f"sqlite:///{tmp_path / 'x.db'}?password=hunter2"
    result = _run("migrate", env={"RUNWARDEN_DATABASE_URL": url})
    assert result.returncode == 0, result.stderr
    assert "latest schema" in result.stdout
    assert "password=***" in result.stdout
    assert "hunter2" not in result.stdout + result.stderr


def test_migrate__unreachable_database_with_secret_query_parameter__no_secret_printed() -> None:
    url = f"postgresql+psycopg://u:pw1@127.0.0.1:{free_port()}/db?password=pw2"
    result = _run("migrate", env={"RUNWARDEN_DATABASE_URL": url})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("runwarden: error: cannot use")
    assert "pw1" not in result.stderr
    assert "pw2" not in result.stderr
