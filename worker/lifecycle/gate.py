"""May a run's task execute? The legitimacy gate checked at task start and recorded as
evidence by the reconciler."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, and_, exists, or_, select, true
from sqlalchemy.orm import Session

from models import OperationRun, RunStatus, Tenant, User
from worker.lifecycle.freshness import RunLike
from worker.lifecycle.policy import LifecyclePolicy
from worker.lifecycle.reasons import ReasonCode

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
        self._allows_sql: ColumnElement[bool] | None = None

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
            rows = session.execute(
                select(Tenant.id, Tenant.workspace_id, Tenant.is_active).where(
                    Tenant.id.in_(tenant_ids)
                )
            )
            tenants = {row.id: TenantFacts(row.workspace_id, bool(row.is_active)) for row in rows}
        users: dict[int, bool] = {}
        if user_ids:
            rows_u = session.execute(select(User.id, User.is_active).where(User.id.in_(user_ids)))
            users = {row.id: bool(row.is_active) for row in rows_u}
        return {run.id: self._evaluate_with(run, tenants, users) for run in runs}

    def allows_sql(self) -> ColumnElement[bool]:
        """The gate as a SQL condition over ``operation_runs`` (Core, any backend), for a
        start that checks and moves the run in one statement. The same rules as
        :meth:`_evaluate_with`; a test holds the two to the same verdicts."""
        if self._allows_sql is None:
            runs = cast(Table, OperationRun.__table__)
            tenants = cast(Table, Tenant.__table__)
            users = cast(Table, User.__table__)
            self._allows_sql = and_(
                runs.c.status != RunStatus.COMPLETED.value,
                runs.c.type.in_(self._policy.covered_type_names()),
                or_(
                    runs.c.tenant_id.is_(None),
                    exists().where(
                        tenants.c.id == runs.c.tenant_id,
                        tenants.c.is_active == true(),
                        tenants.c.workspace_id == runs.c.workspace_id,
                    ),
                ),
                or_(
                    runs.c.user_id.is_(None),
                    exists().where(users.c.id == runs.c.user_id, users.c.is_active == true()),
                ),
            )
        return self._allows_sql

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


def legitimacy_sql(row: str, *, run: str, tenant: str, user: str) -> tuple[str, str]:
    """The gate in SQL, for passes that assess in the database.

    Returns ``(columns, result)``: ``columns`` are the check columns to select from
    ``run`` LEFT JOINed with its ``tenant`` and ``user`` rows; ``result`` is the JSON of
    :meth:`LegitimacyResult.to_dict` over a relation ``row`` holding those columns. The
    rules are :meth:`QueuedExecutionLegitimacyGate._evaluate_with`'s, check for check
    (a test holds the two to the same answers). Runs reaching it come from a scan of
    non-terminal, covered runs, so those two checks hold by construction.
    """
    columns = ",\n".join(
        (
            "true AS run_non_terminal",
            f"{run}.tenant_id IS NULL OR {tenant}.id IS NOT NULL AS tenant_exists",
            f"{run}.tenant_id IS NULL OR COALESCE({tenant}.is_active, false) AS tenant_active",
            f"{run}.tenant_id IS NULL OR COALESCE({tenant}.workspace_id = {run}.workspace_id,"
            " false) AS tenant_in_workspace",
            f"{run}.user_id IS NULL OR COALESCE({user}.is_active, false) AS user_active",
            "true AS type_covered",
        )
    )
    # Reason codes are this module's own constants, never outside input.
    first_failed = (
        "CASE "
        + " ".join(f"WHEN NOT {row}.{name} THEN '{reason.value}'" for name, reason in _CHECKS)
        + " END"
    )
    checks = ", ".join(f"'{name}', {row}.{name}" for name in CHECK_NAMES)
    result = (
        f"json_build_object('allowed', ({first_failed}) IS NULL, "
        f"'reason_code', {first_failed}, 'checks', json_build_object({checks}))"
    )
    return columns, result
