"""A real prefork Celery worker on the suite's real Redis, against a real database.

One worker per test module and backend (starting one costs seconds): the module gets its
own migrated database, and every test seeds its own workspace, tenants and runs, so tests
never see each other's rows. The broker is a Redis database reserved for these tests and
flushed before each worker starts, so a message left over by a previous module is never
delivered to a worker whose database does not know its run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from sqlalchemy import Engine, func, select

from models import AuditLog, OperationRun
from tests.conftest import TEMPLATE_DB
from tests.servers import PostgresServer, RedisServer
from worker import db
from worker.settings import get_settings

REPO = Path(__file__).resolve().parents[2]
BROKER_DB = 11
BACKEND_DB = 12
WORKER_START_SECONDS = 60

POLICY = """
[reconciliation]
batch_limit = 100
interval_seconds = 1

[types."test.ok"]
queued_stale_after_seconds = 600
running_stale_after_seconds = 600

[types."test.slow_ok"]
queued_stale_after_seconds = 600
running_stale_after_seconds = 600

[types."test.stale"]
queued_stale_after_seconds = 1
running_stale_after_seconds = 1

[types."test.fail"]
queued_stale_after_seconds = 600
running_stale_after_seconds = 600

[types."test.flaky"]
queued_stale_after_seconds = 600
running_stale_after_seconds = 600

[types."test.sleep"]
queued_stale_after_seconds = 600
running_stale_after_seconds = 600

[types."test.wait"]
queued_stale_after_seconds = 600
running_stale_after_seconds = 600

[types."test.crash"]
queued_stale_after_seconds = 600
running_stale_after_seconds = 600

[types."test.unregistered"]
queued_stale_after_seconds = 600
running_stale_after_seconds = 600

[types."test.nobridge"]
queued_stale_after_seconds = 600
running_stale_after_seconds = 600
direct_failed_bridge = false

[types."test.retry_later"]
queued_stale_after_seconds = 600
running_stale_after_seconds = 2

[types."test.hold"]
queued_stale_after_seconds = 600
running_stale_after_seconds = 600

[types."test.hold_retrying"]
queued_stale_after_seconds = 600
running_stale_after_seconds = 600
"""


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def wait_for(
    check: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or check}")
        time.sleep(interval)


@dataclass
class LiveWorker:
    backend: str
    db_url: str
    engine: Engine
    broker_url: str
    backend_url: str
    policy_file: Path
    executions_dir: Path
    log_file: Path
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    #: more environment for the worker (a module's own fault set-up)
    extra_env: dict[str, str] = field(default_factory=dict)
    #: tells two workers of one test apart (their node names)
    name: str = "main"
    #: run beat inside this worker (-B)
    beat: bool = False
    #: a command the worker runs under (e.g. faketime)
    wrapper: list[str] = field(default_factory=list)
    #: the queues it consumes (-Q)
    queues: str = "celery"
    #: empty the broker and backend databases first (the first worker of a module)
    flush_broker: bool = True

    # -- observing ---------------------------------------------------------------------

    def run(self, run_id: int) -> OperationRun:
        with db.read_session(self.engine) as session:
            found = session.get(OperationRun, run_id)
            assert found is not None, f"run {run_id} does not exist"
            session.expunge(found)
            return found

    def wait_terminal(self, run_id: int, timeout: float = 30.0) -> OperationRun:
        def terminal() -> OperationRun | None:
            run = self.run(run_id)
            return run if run.status == "completed" else None

        result: OperationRun = wait_for(terminal, timeout=timeout, what=f"run {run_id} to end")
        return result

    def wait_status(self, run_id: int, status: str, timeout: float = 30.0) -> OperationRun:
        def reached() -> OperationRun | None:
            run = self.run(run_id)
            return run if run.status == status else None

        result: OperationRun = wait_for(reached, timeout=timeout, what=f"run {run_id} {status}")
        return result

    def audit_rows(self, run_id: int) -> list[AuditLog]:
        with db.read_session(self.engine) as session:
            rows = list(
                session.scalars(
                    select(AuditLog)
                    .where(
                        AuditLog.resource_type == "operation_run",
                        AuditLog.resource_id == str(run_id),
                    )
                    .order_by(AuditLog.id)
                )
            )
            session.expunge_all()
            return rows

    def audit_count(self) -> int:
        with db.read_session(self.engine) as session:
            return int(session.scalar(select(func.count()).select_from(AuditLog)) or 0)

    def executions(self, run_id: int) -> list[dict[str, Any]]:
        path = self.executions_dir / str(run_id)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def wait_log(self, needle: str, *, count: int = 1, timeout: float = 30.0) -> str:
        def seen() -> str | None:
            text = self.log()
            return text if text.count(needle) >= count else None

        result: str = wait_for(seen, timeout=timeout, what=f"{count} x {needle!r} in worker log")
        return result

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self.flush_broker:
            redis.Redis.from_url(self.broker_url).flushdb()
            redis.Redis.from_url(self.backend_url).flushdb()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RUNWARDEN_")},
            "RUNWARDEN_DATABASE_URL": self.db_url,
            "RUNWARDEN_BROKER_URL": self.broker_url,
            "RUNWARDEN_RESULT_BACKEND": self.backend_url,
            "RUNWARDEN_POLICY_FILE": str(self.policy_file),
            "RUNWARDEN_TEST_EXECUTIONS_DIR": str(self.executions_dir),
            "PYTHONPATH": str(REPO),
            **self.extra_env,
        }
        argv = [
            *self.wrapper,
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.celery_app",
            "worker",
            "-P",
            "prefork",
            "-c",
            "2",
            "-I",
            "tests.worker.operations",
            "-Q",
            self.queues,
            "-n",
            f"rwtest-{self.backend}-{self.name}-{os.getpid()}@%h",
            *(["-B", "-s", str(self.log_file.with_suffix(".schedule"))] if self.beat else []),
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "INFO",
        ]
        log = self.log_file.open("ab")
        self.process = subprocess.Popen(
            argv,
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + WORKER_START_SECONDS
        while " ready." not in self.log():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"the test worker did not start:\n{self.log()[-4000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the whole worker: its main process and every pool child at once."""
        process = self.process
        assert process is not None and process.poll() is None
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        self.process = None

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(20)
        # Pool children share the worker's session; none may outlive the test run.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
        self.process = None


def route_tasks(routes: dict[str, Any] | None) -> None:
    """Route the test process's messages by ``routes`` from now on. Celery builds its
    router once, on the first publish: setting ``task_routes`` after an earlier module
    published changes nothing unless the router is dropped too."""
    from worker.celery_app import app

    app.conf.task_routes = routes
    app.amqp.flush_routes()
    app.amqp.__dict__.pop("router", None)


def point_app_at(broker_url: str, backend_url: str) -> None:
    """Make the test process's Celery app publish to the test broker.

    The app reads its configuration once; values set on ``app.conf`` take precedence, and
    the cached connection pool and result backend are dropped so the new URLs are used.
    """
    from worker.celery_app import app

    app.conf.update(broker_url=broker_url, result_backend=backend_url)
    app._pool = None
    with contextlib.suppress(AttributeError, KeyError):
        app.__dict__["amqp"]._producer_pool = None
    app._backend_cache = None
    with contextlib.suppress(AttributeError):
        del app._local.backend


@pytest.fixture(scope="session")
def worker_policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("policy") / "policy.toml"
    path.write_text(POLICY)
    return path


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def worker_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def worker_db_url(
    worker_backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if worker_backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path_factory.mktemp("worker-db") / "runwarden.db"
        shutil.copyfile(template, path)
        yield f"sqlite:///{path}"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = f"w_{os.getpid()}_{request.module.__name__.rsplit('.', 1)[-1]}"
    with psycopg.connect(_plain(server.url()), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    yield server.url(name)
    with psycopg.connect(_plain(server.url()), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def worker_extra_env() -> dict[str, str]:
    """More environment for the module's worker; a module overrides it for its faults."""
    return {}


@pytest.fixture(scope="module")
def live_worker(
    worker_backend: str,
    worker_db_url: str,
    worker_policy_file: Path,
    redis_server: RedisServer,
    worker_extra_env: dict[str, str],
) -> Iterator[LiveWorker]:
    workdir = Path(tempfile.mkdtemp(prefix="rw-worker-"))
    executions = workdir / "executions"
    executions.mkdir()
    # A module may put runwarden in a schema (RUNWARDEN_DB_SCHEMA in its worker's env).
    engine = db.build_engine(worker_db_url, schema=worker_extra_env.get("RUNWARDEN_DB_SCHEMA"))
    worker = LiveWorker(
        backend=worker_backend,
        db_url=worker_db_url,
        engine=engine,
        broker_url=f"{redis_server.url}/{BROKER_DB}",
        backend_url=f"{redis_server.url}/{BACKEND_DB}",
        policy_file=worker_policy_file,
        executions_dir=executions,
        log_file=workdir / "worker.log",
        extra_env=worker_extra_env,
    )
    point_app_at(worker.broker_url, worker.backend_url)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
        engine.dispose()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def live(live_worker: LiveWorker, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveWorker]:
    """The module's worker, with this process configured like it (database, policy)."""
    monkeypatch.setenv("RUNWARDEN_DATABASE_URL", live_worker.db_url)
    monkeypatch.setenv("RUNWARDEN_BROKER_URL", live_worker.broker_url)
    monkeypatch.setenv("RUNWARDEN_RESULT_BACKEND", live_worker.backend_url)
    monkeypatch.setenv("RUNWARDEN_POLICY_FILE", str(live_worker.policy_file))
    if "RUNWARDEN_DB_SCHEMA" in live_worker.extra_env:
        monkeypatch.setenv("RUNWARDEN_DB_SCHEMA", live_worker.extra_env["RUNWARDEN_DB_SCHEMA"])
    get_settings.cache_clear()
    yield live_worker
    get_settings.cache_clear()


Spawn = Callable[..., LiveWorker]


@contextlib.contextmanager
def worker_cluster(
    *,
    backend: str,
    db_url: str,
    policy_file: Path,
    redis_server: RedisServer,
    routes: dict[str, Any],
    prefix: str,
) -> Iterator[Spawn]:
    """Starts workers sharing one database, broker and policy, and routes the test
    process's messages (and, through ``RWTEST_TASK_ROUTES``, its workers') by ``routes``;
    stops them all at the end. ``spawn(name, beat=True)`` runs beat on the default queue;
    any other worker consumes ``victims`` unless ``queues`` says otherwise."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    executions = workdir / "executions"
    executions.mkdir()
    engine = db.build_engine(db_url)
    started: list[LiveWorker] = []

    def spawn(
        name: str,
        *,
        beat: bool = False,
        queues: str | None = None,
        wrapper: list[str] | None = None,
    ) -> LiveWorker:
        worker = LiveWorker(
            backend=backend,
            db_url=db_url,
            engine=engine,
            broker_url=f"{redis_server.url}/{BROKER_DB}",
            backend_url=f"{redis_server.url}/{BACKEND_DB}",
            policy_file=policy_file,
            executions_dir=executions,
            log_file=workdir / f"{name}-{len(started)}.log",
            name=name,
            beat=beat,
            wrapper=wrapper or [],
            queues=queues or ("celery" if beat else "victims"),
            flush_broker=not started,
            extra_env={"RWTEST_TASK_ROUTES": json.dumps(routes)},
        )
        started.append(worker)
        worker.start()
        return worker

    from worker.celery_app import app

    point_app_at(f"{redis_server.url}/{BROKER_DB}", f"{redis_server.url}/{BACKEND_DB}")
    previous = app.conf.task_routes
    route_tasks(routes)
    try:
        yield spawn
    finally:
        route_tasks(previous)
        for worker in started:
            if worker.process is not None and worker.process.poll() is None:
                # A stopped (SIGSTOP) worker must be able to take the SIGTERM.
                os.killpg(worker.process.pid, signal.SIGCONT)
            worker.stop()
        engine.dispose()
        shutil.rmtree(workdir, ignore_errors=True)
