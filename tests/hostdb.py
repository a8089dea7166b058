"""An application's own database for runwarden to move into: tables named like
runwarden's but of another shape, and a checksum that tells whether anything of the
application's changed."""

from __future__ import annotations

import hashlib
import itertools
import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from itertools import product
from typing import Any

import psycopg

from tests.servers import PostgresServer

_counter = itertools.count()

#: The application's schema: users, tenants and workspaces that are not runwarden's.
APPLICATION_DDL = (
    "CREATE TABLE public.workspaces (slug text PRIMARY KEY, title text NOT NULL)",
    "CREATE TABLE public.tenants (code text PRIMARY KEY,"
    " workspace_slug text NOT NULL REFERENCES public.workspaces (slug), plan text)",
    "CREATE TABLE public.users (uid uuid PRIMARY KEY, login text UNIQUE NOT NULL,"
    " disabled boolean NOT NULL DEFAULT false)",
    "CREATE INDEX users_login_lower ON public.users (lower(login))",
    "INSERT INTO public.workspaces VALUES ('acme', 'Acme'), ('globex', 'Globex')",
    "INSERT INTO public.tenants VALUES ('acme-eu', 'acme', 'pro'), ('globex-us', 'globex', NULL)",
    "INSERT INTO public.users VALUES"
    " ('7d1f1c4e-9a43-4f6b-8d2e-2b1c0f9e5a01', 'ada', false),"
    " ('0b8e6c2a-51d7-4c39-9f0e-6a4d3b2c1e02', 'bob', true)",
)


def plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@contextmanager
def empty_database(server: PostgresServer, *ddl: str) -> Iterator[str]:
    """A new, unmigrated database with ``ddl`` run in it; its URL."""
    name = f"h_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(plain(server.url()), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = server.url(name)
    try:
        if ddl:
            with psycopg.connect(plain(url), autocommit=True) as conn:
                for statement in ddl:
                    conn.execute(statement)
        yield url
    finally:
        from worker import db

        db.dispose_engines()
        with psycopg.connect(plain(server.url()), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# Definitions (columns, constraints, indexes, grants...) and contents of a schema's tables.
_SHAPE = """
SELECT c.relname, c.relkind, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
       a.attnotnull, pg_get_expr(d.adbin, d.adrelid)
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_attrdef AS d ON d.adrelid = c.oid AND d.adnum = a.attnum
WHERE n.nspname = %(schema)s
ORDER BY c.relname, a.attnum
"""
_CONSTRAINTS = """
SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
FROM pg_constraint WHERE connamespace = %(schema)s::regnamespace ORDER BY 1, 2
"""
_INDEXES = "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %(schema)s ORDER BY 1"


def schema_checksum(url: str, schema: str = "public") -> str:
    """sha256 of every object's definition in ``schema`` and every table's rows."""
    digest = hashlib.sha256()
    with psycopg.connect(plain(url)) as conn:
        for query in (_SHAPE, _CONSTRAINTS, _INDEXES):
            for row in conn.execute(query, {"schema": schema}):
                digest.update(repr(row).encode())
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %(schema)s ORDER BY 1",
            {"schema": schema},
        ).fetchall()
        for (table,) in tables:
            rows = conn.execute(
                psycopg.sql.SQL("SELECT * FROM {}.{} ORDER BY 1").format(
                    psycopg.sql.Identifier(schema), psycopg.sql.Identifier(table)
                )
            ).fetchall()
            digest.update(f"{table}:{sorted(map(repr, rows))}".encode())
    return digest.hexdigest()


def schema_tables(url: str, schema: str) -> set[str]:
    with psycopg.connect(plain(url)) as conn:
        rows = conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = to_regnamespace(%(s)s)"
            " AND relkind IN ('r', 'v', 'S', 'i', 'p')",
            {"s": schema},
        ).fetchall()
    return {name for (name,) in rows}


def schemas(url: str) -> set[str]:
    with psycopg.connect(plain(url)) as conn:
        rows = conn.execute("SELECT nspname FROM pg_namespace").fetchall()
    return {name for (name,) in rows}


#: An application with organizations (its tenants, in accounts: its workspaces) and
#: people (its users), whose activity three ways say: a flag, a soft delete, a status.
ORGANIZATIONS_DDL = (
    "CREATE TABLE public.accounts (id bigint PRIMARY KEY, name text NOT NULL)",
    "CREATE TABLE public.organizations (id bigint PRIMARY KEY,"
    " account_id bigint REFERENCES public.accounts (id), name text NOT NULL,"
    " is_active boolean NOT NULL DEFAULT true, deleted_at timestamptz,"
    " status text NOT NULL DEFAULT 'active')",
    "CREATE TABLE public.people (id bigint PRIMARY KEY, email text NOT NULL,"
    " is_active boolean NOT NULL DEFAULT true, deleted_at timestamptz,"
    " status text NOT NULL DEFAULT 'active')",
)

#: ``active`` in each of its forms, over the same application rows.
ACTIVE_FORMS = {
    "flag": '"is_active"',
    "soft_delete": '{ column = "deleted_at", is_null = true }',
    "status": '{ column = "status", equals = "active" }',
}


def tenancy_toml(active: str = ACTIVE_FORMS["flag"]) -> str:
    return (
        "[tenancy]\n"
        'tenants = { table = "public.organizations", id = "id", '
        f'workspace_id = "account_id", active = {active} }}\n'
        f'users = {{ table = "public.people", id = "id", active = {active} }}\n'
    )


def set_active(url: str, table: str, row_id: int, active: bool) -> None:
    """Activate or deactivate an application row, in all three of its ways at once."""
    query = psycopg.sql.SQL(
        "UPDATE public.{} SET is_active = %(a)s,"
        " deleted_at = CASE WHEN %(a)s THEN NULL ELSE now() END,"
        " status = CASE WHEN %(a)s THEN 'active' ELSE 'suspended' END WHERE id = %(id)s"
    ).format(psycopg.sql.Identifier(table))
    with psycopg.connect(plain(url), autocommit=True) as conn:
        conn.execute(query, {"a": active, "id": row_id})


#: Application ids of the combinations (see seed_host_combinations).
HOME_ACCOUNT, OTHER_ACCOUNT = 10, 20
HOST_TENANTS = {"active": 101, "inactive": 102, "elsewhere": 103, "elsewhere_inactive": 104}
HOST_USERS = {"active": 201, "inactive": 202}
MISSING_TENANT, MISSING_USER = 999, 998


def seed_host_rows(url: str) -> None:
    """The application's accounts, organizations and people behind the combinations."""
    with psycopg.connect(plain(url), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO public.accounts VALUES (%s, 'home'), (%s, 'other')",
            (HOME_ACCOUNT, OTHER_ACCOUNT),
        )
        for name, org_id in HOST_TENANTS.items():
            account = OTHER_ACCOUNT if name.startswith("elsewhere") else HOME_ACCOUNT
            conn.execute(
                "INSERT INTO public.organizations (id, account_id, name) VALUES (%s, %s, %s)",
                (org_id, account, name),
            )
        for name, person_id in HOST_USERS.items():
            conn.execute(
                "INSERT INTO public.people (id, email) VALUES (%s, %s)",
                (person_id, f"{name}@example.test"),
            )
    for name, org_id in HOST_TENANTS.items():
        if name.endswith("inactive"):
            set_active(url, "organizations", org_id, False)
    set_active(url, "people", HOST_USERS["inactive"], False)


def host_combinations() -> list[tuple[int | None, int | None]]:
    """(tenant_id, user_id) of every combination: tenant none / active / inactive / of
    another account / inactive of another account / missing, user none / active /
    inactive / missing."""
    tenants = [None, *HOST_TENANTS.values(), MISSING_TENANT]
    users = [None, *HOST_USERS.values(), MISSING_USER]
    return [(t, u) for t in tenants for u in users]


def seed_host_runs(
    engine: Any,
    *,
    types: Sequence[str],
    statuses: Sequence[str] = ("queued", "running"),
    heartbeats: Sequence[bool] = (False,),
    now: datetime,
    age_seconds: float = 0,
    spacing_seconds: float = 1,
) -> list[int]:
    """One run in the home account for every host combination, type, status and heartbeat,
    as seed_gate_combinations makes them over runwarden's own tables."""
    from models import OperationRun
    from worker.db import write_session

    combinations = product(host_combinations(), statuses, types, heartbeats)
    run_ids = []
    with write_session(engine) as session:
        for index, ((tenant_id, user_id), status, type_, beat) in enumerate(combinations):
            created = now - timedelta(seconds=age_seconds + index * spacing_seconds)
            run = OperationRun(
                workspace_id=HOME_ACCOUNT,
                tenant_id=tenant_id,
                user_id=user_id,
                type=type_,
                status=status,
                outcome="pending",
                attempts=0 if status == "queued" else 1,
                celery_task_id=str(uuid.uuid4()),
                created_at=created,
                updated_at=created,
                started_at=created + timedelta(seconds=5) if status != "queued" else None,
                last_heartbeat_at=(
                    created + timedelta(seconds=7) if beat and status == "running" else None
                ),
            )
            session.add(run)
            session.flush()
            run_ids.append(run.id)
    return run_ids


def expected_reason(tenant_id: int | None, user_id: int | None) -> str | None:
    """The gate's reason for a host combination, said from the rows seeded, independently
    of any code that reads them."""
    if tenant_id is not None:
        if tenant_id == MISSING_TENANT:
            return "execution.tenant_missing"
        name = {v: k for k, v in HOST_TENANTS.items()}[tenant_id]
        if name.endswith("inactive"):
            return "execution.tenant_inactive"
        if name.startswith("elsewhere"):
            return "execution.tenant_workspace_mismatch"
    if user_id is not None and user_id != HOST_USERS["active"]:
        return "execution.user_inactive"
    return None
