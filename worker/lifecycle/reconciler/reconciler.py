"""The operation lifecycle reconciler: finds stale non-terminal runs and force-fails them
with evidence.

Ported from the seed's ``OperationLifecycleReconciler`` (same result shape, same
assessment), with the contract's differences:

- Staleness is decided in SQL with per-type cutoffs, so a block of fresh long-running runs
  with low ids can never hide stale runs behind them (the seed filters after ``LIMIT``).
- One transaction per pass: the scan locks its rows (``FOR UPDATE SKIP LOCKED`` on
  PostgreSQL; ``BEGIN IMMEDIATE`` on SQLite) and the writes are set-based -- a constant
  number of statements per pass however many runs it fails (one on PostgreSQL).

Which pass runs is decided once per call, in :meth:`OperationLifecycleReconciler._passes`.

Recovery: a pass may requeue runs (``recovery = "retry"``) instead of failing them. Given
a publisher (the task layer's; this package never imports Celery) and an engine, the
reconciler publishes their messages once each pass that requeued has committed -- beside
the next pass, on the call's outbox thread -- and, first thing in every call, any requeue
still waiting for its message (:mod:`worker.lifecycle.recovery`). A call returns when
every message is published or given back to the outbox.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy.engine import Connection

import models
from models import RunStatus
from worker.db import is_sqlite, read_session, write_session
from worker.errors import InvalidOptionsError
from worker.lifecycle.clock import database_now, database_up_since
from worker.lifecycle.freshness import RunLike
from worker.lifecycle.gate import QueuedExecutionLegitimacyGate
from worker.lifecycle.liveness import worker_of
from worker.lifecycle.policy import LifecyclePolicy
from worker.lifecycle.reconciler.assessment import Assessment, assess, change_of
from worker.lifecycle.reconciler.explain import RunExplanation, explain
from worker.lifecycle.reconciler.options import SCHEDULED_SOURCE, ReconcileOptions, scan_types
from worker.lifecycle.reconciler.passes import PassPlan, python_pass, statement_pass
from worker.lifecycle.reconciler.results import DrainResult, ReconcileChange, ReconcileResult
from worker.lifecycle.recovery import (
    Action,
    Outbox,
    Publisher,
    PublishResult,
    Requeue,
    apply_requeues,
    publish_pending,
)
from worker.lifecycle.transitions import end_run, forced_failure

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

Options = ReconcileOptions | Mapping[str, Any] | None


class OperationLifecycleReconciler:
    def __init__(
        self,
        policy: LifecyclePolicy,
        *,
        now: Callable[[], datetime] | None = None,
        gate: QueuedExecutionLegitimacyGate | None = None,
        publisher: Publisher | None = None,
    ) -> None:
        """``now`` pins the clock (tests); by default every decision is made on the
        database's clock (:mod:`worker.lifecycle.clock`). ``publisher`` hands a requeued
        run's new message to the broker; without one, requeued runs wait in the outbox
        for a reconciler that has one."""
        self._policy = policy
        self._now = now
        self._gate = gate or QueuedExecutionLegitimacyGate(policy)
        self._publisher = publisher

    @property
    def policy(self) -> LifecyclePolicy:
        return self._policy

    # -- passes ------------------------------------------------------------------------

    def reconcile(self, target: Session | Engine, options: Options = None) -> ReconcileResult:
        """One pass. Given an engine, the pass is its own transaction (committed here);
        given a session, it runs in the caller's transaction, which must be a write
        transaction (:func:`worker.db.write_session`) unless it is a dry run."""
        with self._passes(target, ReconcileOptions.coerce(options)) as run_pass:
            return run_pass()

    def drain(
        self,
        engine: Engine,
        options: Options = None,
        *,
        max_passes: int | None = None,
        budget_seconds: float | None = None,
        between_passes: Callable[[], bool] | None = None,
        on_pass: Callable[[int, int], None] | None = None,
    ) -> DrainResult:
        """Passes, each its own transaction, until one reconciles nothing (or the pass or
        time budget is spent, or ``between_passes``, called after each pass, says stop).
        ``limit`` is the size of each pass. Holds every change; :meth:`iter_passes`
        streams them instead. ``on_pass(passes, reconciled)`` is called with the sums so
        far after each pass (the CLI's progress line)."""
        candidates = reconciled = skipped = passes = requeued = 0
        pieces: list[str] = []
        results = self.iter_passes(
            engine, options, max_passes=max_passes, budget_seconds=budget_seconds
        )
        with contextlib.closing(results):
            for result in results:
                passes += 1
                candidates += result.candidates
                reconciled += result.reconciled
                skipped += result.skipped
                requeued += result.requeued
                items = result.changes_json_items()
                if items:
                    pieces.append(items)
                if on_pass is not None:
                    on_pass(passes, reconciled)
                if between_passes is not None and not between_passes():
                    break
        return DrainResult(
            candidates,
            reconciled,
            skipped,
            changes_json=f"[{','.join(pieces)}]",
            passes=passes,
            requeued=requeued,
        )

    def iter_passes(
        self,
        engine: Engine,
        options: Options = None,
        *,
        max_passes: int | None = None,
        budget_seconds: float | None = None,
    ) -> Generator[ReconcileResult, None, None]:
        """Yield each pass's result as it commits, until a pass reconciles nothing (or
        the pass or time budget is spent)."""
        options = ReconcileOptions.coerce(options)
        if options.dry_run:
            # A dry pass changes nothing, so the next one would find the same runs forever.
            raise InvalidOptionsError("drain cannot be combined with dry_run")
        deadline = time.monotonic() + budget_seconds if budget_seconds is not None else None
        with self._passes(engine, options) as run_pass:
            passes = 0
            while max_passes is None or passes < max_passes:
                result = run_pass()
                passes += 1
                yield result
                if result.reconciled == 0:
                    return
                if deadline is not None and time.monotonic() >= deadline:
                    return

    @contextlib.contextmanager
    def _passes(
        self, target: Session | Engine, options: ReconcileOptions
    ) -> Iterator[Callable[[], ReconcileResult]]:
        """The one place that picks the pass: a callable running one pass at the clock of
        its call. PostgreSQL: the statement pass, in the caller's session or on one
        autocommit connection for all passes (one statement is one transaction). SQLite:
        the Python pass, in the caller's session or one transaction per pass."""
        plan = PassPlan(
            options=options,
            types=scan_types(self._policy, options),
            limit=options.limit or self._policy.reconciliation_batch_limit(),
        )
        policy, gate = self._policy, self._gate
        if not is_sqlite(target):
            if not isinstance(target, Engine):
                # The caller's transaction: its requeues are published by a later call.
                yield lambda: statement_pass(target, policy, plan, self._pinned())
                return
            connection = target.connect().execution_options(isolation_level="AUTOCOMMIT")
            with (
                connection,
                self._publishing(
                    lambda: statement_pass(connection, policy, plan, self._pinned()),
                    connection,
                    options,
                ) as run_pass,
            ):
                yield run_pass
            return
        if not isinstance(target, Engine):
            yield lambda: python_pass(target, policy, gate, plan, self._clock(target))
            return
        # A dry run writes nothing, so it takes no write lock (no BEGIN IMMEDIATE).
        open_session = read_session if options.dry_run else write_session

        def one_transaction() -> ReconcileResult:
            with open_session(target) as session:
                return python_pass(session, policy, gate, plan, self._clock(session))

        with self._publishing(one_transaction, target, options) as run_pass:
            yield run_pass

    @contextlib.contextmanager
    def _publishing(
        self,
        run_pass: Callable[[], ReconcileResult],
        target: Engine | Connection,
        options: ReconcileOptions,
    ) -> Iterator[Callable[[], ReconcileResult]]:
        """``run_pass``, with the call's outbox: the requeues each pass made (committed by
        then) are published beside the next pass, and before the call's first pass any
        requeue still waiting for its message (a broker that was down, a process that
        stopped before publishing). Leaving waits until every claim is published or
        given back."""
        publisher = self._publisher
        if publisher is None or options.dry_run:
            yield run_pass
            return
        outbox = Outbox(target, publisher)
        try:
            outbox.publish()

            def run() -> ReconcileResult:
                result = run_pass()
                if result.requeued:
                    outbox.publish()
                return result

            yield run
        finally:
            outbox.close()

    def publish_pending(self, target: Engine) -> PublishResult:
        """Publish every requeued run still waiting for its message (needs a publisher)."""
        if self._publisher is None:
            raise RuntimeError("this reconciler has no publisher")
        return publish_pending(target, self._publisher)

    # -- single runs (the seed's reconcileRun / assessment) ---------------------------

    def reconcile_run(
        self,
        session: Session,
        run: RunLike,
        dry_run: bool = False,
        *,
        source: str = SCHEDULED_SOURCE,
    ) -> ReconcileChange | None:
        """Assess ``run`` as loaded and, unless ``dry_run``, force-fail it if stale.

        ``None`` when there is nothing to do -- including when the run completed (or
        started) after it was loaded: compare-and-set leaves it alone.
        """
        now = self._clock(session)
        assessment = self.assessment(session, run, now=now)
        if assessment is None:
            return None
        change = change_of(run, assessment, applied=False)
        if dry_run:
            return change
        if assessment.action is Action.REQUEUE:
            # In the caller's transaction: the message is published by a later call.
            requeue = Requeue(
                run.id,
                reason_code=assessment.reason_code,
                reason_message=assessment.reason_message,
                source=source,
                evidence=assessment.evidence,
                expected_status=RunStatus(run.status),
                expected_attempt=run.attempts,
                expected_task_id=getattr(run, "celery_task_id", None),
            )
            won = bool(apply_requeues(session, [requeue], now=now))
            return replace(change, applied=True) if won else None
        transition = forced_failure(
            run.id,
            reason_code=assessment.reason_code,
            message=assessment.reason_message,
            source=source,
            evidence=assessment.evidence,
            expected_status=RunStatus(run.status),
        )
        return replace(change, applied=True) if end_run(session, transition, now=now) else None

    def assessment(
        self, session: Session, run: RunLike, *, now: datetime | None = None
    ) -> Assessment | None:
        """Why ``run`` (as loaded) should be force-failed; ``None`` if it should not."""
        now = now or self._clock(session)
        legitimacy = self._gate.evaluate(session, run)
        worker = worker_of(session, run, database_up_since=self._up_since(session))
        return assess(run, self._policy, now, legitimacy, worker)

    def explain(self, session: Session, run: models.OperationRun) -> RunExplanation:
        """The assessment of one run with a sentence saying why it would (not) be failed."""
        return explain(
            session,
            run,
            policy=self._policy,
            gate=self._gate,
            now=self._clock(session),
            database_up_since=self._up_since(session),
        )

    def _pinned(self) -> datetime | None:
        return self._now() if self._now is not None else None

    def _clock(self, session: Session) -> datetime:
        return self._now() if self._now is not None else database_now(session)

    def _up_since(self, session: Session) -> datetime | None:
        # A pinned clock has no server behind it: nothing to excuse.
        return None if self._now is not None else database_up_since(session)
