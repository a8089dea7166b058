"""The two passes, one per backend, chosen once per call by the reconciler.

- :func:`statement_pass` (PostgreSQL): the whole pass is the named statement
  ``reconcile_pass`` -- scan, gate, evidence, compare-and-set write, audit rows and the
  change objects, built by the database. Python touches no row, so a backlog drains at
  the speed of the database. A dry run is the same statement with ``dry_run`` set.
- :func:`python_pass` (SQLite): the named scan ``scan_stale_runs``, the gate loaded in
  bulk, the Python assessment per run, then the shared terminal write.

Both take the same per-type policy rows (:func:`policy_rows`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection

from models import RunStatus
from models.types import sqlite_timestamp
from worker.lifecycle.evidence import dumps
from worker.lifecycle.freshness import RunSnapshot
from worker.lifecycle.gate import QueuedExecutionLegitimacyGate
from worker.lifecycle.liveness import WorkerSnapshot
from worker.lifecycle.policy import LifecyclePolicy
from worker.lifecycle.reasons import ReasonCode
from worker.lifecycle.reconciler.assessment import assess, change_of
from worker.lifecycle.reconciler.options import ReconcileOptions
from worker.lifecycle.reconciler.results import ReconcileChange, ReconcileResult
from worker.lifecycle.recovery import REQUEUE_AUDIT_ACTION, Action, Requeue, apply_requeues
from worker.lifecycle.sql import statement
from worker.lifecycle.transitions import apply_terminal_transitions, forced_failure

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PassPlan:
    """What every pass of one call covers, validated once."""

    options: ReconcileOptions
    types: tuple[str, ...]
    limit: int


def policy_rows(policy: LifecyclePolicy, types: Sequence[str], now: datetime | None = None) -> str:
    """The per-type windows a pass judges by, as the JSON both named scans read. With
    ``now`` (SQLite's scan: the database's time, read first) each row also carries its
    cutoffs in SQLite's stored format; PostgreSQL's pass takes them from its own clock."""
    rows = []
    for name in types:
        queued_s = policy.queued_stale_after_seconds(name)
        running_s = policy.running_stale_after_seconds(name)
        row: dict[str, Any] = {
            "type": name,
            "queued_s": queued_s,
            "running_s": running_s,
            "truth_path": policy.terminal_truth_path(name),
            "retry": policy.retries(name),
            "max_attempts": policy.max_attempts(name),
        }
        if now is not None:
            row["queued_cutoff"] = sqlite_timestamp(now - timedelta(seconds=queued_s))
            row["running_cutoff"] = sqlite_timestamp(now - timedelta(seconds=running_s))
        rows.append(row)
    return dumps(rows)


def pass_parameters(
    policy: LifecyclePolicy, plan: PassPlan, now: datetime | None
) -> dict[str, Any]:
    """The parameters of ``reconcile_pass`` for ``plan``."""
    options = plan.options
    return {
        "policy": policy_rows(policy, plan.types),
        "now": now,
        "limit": plan.limit,
        "source": options.source,
        "dry_run": options.dry_run,
        "tenant_ids": list(options.tenant_ids) or None,
        "workspace_ids": list(options.workspace_ids) or None,
        "stale_queued": ReasonCode.STALE_QUEUED.value,
        "stale_queued_message": ReasonCode.STALE_QUEUED.default_message,
        "stale_running": ReasonCode.STALE_RUNNING.value,
        "stale_running_message": ReasonCode.STALE_RUNNING.default_message,
        "worker_lost": ReasonCode.WORKER_LOST.value,
        "worker_lost_message": ReasonCode.WORKER_LOST.default_message,
        "lost_after_s": policy.workers.lost_after_seconds,
        "audit_action": ReasonCode.STALE_RUNNING.audit_action,
        "requeue_action": REQUEUE_AUDIT_ACTION,
        "policy_sha256": policy.sha256,
    }


def statement_pass(
    target: Connection | Session, policy: LifecyclePolicy, plan: PassPlan, now: datetime | None
) -> ReconcileResult:
    """One PostgreSQL pass: the ``reconcile_pass`` statement, one round trip, on the
    database's clock (``now`` pins it for tests)."""
    if not plan.types:
        return ReconcileResult(0, 0, 0)
    options = plan.options
    params = pass_parameters(policy, plan, now)
    row = target.execute(statement("postgresql", "reconcile_pass"), params).one()
    candidates, reconciled = int(row.candidates), int(row.reconciled)
    proposed = candidates if options.dry_run else reconciled
    _log_pass(options, candidates, reconciled)
    return ReconcileResult(
        candidates,
        reconciled,
        candidates - proposed,
        changes_json=row.changes or "[]",
        requeued=int(row.requeued),
    )


def python_pass(
    session: Session,
    policy: LifecyclePolicy,
    gate: QueuedExecutionLegitimacyGate,
    plan: PassPlan,
    now: datetime,
) -> ReconcileResult:
    """One SQLite pass in the caller's transaction (a write transaction unless dry)."""
    if not plan.types:
        return ReconcileResult(0, 0, 0)
    options = plan.options
    params = {
        "policy": policy_rows(policy, plan.types, now),
        "limit": plan.limit,
        "lost_cutoff": sqlite_timestamp(now - timedelta(seconds=policy.workers.lost_after_seconds)),
        "tenant_ids": dumps(options.tenant_ids) if options.tenant_ids else None,
        "workspace_ids": dumps(options.workspace_ids) if options.workspace_ids else None,
    }
    runs: list[RunSnapshot] = []
    workers: dict[int, WorkerSnapshot | None] = {}
    for row in session.execute(statement("sqlite", "scan_stale_runs"), params):
        worker_id = row.worker_id
        # The first fifteen columns are RunSnapshot's, up to unstarted_attempts; then the
        # worker's (its id is worker_id).
        runs.append(RunSnapshot(*row[:15]))
        workers[row.id] = WorkerSnapshot(worker_id, *row[15:]) if worker_id is not None else None
    legitimacy = gate.evaluate_many(session, runs)
    proposed: list[ReconcileChange] = []
    for run in runs:
        assessment = assess(run, policy, now, legitimacy[run.id], workers[run.id])
        if assessment is not None:
            proposed.append(change_of(run, assessment, applied=False))
    if options.dry_run:
        return ReconcileResult(len(runs), 0, len(runs) - len(proposed), tuple(proposed))
    by_id = {run.id: run for run in runs}
    statuses = {run.id: RunStatus(run.status) for run in runs}
    # The pass holds SQLite's write lock (BEGIN IMMEDIATE) from its scan on: the rows are
    # as scanned, and the compare-and-set on status and attempts is the belt and braces.
    requeues = [
        Requeue(
            change.operation_run_id,
            reason_code=change.reason_code,
            reason_message=change.reason_message,
            source=options.source,
            evidence=change.evidence,
            expected_status=statuses[change.operation_run_id],
            expected_attempt=by_id[change.operation_run_id].attempts,
        )
        for change in proposed
        if change.action == Action.REQUEUE
    ]
    transitions = [
        forced_failure(
            change.operation_run_id,
            reason_code=change.reason_code,
            message=change.reason_message,
            source=options.source,
            evidence=change.evidence,
            # CAS on the status judged: a queued run that started meanwhile must not be
            # failed as "never started".
            expected_status=statuses[change.operation_run_id],
        )
        for change in proposed
        if change.action == Action.FORCE_FAIL
    ]
    won = set(apply_terminal_transitions(session, transitions, now=now))
    requeued = set(apply_requeues(session, requeues, now=now))
    won |= requeued
    applied = tuple(replace(c, applied=True) for c in proposed if c.operation_run_id in won)
    # Per run at DEBUG only: a drain can fail thousands of runs, each has its audit row,
    # and the periodic task logs one summary line per tick.
    for change in applied:
        logger.debug(
            "%s operation run %s (%s)",
            "requeued" if change.action == Action.REQUEUE else "force-failed",
            change.operation_run_id,
            change.reason_code,
            extra={
                "operation_run_id": change.operation_run_id,
                "reason_code": change.reason_code,
                "source": options.source,
            },
        )
    _log_pass(options, len(runs), len(applied))
    return ReconcileResult(
        len(runs), len(applied), len(runs) - len(applied), applied, requeued=len(requeued)
    )


def _log_pass(options: ReconcileOptions, candidates: int, reconciled: int) -> None:
    logger.debug(
        "reconcile pass: %d candidates, %d reconciled",
        candidates,
        reconciled,
        extra={"source": options.source, "reconciled": reconciled},
    )
