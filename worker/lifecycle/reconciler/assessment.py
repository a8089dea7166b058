"""The Python assessment of one run: the reference the SQL mirrors.

SQLite passes, dry runs of a single run, ``reconcile_run`` and ``explain`` decide with
this module; the PostgreSQL ``reconcile_pass`` statement decides the same in SQL, and the
parity tests hold the two to identical changes. A new staleness rule is written here (and
in :mod:`worker.lifecycle.freshness`), in ``reconcile_pass`` and in SQLite's
``scan_stale_runs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from models import RunStatus
from worker.lifecycle.evidence import iso
from worker.lifecycle.freshness import OperationRunFreshnessState, RunLike, stale_window
from worker.lifecycle.gate import LegitimacyResult
from worker.lifecycle.liveness import WorkerSnapshot, WorkerState, judged_by_worker
from worker.lifecycle.policy import LifecyclePolicy
from worker.lifecycle.reasons import ReasonCode
from worker.lifecycle.reconciler.results import ReconcileChange
from worker.lifecycle.recovery import Action, action_for, attempt_evidence


@dataclass(frozen=True, slots=True)
class Assessment:
    """Why a run should be force-failed (or, for a ``retry`` type with attempts left,
    requeued) and the evidence recorded with it."""

    should_reconcile: bool
    reason_code: str
    reason_message: str
    freshness_state: OperationRunFreshnessState
    evidence: dict[str, Any]
    action: Action = Action.FORCE_FAIL

    def to_dict(self) -> dict[str, Any]:
        return {
            "should_reconcile": self.should_reconcile,
            "action": self.action.value,
            "reason_code": self.reason_code,
            "reason_message": self.reason_message,
            "evidence": self.evidence,
        }


def stale_reason(status: str) -> ReasonCode:
    """The reason a stale run of ``status`` is failed for."""
    return ReasonCode.STALE_QUEUED if status == RunStatus.QUEUED else ReasonCode.STALE_RUNNING


def reconcilable(run: RunLike, policy: LifecyclePolicy, now: datetime) -> bool:
    return (
        run.status != RunStatus.COMPLETED
        and policy.supports_scheduled_reconciliation(run.type)
        and OperationRunFreshnessState.for_run(run, policy, now).is_likely_stale()
    )


def worker_lost(
    run: RunLike, policy: LifecyclePolicy, now: datetime, worker: WorkerSnapshot | None
) -> bool:
    """Whether ``run`` is running on a worker that is gone (lost or stopped) at ``now``."""
    return (
        worker is not None
        and judged_by_worker(run, worker.id)
        and worker.state(policy.workers, now) is not WorkerState.ALIVE
    )


def assess(
    run: RunLike,
    policy: LifecyclePolicy,
    now: datetime,
    legitimacy: LegitimacyResult,
    worker: WorkerSnapshot | None = None,
) -> Assessment | None:
    """Why ``run`` (as loaded) should be force-failed or requeued at ``now``; None if
    neither.

    ``worker`` is the worker that started its current attempt (None: none recorded). A
    running run whose worker is gone is taken at once (``run.worker_lost``), judged from
    the worker's last sign of life; otherwise the type's window decides -- for a run on a
    live worker, once that worker was heard after the window passed. Then recovery
    (:func:`worker.lifecycle.recovery.action_for`) says whether it is requeued or failed.
    """
    if run.status == RunStatus.COMPLETED or not policy.supports_scheduled_reconciliation(run.type):
        return None
    if worker is not None and not judged_by_worker(run, worker.id):
        worker = None
    lost = worker_lost(run, policy, now, worker)
    if not lost and not reconcilable(run, policy, now):
        return None
    window = stale_window(run, policy)
    assert window is not None  # covered and non-terminal, checked above
    if (
        not lost
        and worker is not None
        and not worker.heard_after(
            window.reference_time + timedelta(seconds=window.threshold_seconds)
        )
    ):
        # Its live worker has not been heard since the run's window passed: the database
        # may have been unable to hear either (an outage), so the run's silence is no
        # evidence yet. Once the worker is heard again, a still-silent run is stale.
        return None
    if lost:
        assert worker is not None
        reason = ReasonCode.WORKER_LOST
        threshold, reference = policy.workers.lost_after_seconds, worker.last_seen()
    else:
        reason = stale_reason(run.status)
        threshold, reference = window.threshold_seconds, window.reference_time
    freshness = OperationRunFreshnessState.LIKELY_STALE
    return Assessment(
        should_reconcile=True,
        reason_code=reason.value,
        reason_message=reason.default_message,
        freshness_state=freshness,
        action=action_for(run, policy, reason.value),
        evidence={
            "evaluated_at": iso(now),
            "freshness_state": freshness.value,
            "threshold_seconds": threshold,
            "reference_time": iso(reference),
            "status": str(run.status),
            "execution_legitimacy": legitimacy.to_dict(),
            "terminal_truth_path": policy.terminal_truth_path(run.type),
            "policy_sha256": policy.sha256,
            "worker": worker.evidence() if worker is not None else None,
            **attempt_evidence(run, policy),
        },
    )


def change_of(run: RunLike, assessment: Assessment, *, applied: bool) -> ReconcileChange:
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
        action=assessment.action.value,
    )
