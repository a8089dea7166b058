"""Drive the workload through the cluster while the faults happen, then let it settle.

The harness is the application: it creates the runs with ``start_operation``, as a web
process would, and does to their messages what the fates say (a revoke, an expiry, a
duplicate publish, a tenant deactivated). Each fault and each tampering is an event with
its time, for the checker.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from chaos.cluster import Cluster, Events, now
from chaos.plan import Plan, PlannedFault, PlannedRun
from worker.dispatch import operation_task_name

#: How long a PostgreSQL outage lasts.
OUTAGE_SECONDS = 10.0
#: How long a killed worker stays down before it is started again.
WORKER_DOWN_SECONDS = 2.0
#: Give up on a run creation (the database being down) after this long.
DISPATCH_GIVE_UP_SECONDS = 90.0

logger = logging.getLogger("chaos")


@dataclass
class Dispatched:
    planned: PlannedRun
    run_id: int | None = None
    tenant_id: int | None = None
    task_id: str | None = None
    dispatch: str = "pending"
    error: str | None = None
    dispatched_at: float | None = None
    actions: list[str] = field(default_factory=list)
    #: tamperings done before the run's id was known: (action, when)
    early: list[tuple[str, float]] = field(default_factory=list)


class _Publisher:
    """The Celery app as ``start_operation`` publishes with it, doing a fate's tampering
    after the run's row is committed and before its message is sent: the run is queued,
    and no worker can have started it yet."""

    def __init__(self, app: Any, before: Callable[[str], None] | None = None) -> None:
        self._app = app
        self._before = before

    def send_task(self, name: str, **options: Any) -> Any:
        if self._before is not None:
            self._before(str(options["task_id"]))
        return self._app.send_task(name, **options)


class _ExpiringPublisher(_Publisher):
    """Publishes messages that have already expired."""

    def send_task(self, name: str, **options: Any) -> Any:
        expires = datetime.now(UTC) - timedelta(seconds=1)
        return super().send_task(name, expires=expires, **options)


@dataclass
class Harness:
    cluster: Cluster
    plan: Plan
    events: Events
    workspace_id: int = 0
    tenant_id: int = 0
    spare_tenants: list[int] = field(default_factory=list)
    dispatched: list[Dispatched] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)
    _rng: random.Random = field(init=False)
    #: workers the fault thread is killing and restarting itself (not crashes)
    _managed: set[str] = field(default_factory=set)
    _supervising: threading.Event = field(default_factory=threading.Event)
    _supervisor: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._rng = random.Random(self.plan.seed + 1)

    # -- set-up ---------------------------------------------------------------------------

    def configure(self) -> None:
        """This process publishes and writes as the cluster's application."""
        for key, value in self.cluster.env.items():
            if key.startswith("RUNWARDEN_"):
                os.environ[key] = value
        from worker.settings import get_settings

        get_settings.cache_clear()
        deactivated = sum(1 for r in self.plan.runs if r.fate == "tenant_deactivated")
        with self.cluster.connect() as conn:
            self.workspace_id = conn.execute(
                "INSERT INTO workspaces (name, created_at) VALUES ('chaos', now()) RETURNING id"
            ).fetchone()[0]
            ids = [
                conn.execute(
                    "INSERT INTO tenants (workspace_id, name, is_active, created_at) "
                    "VALUES (%s, %s, true, now()) RETURNING id",
                    (self.workspace_id, f"tenant-{i}"),
                ).fetchone()[0]
                for i in range(deactivated + 1)
            ]
        self.tenant_id, self.spare_tenants = ids[0], ids[1:]

    # -- the workload ---------------------------------------------------------------------

    def supervise(self) -> None:
        """Restart any worker (or beat) that exits by itself, as a production supervisor
        (a container's restart policy) would, recording its crash and the processes it
        took with it -- until :meth:`stop_supervising`."""
        thread = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        thread.start()
        self._supervisor = thread

    def stop_supervising(self) -> None:
        self._supervising.set()
        if self._supervisor is not None:
            self._supervisor.join(30)

    def _supervise(self) -> None:
        seen: dict[str, list[int]] = {}
        processes = [*self.cluster.workers.values(), self.cluster.beat]
        while not self._supervising.wait(0.5):
            for worker in processes:
                if worker is None or worker.name in self._managed:
                    continue
                if worker.alive:
                    assert worker.process is not None
                    seen[worker.name] = [worker.process.pid, *worker.children()]
                    continue
                code = worker.process.returncode if worker.process is not None else None
                self.events.add(
                    "fault",
                    fault="worker_crash",
                    worker=worker.name,
                    pids=seen.get(worker.name, []),
                    returncode=code,
                )
                try:
                    worker.start()
                    self.events.add("restarted", worker=worker.name)
                except Exception as exc:
                    self.events.add("fault_error", fault="worker_crash", error=repr(exc))

    def run(self) -> None:
        started = time.monotonic()
        faults = threading.Thread(target=self._faults, args=(started,), name="faults")
        faults.start()
        for planned in self.plan.runs:
            delay = planned.at - (time.monotonic() - started)
            if delay > 0:
                time.sleep(delay)
            self.dispatched.append(self._dispatch(planned))
        faults.join()
        for thread in self._threads:
            thread.join()

    def _dispatch(self, planned: PlannedRun) -> Dispatched:
        from worker.celery_app import app
        from worker.dispatch import DispatchFailedError, start_operation

        item = Dispatched(planned)
        tenant = self.tenant_id
        if planned.fate == "tenant_deactivated":
            tenant = self.spare_tenants.pop()
        item.tenant_id = tenant
        publisher: Any = app
        if planned.fate == "expired":
            publisher = _ExpiringPublisher(app)
        elif planned.fate == "tenant_deactivated":
            publisher = _Publisher(app, lambda _: self._deactivate(item))
        elif planned.fate == "revoke_queued":
            publisher = _Publisher(app, lambda task_id: self._revoke(item, app, task_id))
        inputs = {"seconds": planned.seconds, "fate": planned.fate}
        give_up = time.monotonic() + DISPATCH_GIVE_UP_SECONDS
        while True:
            try:
                item.dispatched_at = now()
                item.run_id = start_operation(
                    planned.type, self.workspace_id, tenant, inputs=inputs, app=publisher
                )
                item.dispatch = "ok"
                break
            except DispatchFailedError as exc:
                # The broker refused the message: the run ended as run.dispatch_failed.
                item.run_id = exc.operation_run_id
                item.dispatch = "dispatch_failed"
                item.error = type(exc).__name__
                for action, at in item.early:
                    self._act(item, action, at)
                return item
            except Exception as exc:  # the database is down: the application retries
                item.error = type(exc).__name__
                if time.monotonic() > give_up:
                    item.dispatch = "not_created"
                    return item
                time.sleep(0.5)
        for action, at in item.early:
            self._act(item, action, at)
        item.task_id = self._task_id(item.run_id)
        self._tamper(item, app)
        return item

    def _task_id(self, run_id: int) -> str | None:
        for _ in range(200):
            try:
                with self.cluster.connect() as conn:
                    row = conn.execute(
                        "SELECT celery_task_id FROM operation_runs WHERE id = %s", (run_id,)
                    ).fetchone()
                return str(row[0]) if row else None
            except Exception:
                time.sleep(0.2)
        return None

    def _tamper(self, item: Dispatched, app: Any) -> None:
        fate, task_id = item.planned.fate, item.task_id
        if task_id is None:
            return
        try:
            if fate == "duplicate":
                app.send_task(
                    operation_task_name(item.planned.type),
                    kwargs={"operation_run_id": item.run_id},
                    task_id=task_id,
                )
                self._act(item, "duplicate_published")
            elif fate == "revoke_running":
                thread = threading.Thread(target=self._revoke_when_running, args=(item, app))
                thread.start()
                self._threads.append(thread)
        except Exception as exc:  # the broker or database is down: the fault is the fate
            self._act(item, f"{fate}_failed:{type(exc).__name__}")

    def _deactivate(self, item: Dispatched) -> None:
        try:
            with self.cluster.connect() as conn:
                conn.execute(
                    "UPDATE tenants SET is_active = false WHERE id = %s", (item.tenant_id,)
                )
            self._act(item, "tenant_deactivated")
        except Exception as exc:
            self._act(item, f"deactivate_failed:{type(exc).__name__}")

    def _revoke(self, item: Dispatched, app: Any, task_id: str) -> None:
        try:
            app.control.revoke(task_id)
            item.early.append(("revoked", now()))
        except Exception as exc:
            item.early.append((f"revoke_failed:{type(exc).__name__}", now()))

    def _act(self, item: Dispatched, action: str, at: float | None = None) -> None:
        item.actions.append(action)
        self.events.add("tamper", at=at, run=item.run_id, action=action)

    def _revoke_when_running(self, item: Dispatched, app: Any) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with self.cluster.connect() as conn:
                    row = conn.execute(
                        "SELECT status FROM operation_runs WHERE id = %s", (item.run_id,)
                    ).fetchone()
            except Exception:
                row = None
            if row and row[0] == "completed":
                return
            if row and row[0] == "running":
                time.sleep(1.0)
                try:
                    app.control.revoke(item.task_id, terminate=True)
                    self._act(item, "revoked_terminate")
                except Exception as exc:
                    self._act(item, f"revoke_failed:{type(exc).__name__}")
                return
            time.sleep(0.2)

    # -- the faults -----------------------------------------------------------------------

    def _faults(self, started: float) -> None:
        for fault in self.plan.faults:
            delay = fault.at - (time.monotonic() - started)
            if delay > 0:
                time.sleep(delay)
            try:
                self._inject(fault)
            except Exception as exc:
                self.events.add("fault_error", fault=fault.fault, error=repr(exc))

    def _inject(self, fault: PlannedFault) -> None:
        name = fault.fault
        live = [w for w in self.cluster.workers.values() if w.alive]
        if name == "child_kill":
            candidates = [(w, pid) for w in live for pid in w.children()]
            if not candidates:
                self.events.add("fault_skipped", fault=name)
                return
            worker, pid = self._rng.choice(candidates)
            os.kill(pid, 9)
            self.events.add("fault", fault=name, worker=worker.name, pids=[pid])
        elif name == "worker_kill":
            worker = self._rng.choice(live)
            self._managed.add(worker.name)
            try:
                pids = worker.kill()
                killed = self.events.add("fault", fault=name, worker=worker.name, pids=pids)
                time.sleep(WORKER_DOWN_SECONDS)
                worker.start()
                self.events.add("restarted", worker=worker.name, after=killed["t"])
            finally:
                self._managed.discard(worker.name)
        elif name == "redis_restart":
            t0 = now()
            self.cluster.redis.restart()
            self.events.add("fault", fault=name, started=t0)
        elif name == "pg_restart":
            t0 = now()
            self.cluster.postgres.pg_ctl("restart", "-m", "fast")
            self.events.add("fault", fault=name, started=t0)
        elif name == "pg_outage":
            t0 = now()
            self.cluster.postgres.pg_ctl("stop", "-m", "fast")
            time.sleep(OUTAGE_SECONDS)
            self.cluster.postgres.pg_ctl("start")
            self.events.add("fault", fault=name, started=t0)
        elif name == "cli_reconcile":
            out = self.cluster.workdir / f"cli-reconcile-{len(self.events.items)}.log"
            process = self.cluster.reconcile_cli(out)
            self.events.add("fault", fault=name, pid=process.pid, output=out.name)
            thread = threading.Thread(target=self._wait_cli, args=(process, out.name))
            thread.start()
            self._threads.append(thread)
        else:  # pragma: no cover - plan.FAULTS names them all
            raise ValueError(name)

    def _wait_cli(self, process: Any, output: str) -> None:
        returncode = process.wait(300)
        self.events.add("cli_exit", output=output, returncode=returncode)

    # -- settling -------------------------------------------------------------------------

    def settle(self, timeout: float) -> float:
        """Wait until no run is left non-terminal (or ``timeout``); seconds waited."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            try:
                with self.cluster.connect() as conn:
                    left = conn.execute(
                        "SELECT count(*) FROM operation_runs WHERE status <> 'completed'"
                    ).fetchone()[0]
            except Exception:
                left = -1
            if left == 0:
                break
            time.sleep(1.0)
        return time.monotonic() - started
