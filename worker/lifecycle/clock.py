"""Whose clock: the database's.

Every timestamp a staleness or liveness decision compares is written by the database
(``now()`` in the named statements), so a dispatcher, worker or reconciler host whose clock
is off can neither make a fresh run look stale nor a dead one look fresh. A decision made in
Python (``explain``, listings, SQLite passes) asks the database for its time first.

A database that was down heard nothing meanwhile: a worker's silence counts only from when
the database was up to hear it (:func:`database_up_since`, PostgreSQL's start).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection

from worker.lifecycle.sql import statement

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


def _dialect(bind: Session | Connection) -> str:
    return bind.dialect.name if isinstance(bind, Connection) else bind.get_bind().dialect.name


def database_now(bind: Session | Connection) -> datetime:
    """The database's current time (UTC, aware)."""
    dialect = _dialect(bind)
    value = bind.execute(statement(dialect, "clock")).scalar_one()
    assert isinstance(value, datetime)
    return value


def database_up_since(bind: Session | Connection) -> datetime | None:
    """When the database server last started (PostgreSQL), or None (SQLite: the file is
    there whenever its writers are)."""
    dialect = _dialect(bind)
    if dialect != "postgresql":
        return None
    value = bind.execute(statement(dialect, "database_started")).scalar_one()
    assert isinstance(value, datetime)
    return value
