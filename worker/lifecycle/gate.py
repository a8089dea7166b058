"""May a run's task execute? The legitimacy gate checked at task start and recorded as
evidence by the reconciler.

This module is the Python reference of the gate. Two named statements check the same
rules in SQL -- ``start_run`` (the task start) and the PostgreSQL ``reconcile_pass`` --
and the parity tests hold each to :meth:`QueuedExecutionLegitimacyGate._evaluate_with`'s
verdicts for every combination of tenant, user, type and status."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from models import RunStatus
from worker.lifecycle.freshness import RunLike
from worker.lifecycle.policy import LifecyclePolicy
from worker.lifecycle.reasons import ReasonCode
from worker.lifecycle.tenancy import gate_tenants, gate_users

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

# Check name -> the reason a failed check blocks with, in the order they are reported:
# the first failing check names the reason.
_CHECKS: tuple[tuple[str, ReasonCode], ...] = (
    ("run_non_terminal", ReasonCode.EXECUTION_RUN_TERMINAL),
    ("tenant_exists", ReasonCode.EXECUTION_TENANT_MISSING),
    ("tenant_active", ReasonCode.EXECUTION_TENANT_INACTIVE),
    ("tenant_in_workspace", ReasonCode.EXECUTION_TENANT_WORKSPACE_MISMATCH),
    ("user_active", ReasonCode.EXECUTION_USER_INACTIVE),
    ("type_covered", ReasonCode.EXECUTION_TYPE_NOT_COVERED),
)
CHECK_NAMES: tuple[str, ...] = tuple(name for name, _ in _CHECKS)


@dataclass(frozen=True, slots=True)
class LegitimacyResult:
    allowed: bool
    reason_code: str | None
    checks: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def from_checks(cls, checks: Mapping[str, bool]) -> LegitimacyResult:
        failed = next((reason for name, reason in _CHECKS if not checks[name]), None)
        return cls(
            allowed=failed is None,
            reason_code=failed.value if failed is not None else None,
            checks={name: bool(checks[name]) for name in CHECK_NAMES},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "reason_code": self.reason_code,
            "checks": dict(self.checks),
        }


@dataclass(frozen=True, slots=True)
class TenantFacts:
    workspace_id: int
    is_active: bool


class QueuedExecutionLegitimacyGate:
    def __init__(self, policy: LifecyclePolicy) -> None:
        self._policy = policy
        self._covered_json: str | None = None

    def evaluate(self, session: Session, run: RunLike) -> LegitimacyResult:
        return self.evaluate_many(session, [run])[run.id]

    def evaluate_many(
        self, session: Session, runs: Iterable[RunLike]
    ) -> dict[int, LegitimacyResult]:
        """Results keyed by run id, loading every tenant in one query and every user in
        another, so a reconciliation pass costs the same number of statements for 5 runs
        or 500."""
        runs = list(runs)
        tenant_ids = {r.tenant_id for r in runs if r.tenant_id is not None}
        user_ids = {r.user_id for r in runs if r.user_id is not None}
        tenants: dict[int, TenantFacts] = {}
        if tenant_ids:
            # The gate views, as the named statements read them: runwarden's own tables or
            # the application's ([tenancy]).
            rows = session.execute(
                select(
                    gate_tenants.c.id, gate_tenants.c.workspace_id, gate_tenants.c.is_active
                ).where(gate_tenants.c.id.in_(tenant_ids))
            )
            tenants = {row.id: TenantFacts(row.workspace_id, bool(row.is_active)) for row in rows}
        users: dict[int, bool] = {}
        if user_ids:
            rows_u = session.execute(
                select(gate_users.c.id, gate_users.c.is_active).where(gate_users.c.id.in_(user_ids))
            )
            users = {row.id: bool(row.is_active) for row in rows_u}
        return {run.id: self._evaluate_with(run, tenants, users) for run in runs}

    @property
    def policy(self) -> LifecyclePolicy:
        return self._policy

    @property
    def covered_types_json(self) -> str:
        """The covered type names as the JSON object ``start_run`` checks a run's type
        against (the type_covered check in SQL)."""
        if self._covered_json is None:
            self._covered_json = json.dumps(dict.fromkeys(self._policy.covered_type_names(), True))
        return self._covered_json

    def evaluate_loaded(
        self, run: RunLike, tenant: TenantFacts | None, user_active: bool | None
    ) -> LegitimacyResult:
        """The verdict from facts the caller loaded with the run (one joined query at task
        start): ``tenant`` None when the run's tenant row is missing, ``user_active`` None
        when its user row is missing."""
        tenants = {run.tenant_id: tenant} if run.tenant_id is not None and tenant else {}
        users = {run.user_id: user_active} if run.user_id is not None and user_active else {}
        return self._evaluate_with(run, tenants, users)

    def _evaluate_with(
        self,
        run: RunLike,
        tenants: Mapping[int, TenantFacts],
        users: Mapping[int, bool],
    ) -> LegitimacyResult:
        # Workspace-level runs (no tenant) and system runs (no user) pass those checks:
        # there is nothing that could have been deactivated.
        if run.tenant_id is None:
            tenant_exists = tenant_active = tenant_in_workspace = True
        else:
            tenant = tenants.get(run.tenant_id)
            tenant_exists = tenant is not None
            tenant_active = tenant is not None and tenant.is_active
            tenant_in_workspace = tenant is not None and tenant.workspace_id == run.workspace_id
        # A user row that is gone counts as inactive: nobody can vouch for the run any more.
        user_active = run.user_id is None or users.get(run.user_id, False)
        return LegitimacyResult.from_checks(
            {
                "run_non_terminal": run.status != RunStatus.COMPLETED,
                "tenant_exists": tenant_exists,
                "tenant_active": tenant_active,
                "tenant_in_workspace": tenant_in_workspace,
                "user_active": user_active,
                "type_covered": self._policy.supports(run.type),
            }
        )
