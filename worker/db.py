"""Engines and sessions, built on demand from settings -- never at import.

Engines are per process: a forked child (a Celery pool process) must not reuse the
parent's pooled connections, so the cache is keyed by pid and a fork disposes the
inherited pools with ``close=False`` (closing would break the parent's sockets).

SQLite is the embedded default and is written by the worker, its pool processes and beat
at once. WAL lets readers run beside a writer; every write path opens its transaction with
``BEGIN IMMEDIATE`` (:func:`write_session`), because a deferred transaction that reads and
then writes fails at once with "database is locked" -- whatever the busy timeout -- when
another process committed in between.

SQLAlchemy's ORM is imported where a session is opened, not with this module: a command
that runs only named SQL on a connection (``reconcile`` on PostgreSQL) never loads it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import quote, quote_plus

from sqlalchemy import Engine, create_engine, event, inspect, make_url
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from migrations import VERSION_TABLE
from models.types import sqlite_timestamp
from worker.errors import (
    ConfigurationError,
    DatabaseMissingError,
    DatabaseNotMigratedError,
    DatabaseUnavailableError,
)
from worker.lifecycle.evidence import REDACTED, is_secret_name, scrub
from worker.settings import Settings, check_schema_name, get_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from worker.lifecycle.policy import LifecyclePolicy

_IMMEDIATE = "runwarden_sqlite_immediate"
#: Errors of a database that is down, restarting, locked or out of connections: the same
#: statement may well succeed a moment later.
TRANSIENT_ERRORS = (OperationalError, InterfaceError, DisconnectionError, PoolTimeoutError)
#: The longest pause between two tries of :func:`retry_transient`.
_RETRY_MAX_DELAY_SECONDS = 1.0
_T = TypeVar("_T")
#: How long :func:`interrupt` may take to deliver PostgreSQL's cancel request.
_CANCEL_TIMEOUT_SECONDS = 2.0
_engines: dict[tuple[int, str, bool, str | None], Engine] = {}
_lock = threading.Lock()


def _configure_sqlite(engine: Engine, busy_timeout_seconds: float, *, writes: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_seconds * 1000)}")
        if writes:
            # Persistent, written into the file: not for a reader (migrate sets it).
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()
        # The named statements read the database's clock as now(), as on PostgreSQL.
        # SQLite has no now(); its own 'now' is the clock of the process executing the
        # statement -- this one's -- so this is it, in the stored UTC format and with
        # microseconds (strftime's %f has milliseconds).
        dbapi_connection.create_function("now", 0, _sqlite_now, deterministic=True)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _sqlite_now() -> str:
    return sqlite_timestamp(datetime.now(UTC))


class FromSettings:
    """The schema the settings name (``RUNWARDEN_DB_SCHEMA``)."""


FROM_SETTINGS: Final = FromSettings()


def build_engine(
    url: str,
    settings: Settings | None = None,
    *,
    create: bool = True,
    schema: str | FromSettings | None = FROM_SETTINGS,
) -> Engine:
    """A new engine for ``url`` with runwarden's per-backend configuration.

    ``schema`` (PostgreSQL; default: the settings' ``db_schema``) is every connection's
    whole ``search_path``: each unqualified name runwarden's statements use -- its
    tables, the named SQL, alembic's -- resolves there and nowhere else, so the same
    statements run under any schema, and none can reach an application's table of the
    same name. It is set in the connection's start-up packet, not by a statement after
    connecting: SQLAlchemy reads ``current_schema()`` (its default schema, which the
    inspector and alembic compare with) before a ``connect`` event could set it.

    ``create=False`` is for commands that only read, and creates nothing: a SQLite file
    that does not exist is :class:`DatabaseMissingError` (its directory is not made), the
    file is opened without SQLite's create flag (``mode=rw``: one removed after this
    check is not made anew), and its journal mode is left as it is. Commands that write
    create the file and its directory.
    """
    settings = settings or get_settings()
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if schema is not None and not isinstance(schema, FromSettings):
            raise ConfigurationError("RUNWARDEN_DB_SCHEMA: a schema is for PostgreSQL, not SQLite")
        connect_args: dict[str, Any] = {"timeout": settings.sqlite_busy_timeout_seconds}
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            path = Path(database)
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
            elif not path.is_file():
                raise DatabaseMissingError(
                    f"no database at {path.absolute()}: run `runwarden migrate` to create it"
                )
            else:
                # As a URI, which SQLAlchemy passes on as it is (a plain path it makes
                # absolute, prefix and all).
                parsed = parsed.set(
                    database=f"file:{quote(str(path.absolute()))}",
                    query={**parsed.query, "mode": "rw", "uri": "true"},
                )
        engine = create_engine(parsed, connect_args=connect_args)
        _configure_sqlite(engine, settings.sqlite_busy_timeout_seconds, writes=create)
        return engine
    if isinstance(schema, FromSettings):
        schema = settings.db_schema
    connect_args = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = 5
        # Timestamps rendered by the database (evidence built in SQL) read as UTC.
        options = ["-c TimeZone=UTC"]
        if schema is not None:
            # Validated here too (a caller may pass one): a plain identifier has nothing
            # libpq's options or the GUC parser would read as a separator or a quote.
            try:
                check_schema_name(schema)
            except ValueError as exc:
                raise ConfigurationError(f"RUNWARDEN_DB_SCHEMA: {exc}") from None
            options.append(f"-c search_path={schema}")
        connect_args["options"] = " ".join(options)
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def get_engine(url: str | None = None, *, create: bool = True) -> Engine:
    """This process's engine for ``url`` (default: the configured database); ``create``
    as in :func:`build_engine`, each kind cached on its own."""
    settings = get_settings()
    url = url or settings.resolved_database_url
    key = (os.getpid(), url, create, settings.db_schema)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = build_engine(url, create=create)
            _engines[key] = engine
        return engine


def retry_transient(
    write: Callable[[], _T], *, seconds: float, what: str, log: logging.Logger
) -> _T:
    """``write()``, tried again while the database is unreachable (:data:`TRANSIENT_ERRORS`)
    for up to ``seconds``; the last error is raised after that.

    For the writes whose truth exists nowhere else once the process moves on (a body's
    completion, its failure): a database restart or a short outage delays them instead of
    losing them. Each write must be a compare-and-set, so a try whose commit went through
    but whose answer was lost is refused by the next, never applied twice.
    """
    deadline = time.monotonic() + seconds
    delay = 0.1
    while True:
        try:
            return write()
        except TRANSIENT_ERRORS as exc:
            if time.monotonic() + delay > deadline:
                raise
            first_line = next(iter(str(exc).splitlines()), "")
            log.warning(
                "%s: the database is unreachable (%s); trying again in %.1f s",
                what,
                scrub(f"{type(exc).__name__}: {first_line}")[:300],
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_DELAY_SECONDS)


def _after_fork_in_child() -> None:
    # The child inherited the parent's pools; drop them without closing the sockets the
    # parent still uses, and build fresh engines on first use.
    for engine in list(_engines.values()):
        engine.dispose(close=False)
    _engines.clear()
    _autocommit_engines.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def dispose_engines() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _autocommit_engines.clear()


def interrupt(dbapi_connection: Any) -> None:
    """From another thread: stop the statement ``dbapi_connection`` is running, best effort.

    PostgreSQL cancels it in the server, a lock wait included. SQLite stops a running
    statement, but not its wait for another writer's lock (``sqlite3_interrupt`` does not
    end the busy handler's sleeps); that wait holds no lock and ends with the process.
    """
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.interrupt()
        return
    cancel_safe = getattr(dbapi_connection, "cancel_safe", None)  # psycopg >= 3.2
    # Not sent (the server went away, a timeout): the statement ends at its lock_timeout.
    with contextlib.suppress(Exception):
        if cancel_safe is not None:
            cancel_safe(timeout=_CANCEL_TIMEOUT_SECONDS)
        else:
            dbapi_connection.cancel()


def is_sqlite(bind: Engine | Connection | Session) -> bool:
    engine = bind if isinstance(bind, Engine | Connection) else bind.get_bind()
    return engine.dialect.name == "sqlite"


def describe_url(url: str) -> str:
    """The URL for messages: its password and every query parameter whose name looks
    secret (``?password=``, ``sslpassword``, ``token``, ``sslkey``...) shown as ``***``.

    libpq and the drivers take a password from the query string as readily as from the
    user info, so hiding only the URL's password field is not enough."""
    parsed = make_url(url)
    shown = parsed.set(query={}).render_as_string(hide_password=True)
    if not parsed.query:
        return shown
    # As SQLAlchemy renders a query (sorted names, each value quoted), but rendered here:
    # SQLAlchemy would quote the marker itself to %2A%2A%2A.
    pairs = []
    for name in sorted(parsed.query):
        values = parsed.query[name]  # a str, or a tuple when the name is repeated
        for value in (values,) if isinstance(values, str) else values:
            shown_value = REDACTED if is_secret_name(name) else quote_plus(value)
            pairs.append(f"{quote_plus(name)}={shown_value}")
    return f"{shown}?{'&'.join(pairs)}"


def unavailable(exc: DBAPIError, url: str | None = None) -> DatabaseUnavailableError:
    # Drivers echo the connection string they were given (an invalid option, a DSN they
    # could not parse): scrubbed, and before the first line is taken, as evidence is.
    if exc.orig:
        lines = scrub(str(exc.orig)).strip().splitlines()
        detail = lines[0] if lines else ""
    else:
        detail = scrub(str(exc))
    where = describe_url(url) if url else "the database"
    return DatabaseUnavailableError(f"cannot use {where}: {detail}")


@contextmanager
def read_session(engine: Engine | None = None) -> Iterator[Session]:
    """A session for reading. Closing it ends the transaction and detaches what was loaded,
    which stays readable."""
    from sqlalchemy.orm import Session

    engine = engine or get_engine()
    with Session(engine, expire_on_commit=False) as session:
        yield session


def immediate(engine: Engine) -> Engine:
    """``engine`` for a transaction that writes: on SQLite it begins with ``BEGIN
    IMMEDIATE``, taking the write lock (waiting up to the busy timeout for it) before the
    first read; elsewhere ``engine`` itself."""
    return engine.execution_options(**{_IMMEDIATE: True}) if is_sqlite(engine) else engine


@contextmanager
def write_session(engine: Engine | None = None) -> Iterator[Session]:
    """One write transaction: committed on success, rolled back on any error.

    On SQLite the transaction starts with ``BEGIN IMMEDIATE``, taking the write lock
    before the first read, so read-then-write transactions never fail half way.
    """
    from sqlalchemy.orm import Session

    engine = engine or get_engine()
    with Session(immediate(engine), expire_on_commit=False) as session, session.begin():
        yield session


_autocommit_engines: dict[Engine, Engine] = {}


@contextmanager
def statement_session(engine: Engine | None = None) -> Iterator[Session]:
    """A session for paths whose every write is one compare-and-set statement (task start,
    completion, heartbeats, the bridge's receivers): on PostgreSQL each statement commits
    on its own (autocommit: no BEGIN/COMMIT round trips on the hot path of every task);
    on SQLite it is a :func:`write_session`. Nothing here may rely on two statements
    committing together -- the CAS in each write is what keeps the run truthful.
    """
    from sqlalchemy.orm import Session

    engine = engine or get_engine()
    if is_sqlite(engine):
        with write_session(engine) as session:
            yield session
        return
    bind = _autocommit_engines.get(engine)
    if bind is None:
        bind = _autocommit_engines.setdefault(
            engine, engine.execution_options(isolation_level="AUTOCOMMIT")
        )
    with Session(bind, expire_on_commit=False) as session:
        yield session
        session.commit()


__all__ = [
    "TRANSIENT_ERRORS",
    "DatabaseUnavailableError",
    "OperationalError",
    "build_engine",
    "check_gate",
    "check_migrated",
    "describe_url",
    "dispose_engines",
    "get_engine",
    "immediate",
    "interrupt",
    "is_sqlite",
    "read_session",
    "retry_transient",
    "statement_session",
    "unavailable",
    "write_session",
]


def check_migrated(engine: Engine, url: str) -> None:
    """The database has runwarden's tables: a command that reads it says what to do (migrate)
    instead of failing on the first missing table. Here, not in :mod:`worker.migrate`:
    every CLI command pays for this module's imports, and alembic's cost a fifth of a
    second."""
    try:
        with engine.connect() as connection:
            tables = inspect(connection)
            migrated = tables.has_table(VERSION_TABLE) and tables.has_table("operation_runs")
    except DBAPIError as exc:
        raise unavailable(exc, url) from exc
    if not migrated:
        raise DatabaseNotMigratedError(
            f"database {describe_url(url)} has no runwarden tables: run `runwarden migrate`"
        )


def check_gate(engine: Engine, url: str, policy: LifecyclePolicy) -> None:
    """The legitimacy gate can read what ``policy`` maps (worker.lifecycle.tenancy): its
    tables and columns exist, and the gate views are the ones ``migrate`` builds for it."""
    from worker.lifecycle.tenancy import check_gate as check

    try:
        with engine.connect() as connection:
            check(connection, policy.gate_tenancy, policy.source or "<policy>")
    except DBAPIError as exc:
        raise unavailable(exc, url) from exc
