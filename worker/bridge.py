"""Celery signal receivers -> lifecycle transitions (the failed-job bridge).

Connected when ``worker.celery_app`` is imported, so they exist in the worker's main
process (which reports lost workers, hard time limits, revokes and unknown tasks) and in
every pool child (which reports a body's success, exception or retry).

Runs are found by the Celery task id stored on the row: for a lost worker the request
context in the main process can be empty, but the task id is always there. Each receiver
does one short transaction -- in the main process it blocks the consumer loop -- and
never raises: Celery would only log the error, and a receiver failure must not take the
worker down.

A write the database refused for being unreachable (a restart, an outage) is tried again
for up to :data:`WRITE_RETRY_SECONDS` (:func:`worker.db.retry_transient`): a body's
completion is known only to the process that ran it, and the message stays unacknowledged
meanwhile (late acks: the pool child hands its result back only after its receivers ran).
Each write is a compare-and-set, so a try that committed unseen is refused by the next.
A run the bridge still could not end is ended later by the reconciler.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from celery import signals
from sqlalchemy.orm import Session

from worker.db import retry_transient, statement_session
from worker.dispatch import is_operation_task as _is_operation
from worker.lifecycle.reasons import ReasonCode
from worker.lifecycle.task_events import (
    BridgeOutcome,
    TaskFacts,
    bridge_cancel,
    bridge_failure,
    bridge_retry,
    bridge_success,
    reason_for_exception,
)
from worker.settings import current_policy

logger = logging.getLogger(__name__)

_UID = "runwarden.bridge."
#: How long a receiver keeps trying a write while the database is unreachable.
WRITE_RETRY_SECONDS = 60.0


def _write(what: str, write: Callable[[Session], BridgeOutcome]) -> BridgeOutcome:
    """One receiver's write in its own statement session, through database outages."""

    def attempt() -> BridgeOutcome:
        with statement_session() as session:
            return write(session)

    return retry_transient(attempt, seconds=WRITE_RETRY_SECONDS, what=what, log=logger)


def _facts(task_id: str, name: str | None, request: Any) -> TaskFacts:
    # In the main process the sender's request stack may hold another (or no) request:
    # trust its retries/hostname only when it is this task's.
    same = request is not None and getattr(request, "id", None) == task_id
    retries = getattr(request, "retries", None) if same else None
    hostname = getattr(request, "hostname", None) if same else None
    return TaskFacts(
        celery_task_id=task_id,
        task_name=name,
        retries=int(retries) if isinstance(retries, int) else None,
        hostname=hostname or socket.gethostname(),
        pid=os.getpid(),
    )


def _log(event: str, outcome: BridgeOutcome, facts: TaskFacts, reason: str | None) -> None:
    level = logging.INFO if outcome is not BridgeOutcome.NO_RUN else logging.DEBUG
    logger.log(
        level,
        "bridge %s: task %s -> %s%s",
        event,
        facts.celery_task_id,
        outcome.value,
        f" ({reason})" if reason else "",
        extra={
            "celery_task_id": facts.celery_task_id,
            "bridge_event": event,
            "bridge_outcome": outcome.value,
            "reason_code": reason,
            "source": "failed_job_bridge",
        },
    )


def _on_success(sender: Any = None, result: Any = None, **_: Any) -> None:
    if not _is_operation(getattr(sender, "name", None)) or not isinstance(result, dict):
        return
    request = getattr(sender, "request", None)
    try:
        outcome = _write(
            f"completion of operation run {result['operation_run_id']}",
            lambda session: bridge_success(
                session,
                run_id=int(result["operation_run_id"]),
                attempt=int(result["attempt"]),
                celery_task_id=str(result["celery_task_id"]),
                outcome=result["outcome"],
                summary_counts=result.get("summary_counts"),
            ),
        )
    except Exception:
        logger.exception("bridge could not record the success of %s", getattr(request, "id", "?"))
        return
    if outcome is not BridgeOutcome.APPLIED:
        # A reconciler or a revoke ended the run first (its verdict stands), or the run
        # now belongs to another delivery.
        logger.warning(
            "operation run %s finished but had already ended or is no longer this "
            "delivery's; its completion is not recorded",
            result.get("operation_run_id"),
            extra={"operation_run_id": result.get("operation_run_id")},
        )


def _on_failure(
    sender: Any = None, task_id: str | None = None, exception: BaseException | None = None, **_: Any
) -> None:
    name = getattr(sender, "name", None)
    if not _is_operation(name) or not task_id:
        return
    facts = _facts(task_id, name, getattr(sender, "request", None))
    reason = reason_for_exception(exception) if exception is not None else ReasonCode.JOB_FAILED
    # The body of attempt retries + 1 failed (when the request says which delivery).
    attempts = None if facts.retries is None else facts.retries + 1
    _apply_failure("task_failure", facts, reason, exception, attempts=attempts)


def _apply_failure(
    event: str,
    facts: TaskFacts,
    reason: ReasonCode,
    exception: BaseException | None,
    extra: dict[str, Any] | None = None,
    *,
    attempts: int | None,
) -> None:
    try:
        outcome = _write(
            f"{reason} of task {facts.celery_task_id}",
            lambda session: bridge_failure(
                session,
                reason_code=reason,
                facts=facts,
                exception=exception,
                policy=current_policy(),
                attempts=attempts,
                extra_evidence=extra,
            ),
        )
    except Exception:
        logger.exception("bridge could not record %s for task %s", reason, facts.celery_task_id)
        return
    _log(event, outcome, facts, reason)


def _on_retry(sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
    name = getattr(sender, "name", None)
    task_id = getattr(request, "id", None)
    if not _is_operation(name) or not task_id:
        return
    facts = _facts(task_id, name, request)
    # ``reason`` is Celery's Retry; the error the attempt failed with is its ``exc``.
    original = getattr(reason, "exc", None)
    if not isinstance(original, BaseException):
        original = reason if isinstance(reason, BaseException) else None
    retry_in = _retry_in_seconds(getattr(reason, "when", None))
    try:
        outcome = _write(
            f"retry of task {task_id}",
            lambda session: bridge_retry(
                session, facts=facts, exception=original, retry_in_seconds=retry_in
            ),
        )
    except Exception:
        logger.exception("bridge could not record the retry of task %s", task_id)
        return
    _log("task_retry", outcome, facts, None)


def _retry_in_seconds(when: object) -> float | None:
    """How long until the retry is due: Retry.when is the countdown in seconds, or the
    ETA (a datetime, or its ISO text)."""
    if isinstance(when, int | float) and not isinstance(when, bool):
        return float(when)
    if isinstance(when, str):
        with contextlib.suppress(ValueError):
            when = datetime.fromisoformat(when)
    if isinstance(when, datetime):
        eta = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
        # Relative to this host's clock, as the ETA itself was computed.
        return (eta - datetime.now(UTC)).total_seconds()
    return None


def _on_revoked(
    sender: Any = None,
    request: Any = None,
    terminated: bool = False,
    signum: Any = None,
    expired: bool = False,
    **_: Any,
) -> None:
    name = getattr(sender, "name", None)
    task_id = getattr(request, "id", None)
    if not _is_operation(name) or not task_id:
        return
    facts = _facts(task_id, name, request)
    if expired:
        # Discarded before it ran: the body never started, the message is gone. Its run
        # is this message's only while no later attempt started.
        _apply_failure(
            "task_revoked",
            facts,
            ReasonCode.EXPIRED,
            None,
            {"expired": True},
            attempts=facts.retries,
        )
        return
    try:
        outcome = _write(
            f"revoke of task {task_id}",
            lambda session: bridge_cancel(
                session,
                facts=facts,
                signum=signum,
                terminated=terminated,
                policy=current_policy(),
            ),
        )
    except Exception:
        logger.exception("bridge could not record the revoke of task %s", task_id)
        return
    _log("task_revoked", outcome, facts, ReasonCode.CANCELLED)


def _on_unknown(name: str | None = None, id: str | None = None, **_: Any) -> None:
    if not _is_operation(name) or not id:
        return
    facts = TaskFacts(
        celery_task_id=id,
        task_name=name,
        retries=None,
        hostname=socket.gethostname(),
        pid=os.getpid(),
    )
    # No worker knows the task: every delivery of this message is unknown alike.
    _apply_failure("task_unknown", facts, ReasonCode.TASK_UNKNOWN, None, attempts=None)


def connect() -> None:
    """Connect the receivers (idempotent: dispatch_uid)."""
    signals.task_success.connect(_on_success, weak=False, dispatch_uid=_UID + "success")
    signals.task_failure.connect(_on_failure, weak=False, dispatch_uid=_UID + "failure")
    signals.task_retry.connect(_on_retry, weak=False, dispatch_uid=_UID + "retry")
    signals.task_revoked.connect(_on_revoked, weak=False, dispatch_uid=_UID + "revoked")
    signals.task_unknown.connect(_on_unknown, weak=False, dispatch_uid=_UID + "unknown")
