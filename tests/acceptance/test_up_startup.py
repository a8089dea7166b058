"""``runwarden up`` while it starts: a signal stops it at once, with nothing left running,
whatever it is waiting for (a migration waiting for a lock held by another session); a
configured broker that does not answer stops it before anything is written."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from migrations import VERSION_TABLE
from tests.acceptance.test_migrate_locks import has_open
from tests.acceptance.test_up import RUNWARDEN, Up, alive, descendants
from tests.servers import RedisServer
from worker.migrate import upgrade

pytestmark = [pytest.mark.slow]


@pytest.fixture
def var_dir() -> Iterator[Path]:
    # Under /tmp: the embedded Redis socket path must fit in 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="rw-up-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _waits_for_a_lock(url: str, pid: int, timeout: float = 30) -> bool:
    """Wait until a session of ``url``'s database waits for a lock (or ``pid`` exited)."""
    # Autocommit: pg_stat_activity is read once per transaction.
    with psycopg.connect(_plain(url), autocommit=True) as probe:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive(pid):
            row = probe.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).fetchone()
            if row and row[0]:
                return True
            time.sleep(0.05)
    return False


@pytest.fixture
def postgres_lock_held(pg_url: str) -> Iterator[str]:
    """``pg_url``, its version table locked by another session for the whole test."""
    with psycopg.connect(_plain(pg_url)) as holder:
        holder.execute(f"LOCK TABLE {VERSION_TABLE} IN ACCESS EXCLUSIVE MODE")
        yield pg_url
        holder.rollback()


def _interrupted(up: Up, signum: signal.Signals) -> None:
    assert up.process is not None
    try:
        returncode = up.process.wait(60)
    finally:
        up.kill_leftovers(descendants(up.process.pid))
    output = up.output()
    assert returncode == 128 + signum, output[-3000:]
    assert "Traceback" not in output
    assert "embedded Redis listening" not in output
    assert "worker with embedded beat started" not in output
    assert not (up.var_dir / "redis.sock").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_up__signal_while_migration_waits_for_a_postgres_lock__exits_at_once_starting_nothing(
    var_dir: Path, postgres_lock_held: str, signum: signal.Signals
) -> None:
    up = Up(var_dir)
    up.env["RUNWARDEN_DATABASE_URL"] = postgres_lock_held
    up.start()
    assert up.process is not None
    assert _waits_for_a_lock(postgres_lock_held, up.process.pid), up.output()[-3000:]
    started = descendants(up.process.pid)

    up.process.send_signal(signum)

    _interrupted(up, signum)
    assert [pid for pid in started if alive(pid)] == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_up__signal_while_migration_waits_for_the_sqlite_write_lock__exits_at_once(
    var_dir: Path, signum: signal.Signals
) -> None:
    up = Up(var_dir)
    path = var_dir / "runwarden.db"
    upgrade(up.db_url)
    # A busy timeout far longer than the test: only the signal can end the wait.
    up.env["RUNWARDEN_SQLITE_BUSY_TIMEOUT_SECONDS"] = "600"
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        up.start()
        assert up.process is not None
        assert has_open(up.process.pid, path), up.output()[-3000:]
        time.sleep(0.5)  # into its wait for the lock (a signal before it is handled as well)

        up.process.send_signal(signum)

        _interrupted(up, signum)
    finally:
        holder.close()


@pytest.mark.parametrize(
    ("broker_url", "shown"),
    [
        ("redis://:s3cret@127.0.0.1:1/0", "redis://:***@127.0.0.1:1/0"),
        ("redis+socket://:s3cret@/nonexistent/redis.sock", "redis+socket://:***@/nonexistent/"),
    ],
    ids=["tcp", "socket"],
)
def test_up__unreachable_broker__one_line_exit_1_naming_it_and_nothing_written(
    var_dir: Path, broker_url: str, shown: str
) -> None:
    up = Up(var_dir)
    env = {**up.env, "RUNWARDEN_BROKER_URL": broker_url}
    before = {p.relative_to(var_dir) for p in var_dir.rglob("*")}

    result = subprocess.run(
        [str(RUNWARDEN), "up", "-c", "1"],
        cwd=var_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("runwarden: error: ")
    assert shown in lines[0]
    assert "s3cret" not in result.stderr
    assert {p.relative_to(var_dir) for p in var_dir.rglob("*")} == before


def test_up__configured_broker_that_answers__comes_up_on_it(
    var_dir: Path, redis_server: RedisServer
) -> None:
    up = Up(var_dir)
    up.env["RUNWARDEN_BROKER_URL"] = f"{redis_server.url}/3"
    up.start()
    assert up.process is not None
    started: set[int] = set()
    try:
        up.wait_ready()
        started = descendants(up.process.pid)
        up.process.send_signal(signal.SIGTERM)
        assert up.process.wait(60) == 0, up.output()[-3000:]
    finally:
        up.kill_leftovers(descendants(up.process.pid) | started)
    assert "embedded Redis listening" not in up.output()
    assert not (var_dir / "redis.sock").exists()
