"""Listing runs with their freshness and terminal reason, for ``runwarden runs`` and the
console's runs page and API."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

import models
from models import RunStatus
from worker.lifecycle.evidence import iso_or_none as iso
from worker.lifecycle.freshness import OperationRunFreshnessState
from worker.lifecycle.policy import LifecyclePolicy
from worker.lifecycle.terminal import reason_code_column, reason_code_of

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

# Freshness only exists for some statuses; filtering on it narrows the SQL first.
_STATUSES_OF: dict[OperationRunFreshnessState, tuple[str, ...]] = {
    OperationRunFreshnessState.TERMINAL_NORMAL: (RunStatus.COMPLETED.value,),
    OperationRunFreshnessState.RECONCILED_FAILED: (RunStatus.COMPLETED.value,),
    OperationRunFreshnessState.UNKNOWN: (RunStatus.QUEUED.value, RunStatus.RUNNING.value),
    OperationRunFreshnessState.LIKELY_STALE: (RunStatus.QUEUED.value, RunStatus.RUNNING.value),
    OperationRunFreshnessState.FRESH: (RunStatus.QUEUED.value, RunStatus.RUNNING.value),
}
_CHUNK = 500


def run_to_dict(
    run: models.OperationRun, freshness: OperationRunFreshnessState, policy: LifecyclePolicy
) -> dict[str, Any]:
    """A run as ``runwarden runs --json`` and ``explain --json`` print it; ``max_attempts``
    is its type's (None: not covered)."""
    return {
        "id": run.id,
        "type": run.type,
        "status": run.status,
        "outcome": run.outcome,
        "freshness_state": freshness.value,
        "workspace_id": run.workspace_id,
        "tenant_id": run.tenant_id,
        "user_id": run.user_id,
        "attempts": run.attempts,
        "max_attempts": policy.max_attempts(run.type) if policy.supports(run.type) else None,
        "requeued_at": iso(run.requeued_at),
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "last_heartbeat_at": iso(run.last_heartbeat_at),
        "completed_at": iso(run.completed_at),
        "reason_code": reason_code_of(run),
    }


def list_runs(
    session: Session,
    policy: LifecyclePolicy,
    *,
    now: datetime,
    status: str | None = None,
    outcome: str | None = None,
    freshness: OperationRunFreshnessState | None = None,
    types: Sequence[str] = (),
    tenant_ids: Sequence[int] = (),
    workspace_ids: Sequence[int] = (),
    reason: str | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """The newest runs matching the filters, as dicts with their freshness state.

    ``before_id`` is the keyset cursor: only runs with a smaller id (the next page of a
    newest-first listing is the runs older than the last one shown).
    Freshness depends on the policy and the clock, so it is filtered here in Python,
    reading newest-first in chunks until ``limit`` runs match.
    """
    statement = select(models.OperationRun).order_by(models.OperationRun.id.desc())
    if before_id is not None:
        statement = statement.where(models.OperationRun.id < before_id)
    statuses: tuple[str, ...] | None = _STATUSES_OF[freshness] if freshness else None
    if status is not None:
        statuses = tuple(s for s in (statuses or (status,)) if s == status)
    if statuses is not None:
        statement = statement.where(models.OperationRun.status.in_(statuses))
    if types:
        statement = statement.where(models.OperationRun.type.in_(types))
    if tenant_ids:
        statement = statement.where(models.OperationRun.tenant_id.in_(tenant_ids))
    if workspace_ids:
        statement = statement.where(models.OperationRun.workspace_id.in_(workspace_ids))
    if outcome is not None:
        statement = statement.where(models.OperationRun.outcome == outcome)
    if reason is not None:
        # Only a completed run has a terminal reason.
        statement = statement.where(
            models.OperationRun.status == RunStatus.COMPLETED.value, reason_code_column() == reason
        )
    if freshness is None:
        statement = statement.limit(limit)
    listed: list[dict[str, Any]] = []
    # Closed when done: stopping at ``limit`` leaves PostgreSQL's server-side cursor open.
    with session.execute(statement.execution_options(yield_per=_CHUNK)) as result:
        for run in result.scalars():
            state = OperationRunFreshnessState.for_run(run, policy, now)
            if freshness is None or state is freshness:
                listed.append(run_to_dict(run, state, policy))
                if len(listed) >= limit:
                    break
    return listed
