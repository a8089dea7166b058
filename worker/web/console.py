"""What the console's pages and JSON API show, built by the same lifecycle calls as the
CLI's ``--json`` (``list_runs``, ``explain``, ``reconcile``): one object, two renderings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, select

from models import OperationRun, RunOutcome, RunStatus, Tenant
from worker.db import read_session
from worker.errors import InvalidOptionsError, RunNotFoundError
from worker.lifecycle.audit import list_audit
from worker.lifecycle.clock import database_now
from worker.lifecycle.evidence import iso
from worker.lifecycle.freshness import OperationRunFreshnessState
from worker.lifecycle.listing import list_runs
from worker.lifecycle.liveness import count_alive, list_workers
from worker.lifecycle.overview import active_groups, forced_by_reason
from worker.lifecycle.policy import LifecyclePolicy
from worker.lifecycle.reconciler import (
    ON_DEMAND_SOURCE,
    OperationLifecycleReconciler,
    ReconcileOptions,
)
from worker.lifecycle.terminal import FORCED_ACTIONS
from worker.lifecycle.ticks import last_tick

#: A page of runs or audit rows holds at most this many.
MAX_PAGE = 500
DEFAULT_PAGE = 50
MAX_ID = 2**63 - 1

_CHOICES: dict[str, tuple[str, ...]] = {
    "status": tuple(s.value for s in RunStatus),
    "outcome": tuple(o.value for o in RunOutcome),
    "freshness": tuple(f.value for f in OperationRunFreshnessState),
}


def _choice(name: str, value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if value not in _CHOICES[name]:
        allowed = ", ".join(repr(c) for c in _CHOICES[name])
        raise InvalidOptionsError(f"invalid value for {name}: {value!r} is not one of {allowed}")
    return value


def _int(name: str, value: str | None, *, low: int, high: int) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        raise InvalidOptionsError(
            f"invalid value for {name}: {value!r} is not an integer"
        ) from None
    if not low <= number <= high:
        raise InvalidOptionsError(
            f"invalid value for {name}: {number} is not in the range {low}<=x<={high}"
        )
    return number


def _text(value: str | None) -> str | None:
    return value if value else None


@dataclass(frozen=True)
class RunFilters:
    """The runs page's filters (the contract's: status, outcome, freshness, type, tenant,
    workspace, reason), the keyset cursor ``before`` and the page size."""

    status: str | None = None
    outcome: str | None = None
    freshness: str | None = None
    type: str | None = None
    tenant: int | None = None
    workspace: int | None = None
    reason: str | None = None
    before: int | None = None
    limit: int = DEFAULT_PAGE

    @classmethod
    def parse(cls, params: Mapping[str, str | None]) -> RunFilters:
        """From query parameters (text); a bad one is :class:`InvalidOptionsError`."""
        return cls(
            status=_choice("status", params.get("status")),
            outcome=_choice("outcome", params.get("outcome")),
            freshness=_choice("freshness", params.get("freshness")),
            type=_text(params.get("type")),
            tenant=_int("tenant", params.get("tenant"), low=1, high=MAX_ID),
            workspace=_int("workspace", params.get("workspace"), low=1, high=MAX_ID),
            reason=_text(params.get("reason")),
            before=_int("before", params.get("before"), low=1, high=MAX_ID),
            limit=_int("limit", params.get("limit"), low=1, high=MAX_PAGE) or DEFAULT_PAGE,
        )

    def query(self, **changes: Any) -> dict[str, str]:
        """These filters as query parameters (for links), with ``changes`` applied."""
        values = {**self.__dict__, **changes}
        return {k: str(v) for k, v in values.items() if v is not None and k != "limit"} | (
            {"limit": str(values["limit"])} if values["limit"] != DEFAULT_PAGE else {}
        )


@dataclass(frozen=True)
class AuditFilters:
    action: str | None = None
    reason: str | None = None
    run: int | None = None
    before: int | None = None
    limit: int = DEFAULT_PAGE

    @classmethod
    def parse(cls, params: Mapping[str, str | None]) -> AuditFilters:
        return cls(
            action=_text(params.get("action")),
            reason=_text(params.get("reason")),
            run=_int("run", params.get("run"), low=1, high=MAX_ID),
            before=_int("before", params.get("before"), low=1, high=MAX_ID),
            limit=_int("limit", params.get("limit"), low=1, high=MAX_PAGE) or DEFAULT_PAGE,
        )


@dataclass(frozen=True)
class WorkerFilters:
    """The workers page's page size (``runwarden workers --limit``)."""

    limit: int = DEFAULT_PAGE

    @classmethod
    def parse(cls, params: Mapping[str, str | None]) -> WorkerFilters:
        return cls(
            limit=_int("limit", params.get("limit"), low=1, high=MAX_PAGE) or DEFAULT_PAGE,
        )


class Console:
    """The console's reads and actions over one database and policy."""

    def __init__(self, engine: Engine, policy: LifecyclePolicy) -> None:
        self.engine = engine
        self.policy = policy
        self.reconciler = OperationLifecycleReconciler(policy)

    def runs(self, filters: RunFilters) -> list[dict[str, Any]]:
        """The ``runwarden runs --json`` objects of one page, newest first."""
        with read_session(self.engine) as session:
            return list_runs(
                session,
                self.policy,
                now=database_now(session),
                status=filters.status,
                outcome=filters.outcome,
                freshness=OperationRunFreshnessState(filters.freshness)
                if filters.freshness
                else None,
                types=[filters.type] if filters.type else (),
                tenant_ids=[filters.tenant] if filters.tenant else (),
                workspace_ids=[filters.workspace] if filters.workspace else (),
                reason=filters.reason,
                before_id=filters.before,
                limit=filters.limit,
            )

    def tenant_names(self, tenant_ids: set[int]) -> dict[int, str]:
        if not tenant_ids:
            return {}
        with read_session(self.engine) as session:
            rows = session.execute(
                select(Tenant.id, Tenant.name).where(Tenant.id.in_(sorted(tenant_ids)))
            )
            return {int(r.id): r.name for r in rows}

    def explain(self, run_id: int) -> dict[str, Any]:
        """The ``runwarden explain --json`` object."""
        with read_session(self.engine) as session:
            run = session.get(OperationRun, run_id)
            if run is None:
                raise RunNotFoundError(f"no operation run has id {run_id}")
            return self.reconciler.explain(session, run).to_dict()

    def audit(self, filters: AuditFilters) -> list[dict[str, Any]]:
        with read_session(self.engine) as session:
            return list_audit(
                session,
                action=filters.action,
                reason=filters.reason,
                resource_id=str(filters.run) if filters.run else None,
                before_id=filters.before,
                limit=filters.limit,
            )

    def workers(self, filters: WorkerFilters) -> tuple[str, list[dict[str, Any]]]:
        """The database's time and the ``runwarden workers --json`` objects, newest first,
        their states judged at that time."""
        with read_session(self.engine) as session:
            now = database_now(session)
            return iso(now), [
                worker.to_dict(self.policy.workers, now, running)
                for worker, running in list_workers(session, limit=filters.limit)
            ]

    def reconcile(self, body: Mapping[str, Any], *, dry_run: bool | None = None) -> dict[str, Any]:
        """A reconcile pass with the options of ``body`` (the CLI's and the on-demand
        task's: types, tenant_ids, workspace_ids, limit, dry_run); the result object."""
        if not isinstance(body, Mapping):
            raise InvalidOptionsError("invalid reconcile options: expected a JSON object")
        allowed = {"types", "tenant_ids", "workspace_ids", "limit", "dry_run"}
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise InvalidOptionsError(
                f"invalid reconcile option {', '.join(unknown)}: unknown option"
            )
        given = {str(k): v for k, v in body.items() if v is not None}
        if dry_run is not None:
            given["dry_run"] = dry_run
        options = ReconcileOptions(**given, source=ON_DEMAND_SOURCE)
        return self.reconciler.reconcile(self.engine, options).to_dict()

    def overview(self) -> dict[str, Any]:
        """Active runs by type x status, stale now, forced transitions by reason in the
        last 24 h, the last reconcile tick, workers alive."""
        with read_session(self.engine) as session:
            now = database_now(session)
            groups = active_groups(session, self.policy, now)
            forced = forced_by_reason(session, since=now - timedelta(hours=24))
            tick = last_tick(session)
            alive = count_alive(session, self.policy.workers, now)
        return {
            "now": iso(now),
            "active": [g.to_dict(now) for g in groups],
            "active_total": sum(g.active for g in groups),
            "stale_total": sum(g.stale for g in groups),
            "forced_last_24h": [
                {"action": action, "reason_code": reason, "count": count}
                for action, reason, count in forced
            ],
            "last_tick": tick.to_dict() if tick else None,
            "last_tick_age_seconds": (
                round((now - tick.ticked_at).total_seconds()) if tick else None
            ),
            "interval_seconds": self.policy.interval_seconds,
            "workers_alive": alive,
            "forced_actions": list(FORCED_ACTIONS),
        }
