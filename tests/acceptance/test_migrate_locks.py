"""``runwarden migrate`` beside another writer: it waits for the lock like every other writer
(SQLite's busy timeout, PostgreSQL's lock timeout), and stops with one line when the lock is
not released in that time -- never fails at once, never waits for ever."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from alembic.script import ScriptDirectory
from sqlalchemy import text

from migrations import VERSION_TABLE
from worker.db import build_engine
from worker.migrate import alembic_config, upgrade

RUNWARDEN = str(Path(sys.executable).with_name("runwarden"))
# The newest revision, as alembic's script directory has it.
HEAD = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def _popen(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RUNWARDEN_")}
    return subprocess.Popen(
        [RUNWARDEN, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**clean, **env},
    )


def has_open(pid: int, path: Path, timeout: float = 30) -> bool:
    """Wait until process ``pid`` has ``path`` open (or has exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except FileNotFoundError:
            return False
        for fd in fds:
            try:
                if Path(os.readlink(fd)) == path:
                    return True
            except OSError:
                continue
        time.sleep(0.02)
    return False


def _version(url: str) -> str:
    engine = build_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.scalar(text(f"SELECT version_num FROM {VERSION_TABLE}")))
    finally:
        engine.dispose()


def test_migrate__sqlite_written_by_another_process__waits_for_the_lock_and_succeeds(
    tmp_path: Path,
) -> None:
    # One release behind, so the migration has something to write.
    path = tmp_path / "runwarden.db"
    url = f"sqlite:///{path}"
    upgrade(url, "0001")
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("CREATE TABLE another_writer (x INTEGER)")
        migrate = _popen("migrate", env={"RUNWARDEN_DATABASE_URL": url})
        # Released only once migrate is at the database, so it meets the held lock.
        assert has_open(migrate.pid, path), migrate.communicate(timeout=60)
        time.sleep(1)
        holder.execute("COMMIT")
        stdout, stderr = migrate.communicate(timeout=60)
    finally:
        holder.close()

    assert migrate.returncode == 0, stderr
    assert "latest schema" in stdout
    assert _version(url) == HEAD


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def test_migrate__postgres_lock_held_by_another_session__one_line_error_exit_1(
    pg_url: str,
) -> None:
    with psycopg.connect(_plain(pg_url)) as holder:
        holder.execute(f"LOCK TABLE {VERSION_TABLE} IN ACCESS EXCLUSIVE MODE")
        migrate = _popen("migrate", env={"RUNWARDEN_DATABASE_URL": pg_url})
        try:
            _, stderr = migrate.communicate(timeout=60)
        finally:
            migrate.kill()
            migrate.wait()
        holder.rollback()

    assert migrate.returncode == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("runwarden: error: database postgresql+psycopg://")
    assert "is locked by another session" in lines[0]
    assert _version(pg_url) == HEAD


def test_migrate__sqlite_lock_not_released_within_the_busy_timeout__one_line_error_exit_1(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runwarden.db"
    url = f"sqlite:///{path}"
    upgrade(url, "0001")
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        migrate = _popen(
            "migrate",
            env={"RUNWARDEN_DATABASE_URL": url, "RUNWARDEN_SQLITE_BUSY_TIMEOUT_SECONDS": "0.5"},
        )
        _, stderr = migrate.communicate(timeout=60)
    finally:
        holder.close()

    assert migrate.returncode == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"runwarden: error: database {url} is locked by another session")
    assert _version(url) == "0001"
