"""An application's own database for runwarden to move into: tables named like
runwarden's but of another shape, and a checksum that tells whether anything of the
application's changed."""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager

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
