"""runwarden's data: SQLAlchemy 2.0 models and enums, nothing else."""

from models.audit_log import AuditLog
from models.base import Base
from models.enums import (
    NON_TERMINAL_SQL,
    NON_TERMINAL_STATUSES,
    TERMINAL_OUTCOMES,
    RunOutcome,
    RunStatus,
)
from models.operation_run import OperationRun
from models.tenancy import Tenant, User, Workspace
from models.tick import Tick
from models.types import UtcDateTime, utcnow
from models.worker import RunwardenWorker

__all__ = [
    "NON_TERMINAL_SQL",
    "NON_TERMINAL_STATUSES",
    "TERMINAL_OUTCOMES",
    "AuditLog",
    "Base",
    "OperationRun",
    "RunOutcome",
    "RunStatus",
    "RunwardenWorker",
    "Tenant",
    "Tick",
    "User",
    "UtcDateTime",
    "Workspace",
    "utcnow",
]
