"""RUNWARDEN_DB_SCHEMA as a user sets it: checked before anything is created, then every
command works in that schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.acceptance.cli import one_line_error, run_cli, tree
from tests.hostdb import APPLICATION_DDL, empty_database, schema_checksum, schemas
from tests.servers import PostgresServer


@pytest.mark.parametrize(
    "schema",
    ["Runwarden", "run-warden", "9lives", "rw;drop", 'rw"x', "r" * 64, "rw x", "ärger"],
)
@pytest.mark.postgres
def test_schema__not_a_plain_identifier__one_line_exit_2_nothing_created(
    postgres_server: PostgresServer, schema: str, tmp_path: Path
) -> None:
    with empty_database(postgres_server, *APPLICATION_DDL) as url:
        before, known = schema_checksum(url), schemas(url)
        env = {
            "RUNWARDEN_DATABASE_URL": url,
            "RUNWARDEN_DB_SCHEMA": schema,
            "RUNWARDEN_VAR_DIR": str(tmp_path / "var"),
        }
        for command in ("migrate", "up"):
            line = one_line_error(run_cli(command, env=env, cwd=tmp_path), 2)
            assert line.startswith("runwarden: error: RUNWARDEN_DB_SCHEMA: "), line
            assert "not a plain schema name" in line
        assert schemas(url) == known
        assert schema_checksum(url) == before
        assert tree(tmp_path) == set()


def test_schema__on_sqlite__refused_creating_nothing(tmp_path: Path) -> None:
    env = {"RUNWARDEN_DB_SCHEMA": "runwarden", "RUNWARDEN_VAR_DIR": str(tmp_path / "var")}
    line = one_line_error(run_cli("migrate", env=env, cwd=tmp_path), 2)
    assert line.startswith("runwarden: error: RUNWARDEN_DB_SCHEMA: a schema is for PostgreSQL")
    assert tree(tmp_path) == set()


@pytest.mark.postgres
def test_schema__migrate_then_every_command_in_the_schema(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    with empty_database(postgres_server, *APPLICATION_DDL) as url:
        before = schema_checksum(url)
        env = {"RUNWARDEN_DATABASE_URL": url, "RUNWARDEN_DB_SCHEMA": "runwarden"}
        result = run_cli("migrate", env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        for argv in (("runs",), ("reconcile", "--dry-run"), ("reconcile", "--json")):
            result = run_cli(*argv, env=env, cwd=tmp_path)
            assert result.returncode == 0, (argv, result.stderr)
        assert schema_checksum(url) == before
        # Without the schema the same database has no runwarden tables: it says so.
        line = one_line_error(run_cli("runs", env={"RUNWARDEN_DATABASE_URL": url}), 1)
        assert "has no runwarden tables: run `runwarden migrate`" in line
