"""runwarden in its own PostgreSQL schema (RUNWARDEN_DB_SCHEMA), beside an application
whose users, tenants and workspaces are tables of another shape."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from migrations import VERSION_TABLE
from models import Base
from tests.hostdb import APPLICATION_DDL, empty_database, schema_checksum, schema_tables
from tests.servers import PostgresServer
from worker.db import build_engine
from worker.errors import DatabaseUnavailableError
from worker.migrate import downgrade, upgrade

pytestmark = pytest.mark.postgres

#: Every table of the models (runwarden's own), whatever revisions add.
RUNWARDEN_TABLES = set(Base.metadata.tables)


def _diff(url: str, schema: str | None) -> list[object]:
    engine = build_engine(url, schema=schema)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "version_table": VERSION_TABLE}
            )
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_schema__beside_an_application_with_its_own_users_tenants_and_workspaces(
    postgres_server: PostgresServer,
) -> None:
    with empty_database(postgres_server, *APPLICATION_DDL) as url:
        before = schema_checksum(url)

        upgrade(url, schema="runwarden")

        assert schema_checksum(url) == before
        assert schema_tables(url, "public") == {
            "workspaces", "tenants", "users", "workspaces_pkey", "tenants_pkey",
            "users_pkey", "users_login_key", "users_login_lower",
        }  # fmt: skip
        assert RUNWARDEN_TABLES | {VERSION_TABLE, "pk_operation_runs"} <= schema_tables(
            url, "runwarden"
        )
        # The models, compared with the schema as the connection's default schema.
        assert _diff(url, "runwarden") == []
        # Every sequence and index is runwarden's schema's, none the application's.
        engine = build_engine(url, schema="runwarden")
        try:
            tables = inspect(engine)
            assert set(tables.get_table_names()) == RUNWARDEN_TABLES | {VERSION_TABLE}
            assert {i["name"] for i in tables.get_indexes("operation_runs")} >= {
                "ix_operation_runs_active_scan",
                "uq_operation_runs_active_identity",
            }
        finally:
            engine.dispose()

        # Again (as `up` does on every start): nothing changes.
        upgrade(url, schema="runwarden")
        assert schema_checksum(url) == before
        assert _diff(url, "runwarden") == []


def test_schema__default_layout_into_that_database__refused_by_its_users_table(
    postgres_server: PostgresServer,
) -> None:
    # Why the schema exists: the default layout collides with the application's tables.
    with empty_database(postgres_server, *APPLICATION_DDL) as url:
        before = schema_checksum(url)
        with pytest.raises(DatabaseUnavailableError, match="already exists"):
            upgrade(url, schema=None)
        # One transaction: the failed migration left nothing behind.
        assert schema_checksum(url) == before
        assert VERSION_TABLE not in schema_tables(url, "public")


def test_schema__downgrade_base_then_upgrade_in_the_schema(
    postgres_server: PostgresServer,
) -> None:
    with empty_database(postgres_server, *APPLICATION_DDL) as url:
        before = schema_checksum(url)
        upgrade(url, schema="rw")
        downgrade(url, "base", schema="rw")
        assert schema_tables(url, "rw") <= {VERSION_TABLE, "runwarden_alembic_version_pkc"}
        upgrade(url, schema="rw")
        assert _diff(url, "rw") == []
        assert schema_checksum(url) == before


def test_schema__two_schemas_are_two_runwardens(postgres_server: PostgresServer) -> None:
    with empty_database(postgres_server) as url:
        upgrade(url, schema="rw_a")
        before = schema_checksum(url, "rw_a")
        upgrade(url, schema="rw_b")
        assert schema_checksum(url, "rw_a") == before
        assert schema_tables(url, "rw_a") == schema_tables(url, "rw_b")
        assert _diff(url, "rw_a") == _diff(url, "rw_b") == []
