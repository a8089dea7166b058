"""runwarden's data: SQLAlchemy 2.0 models and enums, nothing else.

The enums and column types are loaded with the package; the mapped classes (and
SQLAlchemy's ORM with them) on first use of any of them, all together, so their metadata
is always whole. A command that only runs named SQL -- ``runwarden reconcile`` on
PostgreSQL -- never loads them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from models.enums import (
    NON_TERMINAL_SQL,
    NON_TERMINAL_STATUSES,
    TERMINAL_OUTCOMES,
    RunOutcome,
    RunStatus,
)
from models.types import UtcDateTime, utcnow

if TYPE_CHECKING:
    from models.audit_log import AuditLog
    from models.base import Base
    from models.operation_run import OperationRun
    from models.tenancy import Tenant, User, Workspace
    from models.tick import Tick
    from models.worker import RunwardenWorker

#: Each mapped class and its module.
_MAPPED = {
    "AuditLog": "models.audit_log",
    "Base": "models.base",
    "OperationRun": "models.operation_run",
    "RunwardenWorker": "models.worker",
    "Tenant": "models.tenancy",
    "Tick": "models.tick",
    "User": "models.tenancy",
    "Workspace": "models.tenancy",
}


def __getattr__(name: str) -> Any:
    if name not in _MAPPED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for attribute, module in _MAPPED.items():
        globals()[attribute] = getattr(importlib.import_module(module), attribute)
    return globals()[name]


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
