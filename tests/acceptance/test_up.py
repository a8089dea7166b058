"""``runwarden up`` as a user runs it: on the embedded default (SQLite + embedded Redis),
a stale run is healed by the beat-scheduled reconciler, and a signal stops everything."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from models import OperationRun
from tests.factories import make_run, seed_tenancy
from tests.servers import free_port
from worker import db
from worker.migrate import upgrade

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RUNWARDEN = REPO / ".venv" / "bin" / "runwarden"

POLICY = """
[reconciliation]
interval_seconds = 1

[types."inventory.sync"]
queued_stale_after_seconds = 30
running_stale_after_seconds = 60
"""


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            # The command name is in parentheses and may contain spaces: split after it.
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.fixture
def var_dir() -> Iterator[Path]:
    # Under /tmp, not pytest's deep tmp dir: the Redis socket path must fit in 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="rw-up-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Up:
    def __init__(self, var_dir: Path) -> None:
        self.var_dir = var_dir
        policy = var_dir / "policy.toml"
        policy.write_text(POLICY)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RUNWARDEN_")},
            "RUNWARDEN_VAR_DIR": str(var_dir),
            "RUNWARDEN_POLICY_FILE": str(policy),
        }
        self.db_url = f"sqlite:///{var_dir / 'runwarden.db'}"
        self.log = var_dir / "up.log"
        self.web_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(RUNWARDEN), "up", "-c", "1", "--web-port", str(self.web_port)],
                cwd=self.var_dir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self.process

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while " ready." not in self.output():
            assert self.process is not None
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"runwarden up did not come up:\n{self.output()[-4000:]}")
            time.sleep(0.1)

    def kill_leftovers(self, pids: set[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _stop_and_check(up: Up, signum: signal.Signals) -> None:
    assert up.process is not None
    started = descendants(up.process.pid)
    # redis-server, the worker, its pool process, the beat process and the web console.
    assert len(started) >= 5, up.output()[-3000:]
    try:
        up.process.send_signal(signum)
        returncode = up.process.wait(60)
        assert returncode == 0, up.output()[-3000:]
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in started if alive(pid)] == [], "orphans left behind"
        assert not (up.var_dir / "redis.sock").exists()
    finally:
        up.kill_leftovers(started)


def test_up__heals_stale_run_through_beat__stops_cleanly_on_sigterm(var_dir: Path) -> None:
    up = Up(var_dir)
    upgrade(up.db_url)
    engine = db.build_engine(up.db_url)
    try:
        tenancy = seed_tenancy(engine)
        run_id = make_run(
            engine,
            workspace_id=tenancy["workspace_id"],
            tenant_id=tenancy["tenant_id"],
            type="inventory.sync",
            age_seconds=600,
        )
        up.start()
        up.wait_ready()

        deadline = time.monotonic() + 30
        while True:
            with db.read_session(engine) as session:
                run = session.scalars(select(OperationRun).where(OperationRun.id == run_id)).one()
                status, summary, context = run.status, run.failure_summary, run.context
            if status == "completed" or time.monotonic() > deadline:
                break
            time.sleep(0.2)

        assert status == "completed", up.output()[-4000:]
        assert [f["reason_code"] for f in summary] == ["run.stale_queued"]
        assert context["reconciliation"]["source"] == "scheduled_reconciler"
        assert "reconcile tick: passes=" in up.output()
        _stop_and_check(up, signal.SIGTERM)
    finally:
        engine.dispose()


def test_up__ctrl_c__stops_worker_beat_and_redis(var_dir: Path) -> None:
    up = Up(var_dir)
    up.start()
    up.wait_ready()

    address = f"http://127.0.0.1:{up.web_port}/"
    assert f"web console on {address}" in up.output()
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(address, timeout=5) as page:
                assert page.status == 200
                assert "Active runs" in page.read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)

    _stop_and_check(up, signal.SIGINT)

    assert "embedded Redis listening" in up.output()
    assert (var_dir / "runwarden.db").exists()


@pytest.mark.parametrize("case", ["broker", "imports", "socket", "policy"])
def test_up__bad_start_up_configuration_is_one_line_exit_2_and_writes_nothing(
    var_dir: Path, case: str
) -> None:
    up = Up(var_dir)
    env = dict(up.env)
    if case == "broker":
        env["RUNWARDEN_BROKER_URL"] = "garbage"
        needle = "RUNWARDEN_BROKER_URL"
    elif case == "imports":
        # The first is found where the worker finds it, in the working directory.
        env["RUNWARDEN_IMPORTS"] = "tests.worker.operations,nosuch.module"
        needle = "'nosuch.module'"
    elif case == "socket":
        (var_dir / "redis.sock").mkdir()
        needle = str(var_dir / "redis.sock")
    else:
        (var_dir / "policy.toml").write_text("[reconciliation]\ninterval_seconds = 0\n")
        needle = "reconciliation.interval_seconds"
    before = {p.relative_to(var_dir) for p in var_dir.rglob("*")}

    result = subprocess.run(
        [str(RUNWARDEN), "up", "-c", "1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("runwarden: error: ")
    assert needle in lines[0]
    assert {p.relative_to(var_dir) for p in var_dir.rglob("*")} == before
