"""The worker's own heartbeat: its main process registers in ``runwarden_workers`` and
heartbeats there, on the database's clock, without any cooperation from task bodies.

:class:`LivenessStep` is a Celery worker bootstep. It registers the worker when the
blueprint is applied -- before the pool forks its children, so every child inherits the
worker's id (:func:`current_worker_id`) and the statement that starts a run records it.
A daemon thread of the main process heartbeats every ``heartbeat_interval_seconds``: a
pool busy with long bodies, or an event loop busy dispatching, never delays it, and a
database that hangs or is down costs skipped beats (logged) -- never the worker.

The worker is marked stopped once it can no longer end a run itself: after a warm
shutdown drained its pool (``worker_shutdown``, sent after the blueprint stopped), or at
a cold shutdown, whose tasks are terminated. Until then it keeps heartbeating, so a warm
shutdown that waits for long bodies never makes them look lost.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import socket
import threading
from typing import Any

from celery import bootsteps, signals
from sqlalchemy import Engine

from worker.lifecycle.evidence import scrub_and_truncate
from worker.lifecycle.policy import WorkerPolicy
from worker.lifecycle.sql import statement

logger = logging.getLogger(__name__)


class _Process:
    #: The main process's liveness, for the shutdown signal (one per process).
    active: WorkerLiveness | None = None
    #: The registered worker's id, shared with the pool children it forks (0: none). A
    #: ``RawValue`` lives in shared memory, made by the worker's main process before its
    #: pool forks (no other process makes one): a child forked before a late registration
    #: (the database was down at start-up) still sees the id once the main process has it.
    worker_id: Any = None


def current_worker_id() -> int | None:
    """The id of the registered worker this process belongs to (its main process or one
    of its pool children); None outside a registered worker."""
    shared = _Process.worker_id
    return (int(shared.value) or None) if shared is not None else None


class WorkerLiveness:
    """Registration, heartbeats and stop of one worker's main process."""

    def __init__(self, engine: Engine, policy: WorkerPolicy, nodename: str) -> None:
        self._engine = engine
        self._policy = policy
        self.nodename = nodename
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        if _Process.worker_id is None:
            _Process.worker_id = multiprocessing.RawValue(ctypes.c_longlong, 0)
        self._shared_id = _Process.worker_id
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.beats = 0
        self.missed = 0

    @property
    def worker_id(self) -> int | None:
        return current_worker_id()

    def register(self) -> bool:
        """Register this worker; False (logged) if the database could not be reached --
        the heartbeat thread tries again at each beat."""
        try:
            with self._session() as session:
                worker_id = session.execute(
                    self._statement("register_worker"),
                    {"nodename": self.nodename, "hostname": self.hostname, "pid": self.pid},
                ).scalar_one()
        except Exception as exc:  # a database hiccup must not stop the worker
            self._log_failure("could not register worker", exc)
            return False
        self._shared_id.value = int(worker_id)
        logger.info(
            "worker %s registered as runwarden worker %d (heartbeat every %d s, lost after %d s)",
            self.nodename,
            worker_id,
            self._policy.heartbeat_interval_seconds,
            self._policy.lost_after_seconds,
            extra={"worker_id": int(worker_id), "nodename": self.nodename},
        )
        return True

    def beat(self) -> bool:
        """One heartbeat (one statement); False when it was skipped."""
        worker_id = self.worker_id
        if worker_id is None:
            return self.register()
        try:
            with self._session() as session:
                alive = session.execute(
                    self._statement("worker_heartbeat"), {"worker_id": worker_id}
                ).first()
        except Exception as exc:  # skip the beat, keep the worker
            self.missed += 1
            self._log_failure("worker heartbeat skipped", exc)
            return False
        self.beats += 1
        return alive is not None

    def start(self) -> None:
        """Start heartbeating from a daemon thread of this (the main) process."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, name="runwarden-worker-heartbeat", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop heartbeating and mark the worker stopped (once, main process only)."""
        with self._lock:
            if self._stopped.is_set() or os.getpid() != self.pid:
                return
            self._stopped.set()
        worker_id = self.worker_id
        if worker_id is None:
            return
        try:
            with self._session() as session:
                session.execute(self._statement("stop_worker"), {"worker_id": worker_id})
        except Exception as exc:  # its heartbeats stop: it is lost soon anyway
            self._log_failure("could not mark worker stopped", exc)
            return
        logger.info("runwarden worker %d stopped", worker_id, extra={"worker_id": worker_id})

    def dispose_in_child(self) -> None:
        self._engine.dispose(close=False)

    def _run(self) -> None:
        interval = self._policy.heartbeat_interval_seconds
        while not self._stopped.wait(interval):
            self.beat()

    def _session(self) -> Any:
        from worker.db import statement_session

        return statement_session(self._engine)

    def _statement(self, name: str) -> Any:
        return statement(self._engine.dialect.name, name)

    def _log_failure(self, what: str, exc: BaseException) -> None:
        logger.warning(
            "%s: %s",
            what,
            scrub_and_truncate(f"{type(exc).__name__}: {exc}", 300),
            extra={"nodename": self.nodename},
        )


class LivenessStep(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery is untyped
    """Registers the worker before its pool forks, heartbeats while it runs."""

    label = "runwarden liveness"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.liveness: WorkerLiveness | None = None

    def create(self, parent: Any) -> WorkerLiveness:
        from worker.db import build_engine
        from worker.settings import current_policy, get_settings

        # Its own engine: the heartbeat thread never shares a connection with the event
        # loop, and pool children never use it (see _forget_in_child).
        liveness = WorkerLiveness(
            build_engine(get_settings().resolved_database_url),
            current_policy().workers,
            str(parent.hostname),
        )
        liveness.register()
        self.liveness = _Process.active = liveness
        return liveness

    def start(self, parent: Any) -> None:
        if self.liveness is not None:
            self.liveness.start()

    def stop(self, parent: Any) -> None:
        # A warm stop: the pool is still draining its bodies; keep heartbeating until
        # worker_shutdown says it is done.
        pass

    def shutdown(self, parent: Any) -> None:
        # A cold stop: the pool's bodies are terminated, none will end by this worker.
        if self.liveness is not None:
            self.liveness.stop()


def _on_worker_shutdown(**_: Any) -> None:
    if _Process.active is not None:
        _Process.active.stop()


def _forget_in_child() -> None:
    # A forked pool child inherits the main process's liveness; it must neither heartbeat
    # nor close the main process's connection (dispose without closing).
    active, _Process.active = _Process.active, None
    if active is not None:
        active.dispose_in_child()


os.register_at_fork(after_in_child=_forget_in_child)
signals.worker_shutdown.connect(_on_worker_shutdown, weak=False)
