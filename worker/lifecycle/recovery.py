"""Recovery: a run whose message was lost, or whose worker died, is tried again.

Opt in per type (``recovery = "retry"``, ``max_attempts``). The reconciler requeues
instead of failing only on evidence: a run queued past its window (its message never
started) or running on a lost worker, with attempts left. A run stale on a live worker
(a hung body, ``run.stale_running``) is never retried. The rule is written here, in
``reconcile_pass`` (PostgreSQL) and used by the Python reference; the parity tests hold
them together.

A requeue puts the run back to ``queued`` under a fresh ``celery_task_id`` (so every
write of the old delivery, should it still be alive, loses its compare-and-set), clears
``worker_id``, stamps ``requeued_at`` (the queued window counts from there) and sets
``publish_pending``: the outbox. The new message is published after the requeue commits,
by :func:`publish_pending`, with the publisher the task layer gives (this package never
imports Celery). The message carries Celery ``retries`` equal to the attempts already
started, so its start passes the start statement's compare-and-set (``attempts =
retries``) as the run's next attempt, exactly as a Celery retry does.

Publishing claims the pending rows first (one statement, committed), then hands the
whole claim to the publisher at once, which sends it on one broker connection: a run is
never published twice for one requeue. Each publication the publisher could not send
(broker down, before or part way through the claim) is given back, so a later call
publishes it; a process that dies between its claim and its publish leaves the run
queued with no message -- which is what the queued window catches: the run is requeued
(a try) or failed as ``run.stale_queued``. Within a reconciler call the publisher runs
beside the passes, on a thread of the call's :class:`Outbox`: a pass's messages go out
while the next pass runs in the database.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from models import RunStatus
from worker.db import is_sqlite, write_session
from worker.lifecycle.evidence import dumps, scrub_and_truncate
from worker.lifecycle.freshness import RunLike
from worker.lifecycle.policy import MAX_BATCH_LIMIT, LifecyclePolicy
from worker.lifecycle.reasons import ReasonCode
from worker.lifecycle.sql import statement

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)

REQUEUE_AUDIT_ACTION = "operation_run.requeued"
#: The reasons that are evidence the work never ran to its end through no fault of its
#: own: the message never started, or the worker running it is gone.
RECOVERABLE_REASONS = frozenset({ReasonCode.STALE_QUEUED.value, ReasonCode.WORKER_LOST.value})


class Action(StrEnum):
    """What a pass does with a run it found: ``change.action``."""

    FORCE_FAIL = "force_fail"
    REQUEUE = "requeue"


def current_attempt(run: RunLike) -> int:
    """The try a run is on: the attempts started, the messages that never started, and a
    queued run's message, which is a try of its own."""
    queued = 1 if run.status == RunStatus.QUEUED else 0
    return run.attempts + run.unstarted_attempts + queued


def action_for(run: RunLike, policy: LifecyclePolicy, reason_code: str) -> Action:
    """Requeue a run of a ``retry`` type found for a lost message or worker with attempts
    left; fail it otherwise."""
    if (
        policy.retries(run.type)
        and reason_code in RECOVERABLE_REASONS
        and current_attempt(run) < policy.max_attempts(run.type)
    ):
        return Action.REQUEUE
    return Action.FORCE_FAIL


def attempt_evidence(run: RunLike, policy: LifecyclePolicy) -> dict[str, int]:
    """The evidence keys every change of a pass carries: the try given up on, the
    attempts started, and the type's limit."""
    return {
        "attempt": current_attempt(run),
        "attempts": run.attempts,
        "max_attempts": policy.max_attempts(run.type),
    }


# -- the write -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Requeue:
    """One run back to queued under a new task id, with its audit row."""

    run_id: int
    reason_code: str
    reason_message: str
    source: str
    evidence: Mapping[str, Any]
    #: the run as judged: compare-and-set on its status, attempts and (when known) task id
    expected_status: RunStatus
    expected_attempt: int
    expected_task_id: str | None = None
    celery_task_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def payload(self) -> dict[str, Any]:
        """As ``requeue_runs`` reads it; the audit keys are ``end_runs``' own."""
        return {
            "id": self.run_id,
            "expected_status": self.expected_status.value,
            "expected_attempt": self.expected_attempt,
            "expected_task_id": self.expected_task_id,
            "celery_task_id": self.celery_task_id,
            "source": self.source,
            "audit_action": REQUEUE_AUDIT_ACTION,
            "outcome": "pending",
            "record": {
                "reason_code": self.reason_code,
                "reason_message": self.reason_message,
                "evidence": dict(self.evidence),
            },
        }


def apply_requeues(
    session: Session, requeues: Sequence[Requeue], *, now: datetime | None = None
) -> list[int]:
    """Requeue the runs that are still as judged, in the caller's transaction; return
    the ids won. Each won run gets one ``operation_run.requeued`` audit row."""
    if not requeues:
        return []
    payload = dumps([r.payload() for r in requeues])
    dialect = session.get_bind().dialect.name
    rows = session.execute(statement(dialect, "requeue_runs"), {"now": now, "payload": payload})
    won = {int(row.id) for row in rows}
    if dialect == "sqlite" and won:
        # PostgreSQL wrote the audit rows inside requeue_runs.
        session.execute(
            statement(dialect, "audit_ended_runs"),
            {"now": now, "payload": payload, "won_ids": dumps(sorted(won))},
        )
    return [r.run_id for r in requeues if r.run_id in won]


# -- the outbox ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Publication:
    """A requeued run's new message: its task (by type), id, and the Celery ``retries``
    it carries (the attempts already started)."""

    run_id: int
    type: str
    celery_task_id: str
    retries: int


@dataclass(frozen=True, slots=True)
class PublishFailure:
    """A publication the broker did not take, and why."""

    publication: Publication
    error: BaseException


#: Hands a claim's messages to the broker, in the order given, and returns those it could
#: not send (none: all sent), each with its error; they go back to the outbox. A
#: publisher that raises sent none of them, as far as the caller knows: all go back. A
#: message given back that did reach the broker is harmless: its copy, published again
#: under the same task id and attempt, is refused at its start as a duplicate.
Publisher = Callable[[Sequence[Publication]], Sequence[PublishFailure]]


@dataclass(frozen=True, slots=True)
class PublishResult:
    published: int = 0
    failed: int = 0


def publish_pending(
    engine: Engine | Connection, publisher: Publisher, *, limit: int = MAX_BATCH_LIMIT
) -> PublishResult:
    """Publish every requeued run still waiting for its message (up to ``limit``), all
    in one call of ``publisher`` after their claim committed; give the claim back for
    each publication it could not send."""
    claimed = _claim(engine, limit)
    if not claimed:
        return PublishResult()
    failures = _send(publisher, claimed)
    _give_back(engine, failures)
    return PublishResult(len(claimed) - len(failures), len(failures))


class Outbox:
    """The outbox of one reconciler call, published beside its passes.

    Each claim is made on the caller's connection (``target``, so it commits before any
    of its messages exists) and handed to ``publisher`` on a thread of the outbox's own,
    in claim order: the messages of one pass go out while the next pass runs in the
    database. What the publisher could not send is given back on the caller's connection
    -- with the next claim, or at :meth:`close` for the rest -- for a later call to
    publish. :meth:`close` waits for every claim handed over; the thread is started by
    the first claim that has something in it (a call that requeues nothing starts none,
    and loads no broker client).
    """

    def __init__(
        self, target: Engine | Connection, publisher: Publisher, *, limit: int = MAX_BATCH_LIMIT
    ) -> None:
        self._target = target
        self._publisher = publisher
        self._limit = limit
        self._thread: ThreadPoolExecutor | None = None
        self._handed_over: list[Future[list[PublishFailure]]] = []
        self._claimed = 0
        self._failed = 0

    def publish(self) -> None:
        """Claim what waits for its message and hand it to the publisher; first give back
        what the claims already sent could not send."""
        self._settle(wait=False)
        claimed = _claim(self._target, self._limit)
        if not claimed:
            return
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="runwarden-outbox")
        self._claimed += len(claimed)
        self._handed_over.append(self._thread.submit(_send, self._publisher, claimed))

    def close(self) -> PublishResult:
        """Wait for every claim handed over and give back what it could not send."""
        try:
            self._settle(wait=True)
        finally:
            if self._thread is not None:
                self._thread.shutdown(wait=True)
                self._thread = None
        return PublishResult(self._claimed - self._failed, self._failed)

    def _settle(self, *, wait: bool) -> None:
        settled = [sent for sent in self._handed_over if wait or sent.done()]
        failures = [failure for sent in settled for failure in sent.result()]
        self._handed_over = [sent for sent in self._handed_over if sent not in settled]
        self._failed += len(failures)
        _give_back(self._target, failures)


def _send(publisher: Publisher, claimed: Sequence[Publication]) -> list[PublishFailure]:
    try:
        return list(publisher(claimed))
    except Exception as exc:  # a broker client raises many types; all mean "not sent"
        return [PublishFailure(publication, exc) for publication in claimed]


def _give_back(target: Engine | Connection, failures: Sequence[PublishFailure]) -> None:
    for failure in failures:
        publication = failure.publication
        logger.warning(
            "requeued operation run %s not published (%s); a later pass publishes it",
            publication.run_id,
            scrub_and_truncate(_describe(failure.error), 300),
            extra={
                "operation_run_id": publication.run_id,
                "celery_task_id": publication.celery_task_id,
            },
        )
    if failures:
        _release(target, [failure.publication for failure in failures])


def _describe(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    cause = error.__cause__
    # A broker client's own error often wraps the one that says what happened.
    return f"{text}; {type(cause).__name__}: {cause}" if cause is not None else text


def _claim(target: Engine | Connection, limit: int) -> list[Publication]:
    params = {"limit": limit}
    if isinstance(target, Connection):
        rows = target.execute(statement(target.dialect.name, "claim_publications"), params).all()
    elif is_sqlite(target):
        with write_session(target) as session:
            rows = session.execute(statement("sqlite", "claim_publications"), params).all()
    else:
        with target.begin() as connection:
            rows = connection.execute(statement("postgresql", "claim_publications"), params).all()
    # A run that ended before its message went out needs none; its claim is just cleared.
    return sorted(
        (
            Publication(int(row.id), row.type, row.celery_task_id, int(row.attempts))
            for row in rows
            if row.status == RunStatus.QUEUED
        ),
        key=lambda p: p.run_id,
    )


def _release(target: Engine | Connection, failed: Sequence[Publication]) -> None:
    params = {
        "payload": dumps([{"id": p.run_id, "celery_task_id": p.celery_task_id} for p in failed])
    }
    if isinstance(target, Connection):
        target.execute(statement(target.dialect.name, "release_publications"), params)
    elif is_sqlite(target):
        with write_session(target) as session:
            session.execute(statement("sqlite", "release_publications"), params)
    else:
        with target.begin() as connection:
            connection.execute(statement("postgresql", "release_publications"), params)
