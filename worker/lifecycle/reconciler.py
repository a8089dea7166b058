"""The operation lifecycle reconciler: finds stale non-terminal runs and force-fails them
with evidence.

Ported from the seed's ``OperationLifecycleReconciler`` (same result shape, same
assessment), with the contract's differences:

- Staleness is decided in SQL with per-type cutoffs, so a block of fresh long-running runs
  with low ids can never hide stale runs behind them (the seed filters after ``LIMIT``).
- One transaction per pass: the scan locks its rows (``FOR UPDATE SKIP LOCKED`` on
  PostgreSQL; ``BEGIN IMMEDIATE`` on SQLite), gate inputs are loaded in bulk and the
  writes are one compare-and-set UPDATE plus one audit INSERT -- a constant number of
  statements per pass however many runs it fails.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import Engine, TextClause, and_, bindparam, func, literal_column, or_, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from models import NON_TERMINAL_SQL, OperationRun, RunOutcome, RunStatus, UtcDateTime, utcnow
from worker.db import is_sqlite, read_session, write_session
from worker.errors import InvalidOptionsError
from worker.lifecycle.evidence import iso, pg_iso
from worker.lifecycle.evidence import iso_or_none as _iso
from worker.lifecycle.freshness import (
    RUN_SNAPSHOT_COLUMNS,
    OperationRunFreshnessState,
    RunLike,
    RunSnapshot,
    StaleWindow,
    stale_window,
)
from worker.lifecycle.gate import LegitimacyResult, QueuedExecutionLegitimacyGate, legitimacy_sql
from worker.lifecycle.listing import run_to_dict
from worker.lifecycle.policy import MAX_BATCH_LIMIT, LifecyclePolicy
from worker.lifecycle.reasons import ReasonCode
from worker.lifecycle.transitions import apply_terminal_transitions, forced_failure, pg_terminal_sql

logger = logging.getLogger(__name__)

SCHEDULED_SOURCE = "scheduled_reconciler"
ON_DEMAND_SOURCE = "on_demand_reconciler"

_AFTER = {
    "status": RunStatus.COMPLETED.value,
    "outcome": RunOutcome.FAILED.value,
    "freshness_state": OperationRunFreshnessState.RECONCILED_FAILED.value,
}


class ReconcileOptions(BaseModel):
    """What one reconciliation covers. Invalid values raise :class:`InvalidOptionsError`
    naming the option -- before anything is read or written."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    #: Run types to reconcile; ``None`` means every covered type.
    types: Annotated[list[str], Field(min_length=1)] | None = None
    tenant_ids: list[Annotated[int, Field(gt=0)]] = Field(default_factory=list)
    workspace_ids: list[Annotated[int, Field(gt=0)]] = Field(default_factory=list)
    #: Runs per pass; ``None`` means the policy's batch limit. Capped at 500.
    limit: Annotated[int, Field(ge=1)] | None = None
    dry_run: bool = False
    source: Annotated[str, Field(min_length=1, max_length=64)] = SCHEDULED_SOURCE

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise InvalidOptionsError(_describe(exc)) from exc

    @field_validator("types")
    @classmethod
    def _types_not_blank(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            for index, name in enumerate(value):
                if not name.strip():
                    raise ValueError(f"item {index} is blank; a run type name is required")
            value = list(dict.fromkeys(value))  # keep order, drop repeats
        return value

    @field_validator("limit")
    @classmethod
    def _cap_limit(cls, value: int | None) -> int | None:
        # Contract: above 500 is capped, not refused -- a pass is bounded whatever is asked.
        return min(value, MAX_BATCH_LIMIT) if value is not None else None

    @classmethod
    def coerce(cls, options: ReconcileOptions | Mapping[str, Any] | None) -> ReconcileOptions:
        if options is None:
            return cls()
        if isinstance(options, ReconcileOptions):
            return options
        if not isinstance(options, Mapping):
            raise InvalidOptionsError(f"reconcile options must be a mapping, not {options!r}")
        return cls(**{str(k): v for k, v in options.items()})


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:3]:
        loc = "".join(
            f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p))
            for i, p in enumerate(error["loc"])
        )
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown option"
        parts.append(f"{loc or 'options'}: {message} (got {error.get('input')!r})")
    return "invalid reconcile option " + "; ".join(parts)


@dataclass(frozen=True, slots=True)
class Assessment:
    """Why a run should be force-failed and the evidence recorded with it."""

    should_reconcile: bool
    reason_code: str
    reason_message: str
    freshness_state: OperationRunFreshnessState
    evidence: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "should_reconcile": self.should_reconcile,
            "reason_code": self.reason_code,
            "reason_message": self.reason_message,
            "evidence": self.evidence,
        }


@dataclass(frozen=True, slots=True)
class ReconcileChange:
    applied: bool
    operation_run_id: int
    type: str
    before: dict[str, str]
    reason_code: str
    reason_message: str
    evidence: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "operation_run_id": self.operation_run_id,
            "type": self.type,
            "before": dict(self.before),
            "after": dict(_AFTER),
            "reason_code": self.reason_code,
            "reason_message": self.reason_message,
            "evidence": self.evidence,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReconcileChange:
        return cls(
            applied=bool(data["applied"]),
            operation_run_id=int(data["operation_run_id"]),
            type=str(data["type"]),
            before=dict(data["before"]),
            reason_code=str(data["reason_code"]),
            reason_message=str(data["reason_message"]),
            evidence=dict(data["evidence"]),
        )


class ReconcileResult:
    """One pass's result (the contract's shape through :meth:`to_dict`).

    The changes are held either as objects or as the JSON array text the database built
    (PostgreSQL passes assess and describe their changes in SQL); the text is parsed only
    if someone asks for the objects, and :meth:`changes_json_items` hands it on as is.
    """

    __slots__ = ("_changes", "_changes_json", "candidates", "reconciled", "skipped")

    def __init__(
        self,
        candidates: int,
        reconciled: int,
        skipped: int,
        changes: Sequence[ReconcileChange] = (),
        *,
        changes_json: str | None = None,
    ) -> None:
        self.candidates = candidates
        self.reconciled = reconciled
        self.skipped = skipped
        self._changes: tuple[ReconcileChange, ...] | None = (
            None if changes_json is not None else tuple(changes)
        )
        self._changes_json = changes_json

    @property
    def changes(self) -> tuple[ReconcileChange, ...]:
        if self._changes is None:
            items = json.loads(self._changes_json or "[]")
            self._changes = tuple(ReconcileChange.from_dict(item) for item in items)
        return self._changes

    def changes_json_items(self) -> str:
        """The changes as comma-separated JSON objects (a JSON array without brackets)."""
        if self._changes is None and self._changes_json is not None:
            return self._changes_json.strip()[1:-1]
        return ",".join(json.dumps(c.to_dict()) for c in self.changes)

    def to_dict(self) -> dict[str, Any]:
        """Exactly the contract's shape."""
        return {
            "candidates": self.candidates,
            "reconciled": self.reconciled,
            "skipped": self.skipped,
            "changes": [change.to_dict() for change in self.changes],
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(candidates={self.candidates}, "
            f"reconciled={self.reconciled}, skipped={self.skipped})"
        )


class DrainResult(ReconcileResult):
    __slots__ = ("passes",)

    def __init__(
        self,
        candidates: int,
        reconciled: int,
        skipped: int,
        changes: Sequence[ReconcileChange] = (),
        *,
        changes_json: str | None = None,
        passes: int = 0,
    ) -> None:
        super().__init__(candidates, reconciled, skipped, changes, changes_json=changes_json)
        self.passes = passes

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "passes": self.passes}


@dataclass(frozen=True, slots=True)
class RunExplanation:
    """Everything ``runwarden explain`` says about one run."""

    run: dict[str, Any]
    freshness_state: OperationRunFreshnessState
    would_reconcile: bool
    why: str
    threshold_seconds: int | None
    reference_time: datetime | None
    stale_after: datetime | None
    execution_legitimacy: LegitimacyResult
    assessment: Assessment | None
    reconciliation: Mapping[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "freshness_state": self.freshness_state.value,
            "would_reconcile": self.would_reconcile,
            "why": self.why,
            "threshold_seconds": self.threshold_seconds,
            "reference_time": _iso(self.reference_time),
            "stale_after": _iso(self.stale_after),
            "execution_legitimacy": self.execution_legitimacy.to_dict(),
            "assessment": self.assessment.to_dict() if self.assessment else None,
            "reconciliation": dict(self.reconciliation) if self.reconciliation else None,
        }


_SCAN_COLUMNS = RUN_SNAPSHOT_COLUMNS


class OperationLifecycleReconciler:
    def __init__(
        self,
        policy: LifecyclePolicy,
        *,
        now: Callable[[], datetime] = utcnow,
        gate: QueuedExecutionLegitimacyGate | None = None,
    ) -> None:
        self._policy = policy
        self._now = now
        self._gate = gate or QueuedExecutionLegitimacyGate(policy)

    @property
    def policy(self) -> LifecyclePolicy:
        return self._policy

    # -- passes ------------------------------------------------------------------------

    def reconcile(
        self,
        target: Session | Engine,
        options: ReconcileOptions | Mapping[str, Any] | None = None,
    ) -> ReconcileResult:
        """One pass. Given an engine, the pass is its own transaction (committed here);
        given a session, it runs in the caller's transaction, which must be a write
        transaction (:func:`worker.db.write_session`) unless it is a dry run."""
        options = ReconcileOptions.coerce(options)
        types = self._scan_types(options)
        if isinstance(target, Session):
            return self._pass(target, options, types)
        if not options.dry_run and not is_sqlite(target):
            with _autocommit(target) as connection:
                return self._statement_pass(connection, options, types)
        with self._session(target, dry_run=options.dry_run) as session:
            return self._pass(session, options, types)

    def _statement_pass(
        self, connection: Connection, options: ReconcileOptions, types: tuple[str, ...]
    ) -> ReconcileResult:
        # A PostgreSQL pass is one statement, hence one transaction by itself: run in
        # autocommit it costs one round trip, not BEGIN + statement + COMMIT.
        limit = options.limit or self._policy.reconciliation_batch_limit()
        return self._sql_pass(connection, options, types, limit, self._now())

    def drain(
        self,
        engine: Engine,
        options: ReconcileOptions | Mapping[str, Any] | None = None,
        *,
        max_passes: int | None = None,
        budget_seconds: float | None = None,
    ) -> DrainResult:
        """Passes, each its own transaction, until one reconciles nothing (or the pass or
        time budget is spent). ``limit`` is the size of each pass. Holds every change;
        :meth:`iter_passes` streams them instead."""
        candidates = reconciled = skipped = passes = 0
        pieces: list[str] = []
        for result in self.iter_passes(
            engine, options, max_passes=max_passes, budget_seconds=budget_seconds
        ):
            passes += 1
            candidates += result.candidates
            reconciled += result.reconciled
            skipped += result.skipped
            items = result.changes_json_items()
            if items:
                pieces.append(items)
        return DrainResult(
            candidates,
            reconciled,
            skipped,
            changes_json="[" + ",".join(pieces) + "]",
            passes=passes,
        )

    def iter_passes(
        self,
        engine: Engine,
        options: ReconcileOptions | Mapping[str, Any] | None = None,
        *,
        max_passes: int | None = None,
        budget_seconds: float | None = None,
    ) -> Iterator[ReconcileResult]:
        """Yield each pass's result as it commits, until a pass reconciles nothing (or
        the pass or time budget is spent)."""
        options = ReconcileOptions.coerce(options)
        if options.dry_run:
            # A dry pass changes nothing, so the next one would find the same runs forever.
            raise InvalidOptionsError("drain cannot be combined with dry_run")
        deadline = time.monotonic() + budget_seconds if budget_seconds is not None else None
        with contextlib.ExitStack() as stack:
            if is_sqlite(engine):
                run_pass = functools.partial(self.reconcile, engine, options)
            else:
                # One connection for the whole drain, each pass its own statement.
                connection = stack.enter_context(_autocommit(engine))
                run_pass = functools.partial(
                    self._statement_pass, connection, options, self._scan_types(options)
                )
            passes = 0
            while max_passes is None or passes < max_passes:
                result = run_pass()
                passes += 1
                yield result
                if result.reconciled == 0:
                    return
                if deadline is not None and time.monotonic() >= deadline:
                    return

    def _session(self, engine: Engine, *, dry_run: bool) -> AbstractContextManager[Session]:
        # A dry run writes nothing, so it takes no write lock (no BEGIN IMMEDIATE on SQLite).
        return read_session(engine) if dry_run else write_session(engine)

    def _scan_types(self, options: ReconcileOptions) -> tuple[str, ...]:
        if options.types is None:
            names: Sequence[str] = self._policy.covered_type_names()
        else:
            uncovered = [t for t in options.types if not self._policy.supports(t)]
            if uncovered:
                covered = ", ".join(self._policy.covered_type_names()) or "none"
                raise InvalidOptionsError(
                    f"invalid reconcile option types: {', '.join(map(repr, uncovered))} "
                    f"not covered by the lifecycle policy (covered: {covered})"
                )
            names = options.types
        # Types opted out of scheduled reconciliation are never reconciled (the seed's rule).
        return tuple(t for t in names if self._policy.supports_scheduled_reconciliation(t))

    def _pass(
        self, session: Session, options: ReconcileOptions, types: tuple[str, ...]
    ) -> ReconcileResult:
        now = self._now()
        limit = options.limit or self._policy.reconciliation_batch_limit()
        if not options.dry_run and not is_sqlite(session):
            return self._sql_pass(session, options, types, limit, now)
        runs = self._scan(session, types, options, limit, now)
        legitimacy = self._gate.evaluate_many(session, runs)
        proposed: list[ReconcileChange] = []
        for run in runs:
            assessment = self._assess(run, now, legitimacy[run.id])
            if assessment is not None:
                proposed.append(_change(run, assessment, applied=False))
        if options.dry_run:
            return ReconcileResult(
                candidates=len(runs),
                reconciled=0,
                skipped=len(runs) - len(proposed),
                changes=tuple(proposed),
            )
        statuses = {run.id: RunStatus(run.status) for run in runs}
        won = set(
            apply_terminal_transitions(
                session,
                [
                    forced_failure(
                        change.operation_run_id,
                        reason_code=change.reason_code,
                        message=change.reason_message,
                        source=options.source,
                        evidence=change.evidence,
                        # CAS on the status we judged: a queued run that started meanwhile
                        # must not be failed as "never started".
                        expected_status=statuses[change.operation_run_id],
                    )
                    for change in proposed
                ],
                now=now,
            )
        )
        applied = tuple(replace(c, applied=True) for c in proposed if c.operation_run_id in won)
        # Per run at DEBUG only: a drain can fail thousands of runs, each has its audit
        # row, and the periodic task logs one summary line per tick.
        for change in applied:
            logger.debug(
                "force-failed operation run %s (%s)",
                change.operation_run_id,
                change.reason_code,
                extra={
                    "operation_run_id": change.operation_run_id,
                    "reason_code": change.reason_code,
                    "source": options.source,
                },
            )
        return ReconcileResult(
            candidates=len(runs),
            reconciled=len(applied),
            skipped=len(runs) - len(applied),
            changes=applied,
        )

    def _sql_pass(
        self,
        session: Session | Connection,
        options: ReconcileOptions,
        types: tuple[str, ...],
        limit: int,
        now: datetime,
    ) -> ReconcileResult:
        """A whole pass as ONE PostgreSQL statement: the stale scan (``FOR UPDATE SKIP
        LOCKED``), the legitimacy gate and the evidence assessed in SQL, then the shared
        compare-and-set write and audit (:func:`pg_terminal_sql`), and the change objects
        built by the database. Python touches no row: a 50,000-run backlog drains at the
        speed of the database, not of per-row object building."""
        if not types:
            return ReconcileResult(0, 0, 0)
        policy_rows = [
            {
                "type": name,
                "queued_s": self._policy.queued_stale_after_seconds(name),
                "running_s": self._policy.running_stale_after_seconds(name),
                "queued_cutoff": (
                    now - timedelta(seconds=self._policy.queued_stale_after_seconds(name))
                ).isoformat(),
                "running_cutoff": (
                    now - timedelta(seconds=self._policy.running_stale_after_seconds(name))
                ).isoformat(),
                "truth_path": "direct_and_scheduled"
                if self._policy.requires_direct_failed_bridge(name)
                else "scheduled_only",
            }
            for name in types
        ]
        params: dict[str, Any] = {
            "policy": json.dumps(policy_rows),
            "now": now,
            "limit": limit,
            "source": options.source,
        }
        scope = ""
        if options.tenant_ids:
            scope += " AND r.tenant_id = ANY(:tenant_ids)"
            params["tenant_ids"] = list(options.tenant_ids)
        if options.workspace_ids:
            scope += " AND r.workspace_id = ANY(:workspace_ids)"
            params["workspace_ids"] = list(options.workspace_ids)
        row = session.execute(_sql_pass_statement(scope), params).one()
        candidates, reconciled = int(row.candidates), int(row.reconciled)
        logger.debug(
            "reconcile pass: %d candidates, %d reconciled",
            candidates,
            reconciled,
            extra={"source": options.source, "reconciled": reconciled},
        )
        return ReconcileResult(
            candidates, reconciled, candidates - reconciled, changes_json=row.changes or "[]"
        )

    def _scan(
        self,
        session: Session,
        types: tuple[str, ...],
        options: ReconcileOptions,
        limit: int,
        now: datetime,
    ) -> list[RunSnapshot]:
        """The stale runs, decided in SQL: per-type cutoffs are computed here and bound,
        so ``LIMIT`` only ever counts runs that are actually stale."""
        if not types:
            return []
        liveness = func.coalesce(
            OperationRun.last_heartbeat_at, OperationRun.started_at, OperationRun.created_at
        )
        per_type = []
        for name in types:
            queued_cutoff = now - timedelta(seconds=self._policy.queued_stale_after_seconds(name))
            running_cutoff = now - timedelta(seconds=self._policy.running_stale_after_seconds(name))
            per_type.append(
                and_(
                    OperationRun.type == name,
                    or_(
                        and_(
                            OperationRun.status == literal_column("'queued'"),
                            OperationRun.created_at < queued_cutoff,
                        ),
                        and_(
                            OperationRun.status == literal_column("'running'"),
                            liveness < running_cutoff,
                        ),
                    ),
                )
            )
        # The status list is literal SQL on purpose: with bound values PostgreSQL's generic
        # plan cannot match the partial index ix_operation_runs_active_scan.
        statement = select(*_SCAN_COLUMNS).where(text(NON_TERMINAL_SQL), or_(*per_type))
        if options.tenant_ids:
            statement = statement.where(OperationRun.tenant_id.in_(options.tenant_ids))
        if options.workspace_ids:
            statement = statement.where(OperationRun.workspace_id.in_(options.workspace_ids))
        # The same order as the PostgreSQL pass: the active-scan index's, ties by id.
        statement = statement.order_by(
            OperationRun.type, OperationRun.status, OperationRun.created_at, OperationRun.id
        ).limit(limit)
        if not options.dry_run and not is_sqlite(session):
            # Concurrent reconcilers split the work instead of queueing on each other's
            # rows; SQLite has no row locks, its BEGIN IMMEDIATE already serialises writers.
            statement = statement.with_for_update(skip_locked=True, of=OperationRun)
        return [RunSnapshot(*row) for row in session.execute(statement)]

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
        now = self._now()
        assessment = self.assessment(session, run, now=now)
        if assessment is None:
            return None
        change = _change(run, assessment, applied=False)
        if dry_run:
            return change
        won = apply_terminal_transitions(
            session,
            [
                forced_failure(
                    run.id,
                    reason_code=assessment.reason_code,
                    message=assessment.reason_message,
                    source=source,
                    evidence=assessment.evidence,
                    expected_status=RunStatus(run.status),
                )
            ],
            now=now,
        )
        return replace(change, applied=True) if won else None

    def assessment(
        self, session: Session, run: RunLike, *, now: datetime | None = None
    ) -> Assessment | None:
        """Why ``run`` (as loaded) should be force-failed; ``None`` if it should not."""
        now = now or self._now()
        if not self._reconcilable(run, now):
            return None
        return self._assess(run, now, self._gate.evaluate(session, run))

    def _reconcilable(self, run: RunLike, now: datetime) -> bool:
        return (
            run.status != RunStatus.COMPLETED
            and self._policy.supports_scheduled_reconciliation(run.type)
            and OperationRunFreshnessState.for_run(run, self._policy, now).is_likely_stale()
        )

    def _assess(
        self, run: RunLike, now: datetime, legitimacy: LegitimacyResult
    ) -> Assessment | None:
        if not self._reconcilable(run, now):
            return None
        window = stale_window(run, self._policy)
        assert window is not None  # covered and non-terminal, checked above
        reason = (
            ReasonCode.STALE_QUEUED if run.status == RunStatus.QUEUED else ReasonCode.STALE_RUNNING
        )
        freshness = OperationRunFreshnessState.LIKELY_STALE
        return Assessment(
            should_reconcile=True,
            reason_code=reason.value,
            reason_message=reason.default_message,
            freshness_state=freshness,
            evidence={
                "evaluated_at": iso(now),
                "freshness_state": freshness.value,
                "threshold_seconds": window.threshold_seconds,
                "reference_time": iso(window.reference_time),
                "status": str(run.status),
                "execution_legitimacy": legitimacy.to_dict(),
                "terminal_truth_path": (
                    "direct_and_scheduled"
                    if self._policy.requires_direct_failed_bridge(run.type)
                    else "scheduled_only"
                ),
            },
        )

    # -- explanation -------------------------------------------------------------------

    def explain(self, session: Session, run: OperationRun) -> RunExplanation:
        """The assessment of one run with a sentence saying why it would (not) be failed."""
        now = self._now()
        policy = self._policy
        freshness = OperationRunFreshnessState.for_run(run, policy, now)
        legitimacy = self._gate.evaluate(session, run)
        window = stale_window(run, policy)
        assessment = self._assess(run, now, legitimacy)
        reconciliation = (run.context or {}).get("reconciliation")
        stale_after = (
            window.reference_time + timedelta(seconds=window.threshold_seconds)
            if window is not None
            else None
        )
        why = _why(
            run,
            policy=policy,
            freshness=freshness,
            window=window,
            stale_after=stale_after,
            now=now,
            reconciliation=reconciliation,
        )
        return RunExplanation(
            run=run_to_dict(run, freshness),
            freshness_state=freshness,
            would_reconcile=assessment is not None,
            why=why,
            threshold_seconds=window.threshold_seconds if window else None,
            reference_time=window.reference_time if window else None,
            stale_after=stale_after,
            execution_legitimacy=legitimacy,
            assessment=assessment,
            reconciliation=reconciliation if isinstance(reconciliation, Mapping) else None,
        )


def _change(run: RunLike, assessment: Assessment, *, applied: bool) -> ReconcileChange:
    return ReconcileChange(
        applied=applied,
        operation_run_id=run.id,
        type=run.type,
        before={
            "status": str(run.status),
            "outcome": str(run.outcome),
            "freshness_state": assessment.freshness_state.value,
        },
        reason_code=assessment.reason_code,
        reason_message=assessment.reason_message,
        evidence=assessment.evidence,
    )


def _why(
    run: RunLike,
    *,
    policy: LifecyclePolicy,
    freshness: OperationRunFreshnessState,
    window: StaleWindow | None,
    stale_after: datetime | None,
    now: datetime,
    reconciliation: Any,
) -> str:
    if freshness is OperationRunFreshnessState.RECONCILED_FAILED:
        record = reconciliation if isinstance(reconciliation, Mapping) else {}
        return (
            f"already reconciled: failed with {record.get('reason_code')} by "
            f"{record.get('source')} at {record.get('reconciled_at')}; "
            "a completed run is never changed again"
        )
    if run.status == RunStatus.COMPLETED:
        return f"completed with outcome {run.outcome}; a completed run is never changed again"
    if not policy.supports(run.type):
        return (
            f"type {run.type!r} is not covered by the lifecycle policy; "
            "only covered types are reconciled"
        )
    assert window is not None and stale_after is not None
    age = int((now - window.reference_time).total_seconds())
    since = "queued" if run.status == RunStatus.QUEUED else "last sign of life"
    if not policy.supports_scheduled_reconciliation(run.type):
        return (
            f"{run.status}, {since} {age} s ago, but type {run.type!r} has "
            "scheduled_reconciliation = false; the reconciler never fails it"
        )
    if freshness is OperationRunFreshnessState.LIKELY_STALE:
        reason = (
            ReasonCode.STALE_QUEUED if run.status == RunStatus.QUEUED else ReasonCode.STALE_RUNNING
        )
        return (
            f"{run.status}, {since} {age} s ago, past its {window.threshold_seconds} s "
            f"window: the next pass fails it with {reason.value}"
        )
    return (
        f"{run.status}, {since} {age} s ago, within its {window.threshold_seconds} s "
        f"window; likely stale after {stale_after.isoformat()}"
    )


_SQL_PASS_SOURCE = """
    WITH policy AS (
        SELECT * FROM jsonb_to_recordset(CAST(:policy AS jsonb)) AS p(
            type text, queued_s int, running_s int, queued_cutoff timestamptz,
            running_cutoff timestamptz, truth_path text)
    ), candidates AS (
        SELECT r.id, r.type, r.status, r.outcome, r.workspace_id, r.tenant_id, r.user_id,
               CASE WHEN r.status = 'queued' THEN p.queued_s ELSE p.running_s END
                   AS threshold_seconds,
               CASE WHEN r.status = 'queued' THEN r.created_at
                    ELSE COALESCE(r.last_heartbeat_at, r.started_at, r.created_at) END
                   AS reference_time,
               p.truth_path
        FROM operation_runs AS r JOIN policy AS p ON p.type = r.type
        WHERE r.{non_terminal}
          AND CASE WHEN r.status = 'queued' THEN r.created_at < p.queued_cutoff
                   ELSE COALESCE(r.last_heartbeat_at, r.started_at, r.created_at)
                        < p.running_cutoff END
          {scope}
        -- The partial index's own order (ties by id). ORDER BY id alone lets the planner
        -- walk the primary key past every completed run: a pass slows down as a drain
        -- advances over a large table.
        ORDER BY r.type, r.status, r.created_at, r.id
        LIMIT :limit
        FOR UPDATE OF r SKIP LOCKED
    ), gated AS (
        SELECT c.*, {checks}
        FROM candidates AS c
        LEFT JOIN tenants AS t ON t.id = c.tenant_id
        LEFT JOIN users AS u ON u.id = c.user_id
    ), assessed AS (
        SELECT g.*,
               CASE WHEN g.status = 'queued' THEN CAST(:stale_queued AS text)
                    ELSE CAST(:stale_running AS text) END AS reason_code,
               CASE WHEN g.status = 'queued' THEN CAST(:stale_queued_message AS text)
                    ELSE CAST(:stale_running_message AS text) END AS reason_message,
               json_build_object(
                   'evaluated_at', {evaluated_at},
                   'freshness_state', 'likely_stale',
                   'threshold_seconds', g.threshold_seconds,
                   'reference_time', {reference_time},
                   'status', g.status,
                   'execution_legitimacy', {legitimacy},
                   'terminal_truth_path', g.truth_path) AS evidence
        FROM gated AS g
    )
    SELECT a.id, 'failed' AS outcome, a.status AS expected_status,
           'reconciliation' AS record_key,
           jsonb_build_object('reason_code', a.reason_code,
                              'reason_message', a.reason_message,
                              'source', CAST(:source AS text),
                              'evidence', CAST(a.evidence AS jsonb),
                              'reconciled_at', {evaluated_at}) AS record,
           jsonb_build_object('reason_code', a.reason_code, 'message', a.reason_message)
               AS failure,
           CAST(NULL AS jsonb) AS summary_counts,
           CAST(:source AS text) AS source,
           'operation_run.force_failed' AS audit_action,
           a.type, a.outcome AS before_outcome, a.reason_code, a.reason_message, a.evidence
    FROM assessed AS a
"""

_SQL_PASS_PROJECTION = """
SELECT (SELECT count(*) FROM v) AS candidates,
       (SELECT count(*) FROM updated) AS reconciled,
       (SELECT CAST(json_agg(json_build_object(
            'applied', true,
            'operation_run_id', v.id,
            'type', v.type,
            'before', json_build_object('status', v.expected_status,
                                        'outcome', v.before_outcome,
                                        'freshness_state', 'likely_stale'),
            'after', json_build_object('status', 'completed', 'outcome', 'failed',
                                       'freshness_state', 'reconciled_failed'),
            'reason_code', v.reason_code,
            'reason_message', v.reason_message,
            'evidence', v.evidence) ORDER BY v.id) AS text)
        FROM updated AS u JOIN v ON v.id = u.id) AS changes
"""


@functools.lru_cache(maxsize=8)
def _sql_pass_statement(scope: str) -> TextClause:
    checks, legitimacy = legitimacy_sql("g", run="c", tenant="t", user="u")
    source = _SQL_PASS_SOURCE.format(
        non_terminal=NON_TERMINAL_SQL,
        scope=scope,
        checks=checks,
        legitimacy=legitimacy,
        evaluated_at=pg_iso("CAST(:now AS timestamptz)"),
        reference_time=pg_iso("g.reference_time"),
    )
    return text(pg_terminal_sql(source, _SQL_PASS_PROJECTION, source_locks_rows=True)).bindparams(
        bindparam("now", type_=UtcDateTime()),
        stale_queued=ReasonCode.STALE_QUEUED.value,
        stale_running=ReasonCode.STALE_RUNNING.value,
        stale_queued_message=ReasonCode.STALE_QUEUED.default_message,
        stale_running_message=ReasonCode.STALE_RUNNING.default_message,
    )


def _autocommit(engine: Engine) -> contextlib.AbstractContextManager[Connection]:
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")
