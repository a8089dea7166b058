"""The system under test: its own PostgreSQL and Redis, two prefork workers and beat,
and the faults done to them. Everything on loopback, everything a real process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.operations import JOURNAL_ENV, SECRET_ENV
from tests.servers import PostgresServer, RedisServer

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
READY_SECONDS = 60

POLICY = """
[reconciliation]
interval_seconds = 2
batch_limit = 500

[workers]
heartbeat_interval_seconds = 1
lost_after_seconds = 5

[types."chaos.quick"]
queued_stale_after_seconds = 45
running_stale_after_seconds = 20

[types."chaos.fail"]
queued_stale_after_seconds = 45
running_stale_after_seconds = 20

[types."chaos.retry"]
queued_stale_after_seconds = 45
running_stale_after_seconds = 45

[types."chaos.time_limit"]
queued_stale_after_seconds = 45
running_stale_after_seconds = 20

[types."chaos.heartbeat"]
queued_stale_after_seconds = 45
running_stale_after_seconds = 12

[types."chaos.quiet"]
queued_stale_after_seconds = 45
running_stale_after_seconds = 30

[types."chaos.revoke"]
queued_stale_after_seconds = 45
running_stale_after_seconds = 20

[types."chaos.unknown"]
queued_stale_after_seconds = 45
running_stale_after_seconds = 20

[types."chaos.recover"]
queued_stale_after_seconds = 45
running_stale_after_seconds = 20
recovery = "retry"
max_attempts = 3
"""


def now() -> float:
    return time.time()


@dataclass
class Events:
    """What the harness did, when (the faults and the messages it tampered with)."""

    path: Path
    _lock: threading.Lock = field(default_factory=threading.Lock)
    items: list[dict[str, Any]] = field(default_factory=list)

    def add(self, kind: str, *, at: float | None = None, **details: Any) -> dict[str, Any]:
        item = {"kind": kind, "t": now() if at is None else at, **details}
        with self._lock:
            self.items.append(item)
            with self.path.open("a") as handle:
                handle.write(json.dumps(item) + "\n")
        return item


@dataclass
class Worker:
    """One ``celery worker -P prefork -c 2`` (or beat), restartable under the same name."""

    name: str
    env: dict[str, str]
    log_file: Path
    beat: bool = False
    process: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        celery = [sys.executable, "-m", "celery", "-A", "worker.celery_app"]
        if self.beat:
            schedule = self.log_file.with_suffix(".schedule")
            return [*celery, "beat", "-s", str(schedule), "--loglevel", "INFO"]
        return [
            *celery,
            "worker",
            "-P",
            "prefork",
            "-c",
            "2",
            "-I",
            "chaos.operations",
            "-n",
            f"chaos-{self.name}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "INFO",
        ]

    def start(self) -> None:
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv(),
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if self.beat:
            return
        deadline = time.monotonic() + READY_SECONDS
        while b" ready." not in self._log_since(offset):
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self._log_since(offset)[-3000:].decode(errors="replace")
                raise RuntimeError(f"worker {self.name} did not start:\n{tail}")
            time.sleep(0.1)

    def _log_since(self, offset: int) -> bytes:
        with self.log_file.open("rb") as handle:
            handle.seek(offset)
            return handle.read()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def children(self) -> list[int]:
        """The pool children of the main process."""
        if not self.alive or self.process is None:
            return []
        pid = self.process.pid
        path = Path(f"/proc/{pid}/task/{pid}/children")
        with contextlib.suppress(OSError):
            return [int(p) for p in path.read_text().split()]
        return []

    def kill(self) -> list[int]:
        """SIGKILL the main process and every child at once; the pids killed."""
        assert self.process is not None
        pids = [self.process.pid, *self.children()]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        return pids

    def stop(self, timeout: float = 60) -> None:
        """Warm shutdown (the bodies finish), then nothing of it is left."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)


@dataclass
class Cluster:
    workdir: Path
    secret: str
    postgres: PostgresServer = field(default_factory=PostgresServer)
    redis: RedisServer = field(default_factory=lambda: RedisServer(persistent=True))
    workers: dict[str, Worker] = field(default_factory=dict)
    beat: Worker | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def db_url(self) -> str:
        return self.postgres.url("chaos")

    @property
    def journal(self) -> Path:
        return self.workdir / "journal.jsonl"

    def logs(self) -> list[Path]:
        return sorted(self.workdir.glob("*.log"))

    def start(self) -> None:
        self.postgres.start()
        self.redis.start()
        with contextlib.closing(self._admin()) as conn:
            conn.execute("CREATE DATABASE chaos")
        policy = self.workdir / "policy.toml"
        policy.write_text(POLICY)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RUNWARDEN_")},
            "RUNWARDEN_DATABASE_URL": self.db_url,
            "RUNWARDEN_BROKER_URL": f"{self.redis.url}/0",
            "RUNWARDEN_RESULT_BACKEND": f"{self.redis.url}/1",
            "RUNWARDEN_POLICY_FILE": str(policy),
            JOURNAL_ENV: str(self.journal),
            SECRET_ENV: self.secret,
            "PYTHONPATH": str(REPO),
        }
        migrate = subprocess.run(
            [str(BIN / "runwarden"), "migrate"],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        if migrate.returncode != 0:
            raise RuntimeError(f"runwarden migrate failed: {migrate.stderr.strip()}")
        # Text logs from one worker, JSON from the other: neither may carry a secret.
        for name, log_format in (("a", "text"), ("b", "json")):
            worker = Worker(
                name,
                {**self.env, "RUNWARDEN_LOG_FORMAT": log_format},
                self.workdir / f"worker-{name}.log",
            )
            self.workers[name] = worker
            worker.start()
        self.beat = Worker("beat", self.env, self.workdir / "beat.log", beat=True)
        self.beat.start()

    def _admin(self) -> Any:
        import psycopg

        url = self.postgres.url().replace("postgresql+psycopg://", "postgresql://")
        return psycopg.connect(url, autocommit=True)

    def connect(self) -> Any:
        import psycopg

        url = self.db_url.replace("postgresql+psycopg://", "postgresql://")
        return psycopg.connect(url, autocommit=True)

    def stop(self) -> None:
        if self.beat is not None:
            self.beat.stop(10)
        for worker in self.workers.values():
            worker.stop()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        self.redis.stop()
        self.postgres.stop()

    def reconcile_cli(self, out: Path) -> subprocess.Popen[bytes]:
        """``runwarden reconcile --drain --json`` beside the scheduled ticks."""
        with out.open("ab") as handle:
            return subprocess.Popen(
                [str(BIN / "runwarden"), "reconcile", "--drain", "--json"],
                env=self.env,
                cwd=REPO,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )


@contextlib.contextmanager
def cluster(workdir: Path, secret: str) -> Iterator[Cluster]:
    running = Cluster(workdir, secret)
    try:
        running.start()
        yield running
    finally:
        running.close()
