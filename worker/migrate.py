"""Run alembic programmatically against the configured database."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import CreateSchema

from migrations import SCRIPT_LOCATION, gate_views
from worker.db import (
    FROM_SETTINGS,
    FromSettings,
    build_engine,
    describe_url,
    immediate,
    interrupt,
    unavailable,
)
from worker.errors import (
    DatabaseLockedError,
    MigrationCancelledError,
    PolicyError,
    RunwardenError,
)
from worker.lifecycle.tenancy import check_tables
from worker.settings import get_settings

if TYPE_CHECKING:
    from worker.lifecycle.policy import LifecyclePolicy

#: How long a migration on PostgreSQL waits for each lock it needs (the version table,
#: a table it alters) before it stops with "locked by another session": a session that
#: holds a lock for long must not leave ``migrate`` or ``up`` waiting without a word.
LOCK_TIMEOUT_SECONDS = 10.0
#: PostgreSQL's SQLSTATE for an expired lock_timeout.
_LOCK_NOT_AVAILABLE = "55P03"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(
    url: str | None = None,
    revision: str = "head",
    *,
    schema: str | FromSettings | None = FROM_SETTINGS,
    policy: LifecyclePolicy | None = None,
) -> None:
    """Upgrade to ``revision``; at head, the gate views are made ``policy``'s (default:
    the configured policy)."""
    url = url or get_settings().resolved_database_url
    Migration(url, schema=schema, policy=policy).upgrade(revision)


def downgrade(
    url: str | None = None,
    revision: str = "base",
    *,
    schema: str | FromSettings | None = FROM_SETTINGS,
) -> None:
    Migration(url or get_settings().resolved_database_url, schema=schema).downgrade(revision)


class Migration:
    """One alembic step in one transaction, which another thread may :meth:`cancel`
    (``up`` runs it in a thread, so that a signal is acted on during a lock wait)."""

    def __init__(
        self,
        url: str,
        *,
        lock_timeout_seconds: float = LOCK_TIMEOUT_SECONDS,
        schema: str | FromSettings | None = FROM_SETTINGS,
        policy: LifecyclePolicy | None = None,
    ) -> None:
        if lock_timeout_seconds <= 0:
            raise ValueError("lock_timeout_seconds must be positive")
        self.url = url
        #: runwarden's PostgreSQL schema (default: RUNWARDEN_DB_SCHEMA), made if missing.
        self.schema = get_settings().db_schema if isinstance(schema, FromSettings) else schema
        #: Whose tables the gate reads (its [tenancy]): loaded now, so a bad policy stops
        #: the migration before it connects.
        if policy is None:
            from worker.lifecycle.policy import load_policy

            policy = load_policy()
        self.policy = policy
        if policy.gate_tenancy.host and make_url(url).get_backend_name() != "postgresql":
            # Before anything is made, the SQLite file included.
            raise PolicyError(
                f"{policy.source or '<policy>'}: tenancy: an application's tables need "
                "PostgreSQL (this is SQLite)"
            )
        self.lock_timeout_seconds = lock_timeout_seconds
        self._guard = threading.Lock()
        self._cancelled = False
        self._dbapi_connection: Any = None

    def upgrade(self, revision: str = "head") -> None:
        self._run(command.upgrade, revision, gate=revision == "head")

    def downgrade(self, revision: str = "base") -> None:
        self._run(command.downgrade, revision)

    def cancel(self) -> None:
        """Stop the step from another thread: before it connects, or at its statement."""
        with self._guard:
            self._cancelled = True
            connection = self._dbapi_connection
        if connection is not None:
            interrupt(connection)

    def _run(
        self, step: Callable[[Config, str], None], revision: str, *, gate: bool = False
    ) -> None:
        # One transaction for the whole step: a migration that fails half way leaves nothing.
        # On SQLite it takes the write lock at BEGIN: alembic reads the version table before
        # its first write, and a deferred transaction whose snapshot another writer committed
        # past fails at once with "database is locked" instead of waiting its busy timeout.
        engine = build_engine(self.url, schema=self.schema)
        try:
            with immediate(engine).connect() as connection:
                with self._guard:
                    if self._cancelled:
                        raise MigrationCancelledError
                    self._dbapi_connection = connection.connection.dbapi_connection
                with connection.begin():
                    if connection.dialect.name == "postgresql":
                        # Local to this transaction: the lock waits of the migration only.
                        connection.execute(
                            text("SELECT set_config('lock_timeout', :timeout, true)"),
                            {"timeout": f"{int(self.lock_timeout_seconds * 1000)}ms"},
                        )
                        if self.schema is not None:
                            # In the migration's transaction: a migration that fails
                            # leaves no empty schema behind. Quoted by the dialect.
                            connection.execute(CreateSchema(self.schema, if_not_exists=True))
                    config = alembic_config(self.url)
                    config.attributes["connection"] = connection
                    config.attributes["schema"] = self.schema
                    tenancy = self.policy.gate_tenancy
                    source = self.policy.source or "<policy>"
                    if gate:
                        # Before the first write: a mapping that does not fit is refused
                        # with nothing migrated.
                        check_tables(connection, tenancy, source)
                    step(config, revision)
                    if gate:
                        gate_views.sync(connection, tenancy)
        except DBAPIError as exc:
            raise self._error(exc) from exc
        finally:
            with self._guard:
                self._dbapi_connection = None
            engine.dispose()

    def _error(self, exc: DBAPIError) -> RunwardenError:
        where = describe_url(self.url)
        if getattr(exc.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
            return DatabaseLockedError(
                f"database {where} is locked by another session: the migration waited "
                f"{self.lock_timeout_seconds:g} s for a lock; end that session's transaction "
                "(see pg_locks) and run it again"
            )
        orig = exc.orig
        if isinstance(orig, sqlite3.OperationalError) and (
            orig.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
        ):
            return DatabaseLockedError(
                f"database {where} is locked by another session: the migration waited its "
                "busy timeout (RUNWARDEN_SQLITE_BUSY_TIMEOUT_SECONDS) for the write lock; "
                "stop the process writing to it, or run it again"
            )
        return unavailable(exc, self.url)
