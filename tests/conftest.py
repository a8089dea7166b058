"""Shared fixtures: real PostgreSQL and Redis started once per session, a fresh database
per test (a copy of a migrated template), on SQLite and on PostgreSQL.

In CI (CI=true) a missing server binary fails the run; elsewhere the tests that need it
are skipped with a message saying what to install.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine

from tests.servers import PostgresServer, RedisServer, ServerUnavailable
from worker import db
from worker.migrate import upgrade
from worker.settings import get_settings

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
TEMPLATE_DB = "runwarden_template"
_counter = itertools.count()


def _unavailable(exc: Exception) -> None:
    if IN_CI:
        pytest.fail(f"CI needs this server: {exc}", pytrace=False)
    pytest.skip(str(exc))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
    except ServerUnavailable as exc:
        _unavailable(exc)
    with psycopg.connect(_plain(server.url()), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    upgrade(server.url(TEMPLATE_DB))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        server.start()
    except ServerUnavailable as exc:
        _unavailable(exc)
    yield server
    server.stop()


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    name = f"t_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(_plain(postgres_server.url()), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}")
    yield postgres_server.url(name)
    db.dispose_engines()
    with psycopg.connect(_plain(postgres_server.url()), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "runwarden.db"
    shutil.copyfile(sqlite_template, path)
    yield f"sqlite:///{path}"
    db.dispose_engines()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh migrated database; every test using it runs on both backends."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def engine(db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Engine]:
    """The engine of a fresh database, also made the configured one (RUNWARDEN_DATABASE_URL)."""
    monkeypatch.setenv("RUNWARDEN_DATABASE_URL", db_url)
    monkeypatch.setenv("RUNWARDEN_VAR_DIR", str(tmp_path / "var"))
    get_settings.cache_clear()
    yield db.get_engine(db_url)
    db.dispose_engines()
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith("RUNWARDEN_"):
            monkeypatch.delenv(key)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
