"""start_operation(): create the run row, commit, then publish its task.

The row is committed before the message exists, so a worker can never receive a task
whose run it cannot find; the Celery task id is generated first and stored on the row, so
every signal about the message can be traced back to its run. Publishing goes by name
(``operations.<type>``): a web process dispatches without importing task code.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from models import (
    NON_TERMINAL_STATUSES,
    OperationRun,
    RunOutcome,
    RunStatus,
    Tenant,
    User,
    Workspace,
)
from models.types import MAX_ID, is_id
from worker.db import get_engine, read_session, write_session
from worker.errors import (
    BrokerUnavailableError,
    InvalidInputError,
    RunwardenError,
    UnknownReferenceError,
)
from worker.lifecycle.evidence import scrub_and_truncate
from worker.lifecycle.reasons import ReasonCode
from worker.lifecycle.transitions import force_fail_non_terminal_run
from worker.publishing import OPERATION_PRIORITY, is_operation_task, operation_task_name
from worker.settings import current_policy

# is_operation_task: the bridge imports it from here, where it lived before publishing
# had a module of its own.
__all__ = [
    "OPERATION_PRIORITY",
    "DispatchFailedError",
    "is_operation_task",
    "operation_task_name",
    "run_identity_hash",
    "start_operation",
]

logger = logging.getLogger(__name__)

DISPATCH_SOURCE = "dispatch"
#: Input names an operation body cannot take: it is called as ``body(run, **inputs)``.
RESERVED_INPUT_NAMES = frozenset({"run"})


class DispatchFailedError(BrokerUnavailableError):
    """The task could not be published; its run completed as failed (run.dispatch_failed)."""

    def __init__(self, message: str, *, operation_run_id: int) -> None:
        super().__init__(message)
        self.operation_run_id = operation_run_id


def run_identity_hash(identity: Any) -> str:
    """sha256 of the identity's canonical JSON (sorted keys, no whitespace)."""
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _active_run_id(
    session: Any, *, type_name: str, workspace_id: int, tenant_id: int | None, identity: str
) -> int | None:
    tenant_match = (
        OperationRun.tenant_id.is_(None)
        if tenant_id is None
        else OperationRun.tenant_id == tenant_id
    )
    found = session.execute(
        select(OperationRun.id).where(
            OperationRun.workspace_id == workspace_id,
            tenant_match,
            OperationRun.type == type_name,
            OperationRun.run_identity_hash == identity,
            OperationRun.status.in_([s.value for s in NON_TERMINAL_STATUSES]),
        )
    ).scalar()
    return int(found) if found is not None else None


def _create_run(
    *,
    type_name: str,
    workspace_id: int,
    tenant_id: int | None,
    user_id: int | None,
    inputs: Mapping[str, Any],
    identity_hash: str | None,
    celery_task_id: str,
) -> tuple[int, bool]:
    """(run id, created). An active run with the same identity is returned instead.

    An id naming no row raises :class:`UnknownReferenceError`; nothing is written."""
    with write_session(get_engine()) as session:
        # Under BEGIN IMMEDIATE on SQLite this check and the insert are one atomic step;
        # on PostgreSQL the partial unique index settles a race (IntegrityError below).
        if identity_hash is not None:
            existing = _active_run_id(
                session,
                type_name=type_name,
                workspace_id=workspace_id,
                tenant_id=tenant_id,
                identity=identity_hash,
            )
            if existing is not None:
                return existing, False
        run = OperationRun(
            workspace_id=workspace_id,
            tenant_id=tenant_id,
            user_id=user_id,
            type=type_name,
            status=RunStatus.QUEUED.value,
            outcome=RunOutcome.PENDING.value,
            run_identity_hash=identity_hash,
            celery_task_id=celery_task_id,
            context={"inputs": dict(inputs)},
            # The database's clock: the window of a queued run counts from here.
            created_at=func.now(),
            updated_at=func.now(),
        )
        session.add(run)
        try:
            session.flush()
        except IntegrityError as exc:
            # A foreign key names no row (the transaction is rolled back on the way out).
            # Asked after the fact, not before every insert: an unknown id is the rare
            # case, and the other IntegrityError -- the active-identity race -- must
            # reach start_operation as it is.
            unknown = _unknown_references(
                workspace_id=workspace_id, tenant_id=tenant_id, user_id=user_id
            )
            if unknown:
                raise UnknownReferenceError(f"start_operation: {'; '.join(unknown)}") from exc
            raise
        return int(run.id), True


def _unknown_references(
    *, workspace_id: int, tenant_id: int | None, user_id: int | None
) -> list[str]:
    wanted = (
        ("workspace_id", workspace_id, Workspace, "workspace"),
        ("tenant_id", tenant_id, Tenant, "tenant"),
        ("user_id", user_id, User, "user"),
    )
    # Its own session: on PostgreSQL the failed insert's transaction reads nothing more.
    with read_session(get_engine()) as session:
        return [
            f"{key} {value} names no {noun}"
            for key, value, model, noun in wanted
            if value is not None and session.get(model, value) is None
        ]


def start_operation(  # noqa: PLR0917 - the contract takes these positionally
    type: str,
    workspace_id: int,
    tenant_id: int | None = None,
    user_id: int | None = None,
    inputs: Mapping[str, Any] | None = None,
    identity: Any = None,
    *,
    app: Any = None,
) -> int:
    """Create a queued run and publish its task; return the run id.

    With ``identity``, an active run of the same type, workspace, tenant and identity is
    returned instead of starting another. If the broker refuses the message the run is
    completed at once as failed with ``run.dispatch_failed`` and
    :class:`DispatchFailedError` (a :class:`BrokerUnavailableError`) is raised carrying
    its id. ``app`` is the Celery app to publish with (default: runwarden's).

    Invalid arguments raise :class:`InvalidInputError` (a :class:`ValueError`), an id
    that names no row :class:`UnknownReferenceError`; either way nothing is written.
    """
    if not isinstance(type, str) or not type.strip():
        raise InvalidInputError("start_operation needs a run type")
    _check_id("workspace_id", workspace_id)
    if tenant_id is not None:
        _check_id("tenant_id", tenant_id)
    if user_id is not None:
        _check_id("user_id", user_id)
    inputs = dict(inputs or {})
    reserved = sorted(RESERVED_INPUT_NAMES.intersection(inputs))
    if reserved:
        raise InvalidInputError(
            f"start_operation: input {reserved[0]!r} is reserved: the operation body is "
            "called as body(run, **inputs)"
        )
    # Inputs travel through JSON columns and JSON messages: refuse what would not survive.
    json.dumps(inputs)
    identity_hash = run_identity_hash(identity) if identity is not None else None
    celery_task_id = str(uuid.uuid4())
    create = functools.partial(
        _create_run,
        type_name=type,
        workspace_id=workspace_id,
        tenant_id=tenant_id,
        user_id=user_id,
        inputs=inputs,
        identity_hash=identity_hash,
        celery_task_id=celery_task_id,
    )
    try:
        run_id, created = create()
    except IntegrityError:
        if identity_hash is None:
            raise
        # Lost the race for the active-identity index: the winner's run is the answer.
        run_id, created = create()
    if not created:
        logger.info(
            "operation %s already active as run %s",
            type,
            run_id,
            extra={"operation_run_id": run_id},
        )
        return run_id

    if app is None:
        from worker.celery_app import app as default_app

        app = default_app
    task_name = operation_task_name(type)
    try:
        app.send_task(
            task_name,
            kwargs={"operation_run_id": run_id},
            task_id=celery_task_id,
            priority=OPERATION_PRIORITY,
        )
    except Exception as exc:  # kombu/redis raise many types; any of them means "not sent"
        message = scrub_and_truncate(f"{exc.__class__.__name__}: {exc}")
        _fail_dispatch(run_id, task_name, celery_task_id, exc)
        raise DispatchFailedError(
            f"operation run {run_id} could not be published ({message}); "
            "it completed as failed with run.dispatch_failed",
            operation_run_id=run_id,
        ) from exc
    logger.info(
        "operation run %s queued as %s", run_id, task_name, extra={"operation_run_id": run_id}
    )
    return run_id


def _check_id(key: str, value: object) -> None:
    if not is_id(value):
        raise InvalidInputError(
            f"start_operation: {key} must be an integer between 1 and {MAX_ID} (got {value!r})"
        )


def _policy_sha256() -> str | None:
    # The dispatching process need not be configured like the workers; a policy it
    # cannot load must not hide why the publish failed.
    try:
        return current_policy().sha256
    except RunwardenError:
        return None


def _fail_dispatch(run_id: int, task_name: str, celery_task_id: str, exc: BaseException) -> None:
    with write_session(get_engine()) as session:
        force_fail_non_terminal_run(
            session,
            run_id,
            reason_code=ReasonCode.DISPATCH_FAILED,
            source=DISPATCH_SOURCE,
            evidence={
                "exception_type": type(exc).__name__,
                "exception_message": scrub_and_truncate(str(exc)),
                "task_name": task_name,
                "celery_task_id": celery_task_id,
                "policy_sha256": _policy_sha256(),
            },
            record_key="dispatch",
        )
    logger.error(
        "operation run %s could not be published: %s",
        run_id,
        type(exc).__name__,
        extra={"operation_run_id": run_id, "reason_code": ReasonCode.DISPATCH_FAILED.value},
    )
