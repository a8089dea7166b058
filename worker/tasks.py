"""Celery tasks: on-demand and scheduled reconciliation, and the base for operation tasks.

Thin shells: every decision is a call into :mod:`worker.lifecycle`.

Application code declares operations with :func:`operation`::

    @operation("inventory.sync")
    def inventory_sync(run: RunContext, **inputs) -> OperationResult | None:
        run.heartbeat()
        return OperationResult(outcome="succeeded", summary_counts={"items": 3})
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Never

from celery import Task
from celery.exceptions import Ignore, Reject

from models import RunOutcome
from worker.celery_app import RECONCILE_TASK, SCHEDULED_RECONCILE_TASK, app, tick_limits
from worker.db import TRANSIENT_ERRORS, get_engine, statement_session, write_session
from worker.errors import InvalidOptionsError, RunwardenError
from worker.lifecycle.evidence import scrub_and_truncate
from worker.lifecycle.execution import StartDecision, StartedRun, parse_run_id, start_execution
from worker.lifecycle.execution import heartbeat as heartbeat_transition
from worker.lifecycle.gate import QueuedExecutionLegitimacyGate
from worker.lifecycle.policy import LifecyclePolicy
from worker.lifecycle.reconciler import (
    ON_DEMAND_SOURCE,
    SCHEDULED_SOURCE,
    OperationLifecycleReconciler,
    ReconcileOptions,
)
from worker.lifecycle.recovery import Publication, PublishFailure
from worker.lifecycle.task_events import TaskFacts
from worker.lifecycle.ticks import RECONCILE_TICK, record_tick
from worker.lifecycle.transitions import TASK_OUTCOMES
from worker.liveness import current_worker_id
from worker.locks import RECONCILE_LOCK_KEY, RedisLock, redis_client
from worker.publishing import operation_task_name, publish_requeued
from worker.settings import current_policy, get_settings

logger = logging.getLogger(__name__)

# -- operation tasks ---------------------------------------------------------------------


@dataclass(frozen=True)
class OperationResult:
    """What a body reports; returning ``None`` means succeeded with no counts."""

    outcome: RunOutcome | str = RunOutcome.SUCCEEDED
    summary_counts: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        outcome = RunOutcome(self.outcome)
        # blocked/cancelled are decided by runwarden, never claimed by a body.
        if outcome not in TASK_OUTCOMES:
            raise ValueError(
                f"an operation ends as succeeded, partially_succeeded or failed, not {outcome}"
            )
        object.__setattr__(self, "outcome", outcome)

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": str(self.outcome), "summary_counts": dict(self.summary_counts)}


@dataclass(frozen=True, slots=True)
class RunContext(StartedRun):
    """The run as a body sees it: the started run (id, type, workspace_id, tenant_id,
    user_id, inputs, attempt) and what the body may do with it."""

    _task: OperationTask | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of_started(cls, run: StartedRun, task: OperationTask) -> RunContext:
        return cls(**{f.name: getattr(run, f.name) for f in fields(StartedRun)}, _task=task)

    def heartbeat(self) -> bool:
        """Record that the run is alive; False means it ended meanwhile, or another
        delivery owns it now (stop working).

        A database that cannot be reached (restarting, down) is no reason to stop: the
        heartbeat is logged as not recorded and True returned, and the body goes on. Its
        completion is fenced on its delivery anyway, and is retried while the database
        is away (worker/bridge.py)."""
        try:
            with statement_session() as session:
                return heartbeat_transition(
                    session,
                    self.id,
                    attempt=self.attempt,
                    celery_task_id=self.celery_task_id,
                )
        except TRANSIENT_ERRORS as exc:
            logger.warning(
                "heartbeat of operation run %s not recorded: the database is unreachable (%s)",
                self.id,
                type(exc).__name__,
                extra={"operation_run_id": self.id},
            )
            return True

    def retry(self, exc: BaseException | None = None, countdown: float | None = None) -> Any:
        """Retry this attempt later (raises Celery's ``Retry``)."""
        if self._task is None:
            raise RuntimeError("this run context has no task to retry")
        return self._task.retry(exc=exc, countdown=countdown)


OperationBody = Callable[..., "OperationResult | None"]


@functools.lru_cache(maxsize=4)
def _gate(policy: LifecyclePolicy) -> QueuedExecutionLegitimacyGate:
    # One gate per policy and process: it caches its SQL form.
    return QueuedExecutionLegitimacyGate(policy)


def _facts(task: Task) -> TaskFacts:
    request = task.request
    return TaskFacts(
        celery_task_id=str(request.id),
        task_name=task.name,
        retries=int(request.retries or 0),
        hostname=request.hostname or socket.gethostname(),
        pid=os.getpid(),
    )


#: A start that hits a database error is tried this often in place, then its message goes
#: back to the broker: an error before the body starts never fails the run and never
#: counts as one of its retries.
START_TRIES = 3
START_RETRY_DELAY_SECONDS = 0.5


class OperationTask(Task):  # type: ignore[misc]  # Celery is untyped
    """Base of every operation task: guards the start, runs the body, reports its result.

    The start runs in :meth:`before_start`, which Celery calls before ``run`` and outside
    it: ``autoretry_for`` wraps ``run`` only, so a start error can never turn into one of
    the body's retries, and ``Ignore``/``Reject`` raised there are handled as they are in
    the body (no ``task_failure``).

    ``typing = False``: the body's signature ``(run, **inputs)`` is not the message's
    (``operation_run_id=``). ``ignore_result``: the run row is the result; a SUCCESS stored
    under the shared task id would make Celery take a later redelivery's death for
    "succeeded before the worker was lost" and skip ``task_failure``.
    """

    typing = False
    ignore_result = True
    acks_late = True
    reject_on_worker_lost = False
    operation_type: str = ""
    body: OperationBody | None = None

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        self.request.runwarden_run = self._guarded_start(task_id, kwargs)

    def _guarded_start(self, task_id: str, kwargs: Any) -> StartedRun:
        raw = kwargs.get("operation_run_id") if isinstance(kwargs, Mapping) else None
        run_id = parse_run_id(raw)
        if run_id is None:
            # Refused before anything is read: never truncate 2.7 to run 2.
            self._not_executed(raw, "invalid_run_id", None)
        gate = _gate(current_policy())
        for attempt in range(1, START_TRIES + 1):
            try:
                with statement_session() as session:
                    start = start_execution(
                        session,
                        run_id,
                        gate=gate,
                        celery_task_id=str(task_id),
                        retries=int(self.request.retries or 0),
                        evidence=_facts(self).to_dict(),
                        worker_id=current_worker_id(),
                    )
                break
            except TRANSIENT_ERRORS as exc:
                if attempt == START_TRIES:
                    logger.warning(
                        "operation run %s could not start (%s); its message goes back to "
                        "the broker",
                        run_id,
                        scrub_and_truncate(f"{type(exc).__name__}: {exc}", 300),
                        extra={"operation_run_id": run_id, "celery_task_id": task_id},
                    )
                    raise Reject(requeue=True) from None
                time.sleep(START_RETRY_DELAY_SECONDS * attempt)
        if not start.started or start.run is None:
            self._not_executed(run_id, start.decision.value, start.reason_code)
        return start.run

    def _not_executed(self, run_id: object, decision: str, reason_code: str | None) -> Never:
        blocked = decision == StartDecision.BLOCKED.value
        logger.log(
            logging.INFO if blocked else logging.WARNING,
            "operation run %r not executed: %s",
            run_id,
            decision,
            extra={
                "operation_run_id": run_id,
                "decision": decision,
                "reason_code": reason_code,
                "celery_task_id": self.request.id,
            },
        )
        # Ignore: no result, no task_success/task_failure, message acknowledged.
        raise Ignore()

    def execute_operation(self) -> dict[str, Any]:
        if self.body is None:  # pragma: no cover - operation() always sets it
            raise RuntimeError(f"{self.name} has no body")
        run: StartedRun | None = getattr(self.request, "runwarden_run", None)
        if run is None:
            raise RuntimeError(f"{self.name} runs only in a worker, after its guarded start")
        returned = self.body(RunContext.of_started(run, self), **run.inputs)
        if returned is None:
            returned = OperationResult()
        if not isinstance(returned, OperationResult):
            raise TypeError(
                f"operation {self.operation_type!r} returned {type(returned).__name__}; "
                "return an OperationResult or None"
            )
        # task_success (worker/bridge.py) completes the run with this, fenced on the
        # delivery that ran the body.
        return {
            "operation_run_id": run.id,
            "attempt": run.attempt,
            "celery_task_id": run.celery_task_id,
            **returned.to_dict(),
        }


def operation(type_name: str, **task_options: Any) -> Callable[[OperationBody], Any]:
    """Declare ``body`` as the task of run type ``type_name`` (``operations.<type>``).

    ``task_options`` are Celery task options (``time_limit``, ``autoretry_for``,
    ``max_retries``, ``default_retry_delay``...).
    """
    if not type_name or not type_name.strip():
        raise ValueError("an operation needs a run type name")

    def decorate(body: OperationBody) -> Any:
        @functools.wraps(body)
        def run(task: OperationTask, **_: Any) -> dict[str, Any]:
            # The message's operation_run_id was read (and validated) by the start.
            return task.execute_operation()

        return app.task(
            name=operation_task_name(type_name),
            base=OperationTask,
            bind=True,
            operation_type=type_name,
            body=staticmethod(body),
            **task_options,
        )(run)

    return decorate


# -- reconciliation ----------------------------------------------------------------------


def _publish(publications: Sequence[Publication]) -> list[PublishFailure]:
    # The app the ticks run in: its broker is where the workers listen.
    return publish_requeued(publications, app=app)


def _error_result(exc: RunwardenError) -> dict[str, Any]:
    return {"error": {"type": type(exc).__name__, "message": exc.message}}


@app.task(name=RECONCILE_TASK, typing=False, ignore_result=False)  # type: ignore[untyped-decorator]
def reconcile_operation_runs(
    types: list[str] | None = None,
    tenant_ids: list[int] | None = None,
    workspace_ids: list[int] | None = None,
    limit: int | None = None,
    dry_run: bool = False,
    **unknown: Any,
) -> dict[str, Any]:
    """One on-demand pass; returns the contract result, or ``{"error": ...}`` for bad
    kwargs (validated before anything is read or written)."""
    try:
        if unknown:
            names = ", ".join(sorted(unknown))
            raise InvalidOptionsError(f"invalid reconcile option {names}: unknown option")
        options = ReconcileOptions(
            types=types,
            tenant_ids=tenant_ids if tenant_ids is not None else [],
            workspace_ids=workspace_ids if workspace_ids is not None else [],
            limit=limit,
            dry_run=dry_run,
            source=ON_DEMAND_SOURCE,
        )
        reconciler = OperationLifecycleReconciler(current_policy(), publisher=_publish)
        result = reconciler.reconcile(get_engine(), options)
    except RunwardenError as exc:
        logger.warning("on-demand reconcile refused: %s", exc.message)
        return _error_result(exc)
    return result.to_dict()


@app.task(name=SCHEDULED_RECONCILE_TASK, ignore_result=False)  # type: ignore[untyped-decorator]
def reconcile_scheduled() -> dict[str, Any]:
    """The beat tick: drain stale runs within a time budget, one tick at a time."""
    policy = current_policy()
    limits = tick_limits(policy.interval_seconds)
    # The app's own broker: an application may have configured app.conf.broker_url
    # itself, and the lock must live where the ticks are published.
    lock = RedisLock(
        redis_client(str(app.conf.broker_url or get_settings().resolved_broker_url)),
        RECONCILE_LOCK_KEY,
        ttl_seconds=limits.lock_ttl_seconds,
    )
    started = time.monotonic()
    if not lock.acquire():
        logger.info(
            "reconcile tick skipped: another tick holds the lock",
            extra={"source": SCHEDULED_SOURCE, "skipped_reason": "locked"},
        )
        return {"skipped_reason": "locked"}
    try:
        reconciler = OperationLifecycleReconciler(policy, publisher=_publish)
        result = reconciler.drain(
            get_engine(),
            ReconcileOptions(source=SCHEDULED_SOURCE),
            budget_seconds=limits.budget_seconds,
            # Still this tick's? A tick whose lock expired stops: the next one took over.
            between_passes=lock.extend,
        )
    finally:
        lock.release()
    duration_ms = int((time.monotonic() - started) * 1000)
    summary = {
        "passes": result.passes,
        "candidates": result.candidates,
        "reconciled": result.reconciled,
        "skipped": result.skipped,
        "duration_ms": duration_ms,
    }
    # The console and /metrics read when the last tick finished (the database's clock).
    with write_session(get_engine()) as session:
        record_tick(
            session,
            RECONCILE_TICK,
            passes=result.passes,
            candidates=result.candidates,
            reconciled=result.reconciled,
            skipped=result.skipped,
            duration_ms=duration_ms,
        )
    logger.info(
        "reconcile tick: passes=%d candidates=%d reconciled=%d skipped=%d duration_ms=%d",
        result.passes,
        result.candidates,
        result.reconciled,
        result.skipped,
        duration_ms,
        extra={"source": SCHEDULED_SOURCE, **summary},
    )
    applied = [change.operation_run_id for change in result.changes if change.applied]
    return {**summary, "reconciled_run_ids": applied}
