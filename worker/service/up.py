"""``runwarden up``: migrate, start the embedded Redis if no broker is set, then a prefork
worker with embedded beat -- and stop all of it on SIGINT/SIGTERM, leaving no orphans.

Children run in their own sessions, so a Ctrl-C in the terminal reaches only ``up``, which
then stops them in order: the worker first (warm shutdown: running tasks finish, up to a
timeout), then whatever is left of its process group (pool children, the beat process),
then the broker it was using. A second signal skips the wait. A signal during start-up
(a migration waiting for a lock, the embedded Redis starting) stops it there.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from worker.db import describe_url
from worker.migrate import Migration
from worker.service.checks import check_broker, check_imports
from worker.service.embedded import EmbeddedRedis
from worker.service.procs import StartupInterrupted, parent_death_signal
from worker.settings import Settings, current_policy

logger = logging.getLogger(__name__)

#: How long a warm shutdown may take before the worker's process group is killed.
DEFAULT_STOP_TIMEOUT_SECONDS = 30.0
#: How often the waits check for a stop request.
_POLL_SECONDS = 0.1
#: How long a cancelled start-up step may take to end before ``up`` exits anyway.
_CANCEL_GRACE_SECONDS = 1.0


@dataclass
class Service:
    settings: Settings
    concurrency: int | None = None
    loglevel: str | None = None
    stop_timeout_seconds: float = DEFAULT_STOP_TIMEOUT_SECONDS
    #: Where the worker's output goes (default: this process's stdout/stderr).
    log_file: Path | None = None
    #: The web console's address (``runwarden web``); ``web=False`` starts none.
    web: bool = True
    web_host: str = "127.0.0.1"
    web_port: int = 5580
    redis: EmbeddedRedis | None = field(default=None, init=False)
    worker: subprocess.Popen[bytes] | None = field(default=None, init=False)
    console: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _stop_signal: int | None = field(default=None, init=False)

    def worker_argv(self) -> list[str]:
        var_dir = self.settings.var_dir.resolve()
        argv = [
            sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
            "-P", "prefork",
            "-B", "-s", str(var_dir / "celerybeat-schedule"),
            "--loglevel", self.loglevel or self.settings.log_level,
        ]  # fmt: skip
        if self.concurrency:
            argv += ["-c", str(self.concurrency)]
        return argv

    def web_argv(self) -> list[str]:
        return [
            sys.executable, "-m", "worker.cli", "web",
            "--host", self.web_host, "--port", str(self.web_port),
        ]  # fmt: skip

    def start(self) -> Service:
        """Check, migrate, start the embedded Redis and the worker -- or stop at once,
        having stopped what it started, when a stop is requested on the way
        (:class:`StartupInterrupted`)."""
        settings = self.settings
        if self.web:
            from worker.web.server import check_binding

            token = settings.web_token.get_secret_value() if settings.web_token else None
            check_binding(self.web_host, token)
        # Every setting that would fail only later -- in the worker, or after the database
        # was migrated -- is refused first, while nothing is written or started.
        check_imports(settings.imports)
        embedded = None
        if not settings.broker_url:
            embedded = EmbeddedRedis(settings.embedded_redis_socket, data_dir=settings.var_dir)
            embedded.check()
        policy = current_policy()  # a bad policy stops start-up here, with its key named
        if settings.broker_url:
            # Before the migration: Celery would retry an unreachable broker for minutes.
            self._interruptible(functools.partial(check_broker, settings.broker_url))
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        database_url = settings.resolved_database_url
        logger.info("migrating database %s", describe_url(database_url))
        migration = Migration(database_url)
        self._interruptible(migration.upgrade, cancel=migration.cancel)
        logger.info(
            "database %s migrated; policy %s covers %d types, reconciling every %d s",
            describe_url(database_url),
            policy.source,
            len(policy.types),
            policy.interval_seconds,
        )
        if embedded is not None:
            self._check_stop()
            self.redis = embedded
            self.redis.start(stop_requested=self.stop_requested)
            logger.info("embedded Redis listening on %s", settings.embedded_redis_socket)
        self._check_stop()
        try:
            self.worker = self._spawn(self.worker_argv())
            logger.info("worker with embedded beat started (pid %d)", self.worker.pid)
            if self.web:
                from worker.web.server import console_address

                self.console = self._spawn(self.web_argv())
                logger.info(
                    "web console on %s (pid %d)",
                    console_address(self.web_host, self.web_port),
                    self.console.pid,
                )
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        """A child in its own session, its output where the worker's goes, sent SIGTERM
        should ``up`` die."""
        output = self.log_file.open("ab") if self.log_file else None
        try:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT if output else None,
                start_new_session=True,
                preexec_fn=parent_death_signal(signal.SIGTERM),  # noqa: PLW1509 - single-threaded
                env={**os.environ, "RUNWARDEN_VAR_DIR": str(self.settings.var_dir.resolve())},
            )
        finally:
            if output is not None:
                output.close()

    def _interruptible(
        self, step: Callable[[], None], *, cancel: Callable[[], None] | None = None
    ) -> None:
        """Run a start-up step that may block for long in a thread, and wait for it here.

        A lock wait in libpq or in SQLite's busy handler would hold up this thread's signal
        handlers until it ended; waiting here, a stop request (or a KeyboardInterrupt when
        no handler is installed) cancels the step and returns at once. The step starts no
        process: a child's parent-death signal fires when the thread that started it ends.
        """
        self._check_stop()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                step()
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=run, name="runwarden-up-start", daemon=True)
        thread.start()
        try:
            while thread.is_alive():
                self._check_stop()
                thread.join(_POLL_SECONDS)
        except BaseException:
            if cancel is not None:
                cancel()
                # Long enough for a cancelled statement to roll back; a SQLite busy wait,
                # which no cancel ends, holds no lock and ends with the process.
                thread.join(_CANCEL_GRACE_SECONDS)
            raise
        if failure:
            raise failure[0]

    def stop_requested(self) -> bool:
        return self._stop_signal is not None

    def _check_stop(self) -> None:
        if self._stop_signal is not None:
            raise StartupInterrupted

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask :meth:`start` or :meth:`wait` to stop; safe in a signal handler (it takes no
        lock: a handler that blocks on a lock its own thread holds never returns)."""
        if self._stop_signal is None:
            self._stop_signal = signum

    @property
    def stop_signal(self) -> int | None:
        """The signal of the first stop request, if any."""
        return self._stop_signal

    def kill_worker(self) -> None:
        """Cold stop: SIGKILL the worker's whole process group now."""
        for child in (self.worker, self.console):
            if child is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGKILL)

    def wait(self) -> int:
        """Block until the worker exits or a stop is requested; then stop everything."""
        worker = self.worker
        assert worker is not None, "start() first"
        while worker.poll() is None and self._stop_signal is None:
            time.sleep(_POLL_SECONDS)
        return self.stop()

    def stop(self) -> int:
        """Stop the console, the worker (and its process group), then the embedded Redis.
        Idempotent."""
        self._stop_console()
        code = 0
        worker = self.worker
        if worker is not None:
            if worker.poll() is None:
                logger.info("stopping the worker (warm shutdown)")
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(self.stop_timeout_seconds)
                except subprocess.TimeoutExpired:
                    logger.warning(
                        "the worker did not stop within %.0f s; killing it",
                        self.stop_timeout_seconds,
                    )
            # Whatever is left in its group (pool children, beat) goes with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(worker.pid, signal.SIGKILL)
            returncode = worker.wait()
            # A worker stopped by our SIGTERM exits 0 (or -SIGTERM); anything else is its own.
            code = 0 if returncode in (0, -signal.SIGTERM) else returncode
            self.worker = None
        self._stop_redis()
        return code

    def _stop_console(self) -> None:
        console = self.console
        if console is None:
            return
        if console.poll() is None:
            console.send_signal(signal.SIGTERM)  # uvicorn's graceful shutdown
            try:
                console.wait(self.stop_timeout_seconds)
            except subprocess.TimeoutExpired:
                logger.warning("the web console did not stop; killing it")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(console.pid, signal.SIGKILL)
        console.wait()
        self.console = None

    def _stop_redis(self) -> None:
        if self.redis is not None:
            self.redis.stop()
            self.redis = None


def run_up(
    settings: Settings,
    *,
    concurrency: int | None = None,
    loglevel: str | None = None,
    web: bool = True,
    web_host: str = "127.0.0.1",
    web_port: int = 5580,
) -> int:
    """The ``up`` command: run until SIGINT/SIGTERM or until the worker exits.

    Exit status: 0 when a signal stopped the running service, the worker's own status when
    it exited by itself, and 128 + the signal's number (130, 143) when a signal stopped
    ``up`` before it had started everything -- the service never ran.
    """
    service = Service(
        settings,
        concurrency=concurrency,
        loglevel=loglevel,
        web=web,
        web_host=web_host,
        web_port=web_port,
    )
    signals_seen = 0

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal signals_seen
        signals_seen += 1
        logger.info("received %s; shutting down", signal.Signals(signum).name)
        if signals_seen > 1:
            service.kill_worker()  # impatient: skip the warm shutdown
        service.request_stop(signum)

    previous = {
        signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        try:
            service.start()
        except StartupInterrupted:
            service.stop()
            logger.info("start-up interrupted; nothing is left running")
            return 128 + (service.stop_signal or signal.SIGTERM)
        return service.wait()
    finally:
        service.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
