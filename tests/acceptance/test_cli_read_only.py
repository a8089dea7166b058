"""The commands that only read (``runs``, ``explain``, ``reconcile --dry-run``) never create
anything: a database that is missing or was never migrated is one line saying to migrate,
not an empty database made on the way, nor a traceback about a missing table."""

from __future__ import annotations

import itertools
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.acceptance.cli import one_line_error as _one_line_error
from tests.acceptance.cli import run_cli as _run
from tests.acceptance.cli import tree as _tree
from tests.servers import PostgresServer

READ_ONLY = [("runs",), ("explain", "1"), ("reconcile", "--dry-run")]
_names = itertools.count()


@pytest.mark.parametrize("command", READ_ONLY, ids=lambda c: c[0])
def test_read_only_command__missing_sqlite_file__one_line_to_migrate_and_creates_nothing(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    path = tmp_path / "x" / "nonexistent" / "dir" / "runwarden.db"
    env = {"RUNWARDEN_DATABASE_URL": f"sqlite:///{path}", "RUNWARDEN_VAR_DIR": str(tmp_path)}

    line = _one_line_error(_run(*command, env=env, cwd=tmp_path), 1)

    assert str(path) in line
    assert "runwarden migrate" in line
    assert _tree(tmp_path) == set()


@pytest.mark.parametrize("command", READ_ONLY, ids=lambda c: c[0])
def test_read_only_command__missing_default_database__one_line_to_migrate(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    env = {"RUNWARDEN_VAR_DIR": str(tmp_path / "var")}

    line = _one_line_error(_run(*command, env=env, cwd=tmp_path), 1)

    assert str(tmp_path / "var" / "runwarden.db") in line
    assert _tree(tmp_path) == set()


@pytest.mark.parametrize("command", READ_ONLY, ids=lambda c: c[0])
@pytest.mark.parametrize("content", ["empty", "other_tables"])
def test_read_only_command__sqlite_database_never_migrated__one_line_and_left_as_it_was(
    tmp_path: Path, command: tuple[str, ...], content: str
) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        if content == "other_tables":
            conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    conn.close()
    before = path.read_bytes()
    env = {"RUNWARDEN_DATABASE_URL": f"sqlite:///{path}", "RUNWARDEN_VAR_DIR": str(tmp_path)}

    line = _one_line_error(_run(*command, env=env, cwd=tmp_path), 1)

    assert str(path) in line
    assert "runwarden migrate" in line
    assert path.read_bytes() == before
    assert _tree(tmp_path) == {Path("app.db")}


@pytest.fixture
def unmigrated_pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    name = f"bare_{os.getpid()}_{next(_names)}"
    admin = postgres_server.url().replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres_server.url(name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.parametrize("command", READ_ONLY, ids=lambda c: c[0])
def test_read_only_command__postgres_database_never_migrated__one_line_to_migrate(
    tmp_path: Path, unmigrated_pg_url: str, command: tuple[str, ...]
) -> None:
    env = {"RUNWARDEN_DATABASE_URL": unmigrated_pg_url, "RUNWARDEN_VAR_DIR": str(tmp_path)}

    line = _one_line_error(_run(*command, env=env, cwd=tmp_path), 1)

    assert unmigrated_pg_url in line
    assert "runwarden migrate" in line


def test_migrate__missing_sqlite_directory__created_with_the_database(tmp_path: Path) -> None:
    path = tmp_path / "x" / "nonexistent" / "dir" / "runwarden.db"
    env = {"RUNWARDEN_DATABASE_URL": f"sqlite:///{path}", "RUNWARDEN_VAR_DIR": str(tmp_path)}

    result = _run("migrate", env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert path.is_file()
    runs = _run("runs", env=env, cwd=tmp_path)
    assert (runs.returncode, runs.stdout) == (0, "no runs match\n"), runs.stderr
