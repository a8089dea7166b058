"""Whether the worker that started a run can still end it.

A worker's main process registers in ``runwarden_workers`` and heartbeats there on the
database's clock (:mod:`worker.liveness` does it for Celery). A worker is **lost** when it
has not heartbeated for the policy's ``lost_after_seconds``, **stopped** when it shut down
(its pool drained or its tasks terminated): either way a run it still holds ``running``
will never end by its hand, and the reconciler fails it with ``run.worker_lost``. The
rule is written here, in ``reconcile_pass`` and in SQLite's ``scan_stale_runs``; the
parity tests hold them together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, func, select

import models
from models import RunStatus
from worker.lifecycle.clock import database_up_since
from worker.lifecycle.evidence import iso, iso_or_none
from worker.lifecycle.freshness import RunLike
from worker.lifecycle.policy import WorkerPolicy

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


class WorkerState(StrEnum):
    ALIVE = "alive"
    LOST = "lost"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class WorkerSnapshot:
    """A worker's row as read by a scan or a lookup."""

    id: int
    nodename: str
    hostname: str
    pid: int
    started_at: datetime
    last_heartbeat_at: datetime
    stopped_at: datetime | None = None
    #: When the database last started, as read with the row (None: not known, or the
    #: clock is pinned): heartbeats sent while it was down were never received.
    database_up_since: datetime | None = field(default=None, compare=False)

    @classmethod
    def of(
        cls, row: models.RunwardenWorker, database_up_since: datetime | None = None
    ) -> WorkerSnapshot:
        return cls(
            row.id,
            row.nodename,
            row.hostname,
            row.pid,
            row.started_at,
            row.last_heartbeat_at,
            row.stopped_at,
            database_up_since,
        )

    def state(self, policy: WorkerPolicy, now: datetime) -> WorkerState:
        """On the database's clock ``now``: silent for longer than ``lost_after_seconds``
        is lost (the same strict comparison as the SQL: exactly at the threshold is alive).
        Its silence counts from its last heartbeat, or from the database's start if that is
        later: a database restart or outage is not a worker's death."""
        if self.stopped_at is not None:
            return WorkerState.STOPPED
        heard = self.last_heartbeat_at
        if self.database_up_since is not None and self.database_up_since > heard:
            heard = self.database_up_since
        if heard < now - timedelta(seconds=policy.lost_after_seconds):
            return WorkerState.LOST
        return WorkerState.ALIVE

    def heard_after(self, moment: datetime) -> bool:
        """Whether the database heard this worker after ``moment``: its heartbeats were
        getting through then, so a run of it that stayed silent since was really silent."""
        return self.last_heartbeat_at > moment

    def last_seen(self) -> datetime:
        """When it was last known to be working: its stop, else its last heartbeat."""
        return self.stopped_at or self.last_heartbeat_at

    def evidence(self) -> dict[str, Any]:
        """``evidence.worker`` of a forced transition (the contract's keys)."""
        return {
            "id": self.id,
            "nodename": self.nodename,
            "hostname": self.hostname,
            "pid": self.pid,
            "last_heartbeat_at": iso(self.last_heartbeat_at),
            "stopped_at": iso_or_none(self.stopped_at),
        }

    def to_dict(self, policy: WorkerPolicy, now: datetime, running_runs: int) -> dict[str, Any]:
        """One row of ``runwarden workers --json``."""
        return {
            "id": self.id,
            "nodename": self.nodename,
            "hostname": self.hostname,
            "pid": self.pid,
            "started_at": iso(self.started_at),
            "last_heartbeat_at": iso(self.last_heartbeat_at),
            "stopped_at": iso_or_none(self.stopped_at),
            "state": self.state(policy, now).value,
            "running_runs": running_runs,
        }


def judged_by_worker(run: RunLike, worker_id: int | None) -> bool:
    """Whether ``run``'s worker decides its liveness: a running run with a recorded worker
    that is not waiting for a retry (a retry may start on any worker; its due time and the
    type's window judge it until then)."""
    return run.status == RunStatus.RUNNING and worker_id is not None and run.retry_due_at is None


def worker_of(
    session: Session, run: RunLike, *, database_up_since: datetime | None = None
) -> WorkerSnapshot | None:
    """The worker that started ``run``'s current attempt, if one is recorded."""
    if run.worker_id is None:
        return None
    row = session.get(models.RunwardenWorker, run.worker_id)
    return WorkerSnapshot.of(row, database_up_since) if row is not None else None


def count_alive(session: Session, policy: WorkerPolicy, now: datetime) -> int:
    """How many workers are alive at ``now`` (the database's clock), counted in SQL:
    :meth:`WorkerSnapshot.state`'s rule as a WHERE, so stopped workers piling up in the
    table are never loaded (``runwarden_workers_alive``, the overview)."""
    cutoff = now - timedelta(seconds=policy.lost_after_seconds)
    up_since = database_up_since(session)
    heard: ColumnElement[bool]
    if up_since is not None and up_since >= cutoff:
        # Restarted within lost_after_seconds: no registered worker has been silent
        # that long while the database could hear it.
        heard = models.RunwardenWorker.last_heartbeat_at.is_not(None)
    else:
        heard = models.RunwardenWorker.last_heartbeat_at >= cutoff
    count = session.scalar(
        select(func.count())
        .select_from(models.RunwardenWorker)
        .where(models.RunwardenWorker.stopped_at.is_(None))
        .where(heard)
    )
    return int(count or 0)


def list_workers(session: Session, *, limit: int = 50) -> list[tuple[WorkerSnapshot, int]]:
    """The newest ``limit`` registered workers, with how many running runs each holds."""
    running = (
        select(models.OperationRun.worker_id, func.count().label("running"))
        .where(models.OperationRun.status == RunStatus.RUNNING.value)
        .where(models.OperationRun.worker_id.is_not(None))
        .group_by(models.OperationRun.worker_id)
        .subquery()
    )
    rows = session.execute(
        select(models.RunwardenWorker, func.coalesce(running.c.running, 0))
        .outerjoin(running, running.c.worker_id == models.RunwardenWorker.id)
        .order_by(models.RunwardenWorker.id.desc())
        .limit(limit)
    ).all()
    up_since = database_up_since(session)
    return [(WorkerSnapshot.of(worker, up_since), int(count)) for worker, count in rows]
