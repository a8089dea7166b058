"""Where the legitimacy gate reads its facts: runwarden's own ``tenants`` and ``users``, or
an application's own tables, mapped by the policy's ``[tenancy]`` section.

The gate's SQL is written once, by name (``start_run``, ``reconcile_pass``), against two
views with fixed names and columns in runwarden's schema:

- ``runwarden_gate_tenants(id, workspace_id, is_active)``
- ``runwarden_gate_users(id, is_active)``

``migrate`` builds them from the mapping -- with SQLAlchemy's compiler, from validated
identifiers the dialect quotes, a value of ``active.equals`` rendered by the dialect as a
literal -- and a third, ``runwarden_gate_mapping(mapping_sha256)``, records which mapping
they were built from. No configuration text is ever pasted into SQL, and the named
statements never change with the mapping: PostgreSQL inlines the views, so the task start
stays one statement and the reconcile pass one statement per batch, on the host's indexes.

Whenever runwarden connects (migrate, up, the commands), :func:`check_gate` verifies that
the mapped tables and columns exist with usable types and that the views are the current
mapping's; anything else is one line naming the policy key, exit 2.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Boolean, Integer, String, column, inspect, literal, select, table
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement, Select
from sqlalchemy.sql.expression import TableClause

from worker.errors import PolicyError

#: An identifier of the application's: as PostgreSQL spells one (up to its 63 bytes), and
#: quoted in SQL, so ``Organizations`` names exactly that table.
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
#: The longest text ``active.equals`` takes.
MAX_EQUALS_LENGTH = 200

GATE_TENANTS_VIEW = "runwarden_gate_tenants"
GATE_USERS_VIEW = "runwarden_gate_users"
GATE_MAPPING_VIEW = "runwarden_gate_mapping"

#: What the gate's statements read (the views; their columns are fixed).
gate_tenants = table(
    GATE_TENANTS_VIEW,
    column("id", Integer),
    column("workspace_id", Integer),
    column("is_active", Boolean),
)
gate_users = table(GATE_USERS_VIEW, column("id", Integer), column("is_active", Boolean))
gate_mapping = table(GATE_MAPPING_VIEW, column("mapping_sha256", String))

_Fail = Callable[[str, str], PolicyError]
_TABLE_KEYS = {
    "tenants": ("table", "id", "workspace_id", "active"),
    "users": ("table", "id", "active"),
}


@dataclass(frozen=True, slots=True)
class ActiveRule:
    """When a mapped row counts as active: a boolean ``column`` is true; or, with
    ``is_null``, the column is (true) or is not (false) NULL (``deleted_at``); or, with
    ``equals``, the column equals that text or integer (a status column). A NULL is
    inactive in every form: nothing vouches for the row."""

    column: str
    is_null: bool | None = None
    equals: str | int | None = None

    def to_policy(self) -> str | dict[str, Any]:
        if self.is_null is not None:
            return {"column": self.column, "is_null": self.is_null}
        if self.equals is not None:
            return {"column": self.column, "equals": self.equals}
        return self.column

    def predicate(self, source: TableClause) -> ColumnElement[Any]:
        value: ColumnElement[Any] = source.c[self.column]
        if self.is_null is True:
            return value.is_(None)
        if self.is_null is False:
            return value.is_not(None)
        if self.equals is not None:
            # Rendered by the dialect as a quoted literal in the view's definition.
            return value == literal(self.equals)
        return value


@dataclass(frozen=True, slots=True)
class FactSource:
    """One table the gate reads: ``key`` is its policy key (``tenants``, ``users``)."""

    key: str
    schema: str | None
    table: str
    id: str
    active: ActiveRule
    workspace_id: str | None = None

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}" if self.schema else self.table

    def columns(self) -> tuple[tuple[str, str], ...]:
        """(policy key, column) of every column the view reads."""
        keys = [("id", self.id)]
        if self.workspace_id is not None:
            keys.append(("workspace_id", self.workspace_id))
        keys.append(("active", self.active.column))
        return tuple(keys)

    def view(self) -> Select[Any]:
        names = dict.fromkeys(name for _, name in self.columns())
        source = table(self.table, *(column(name) for name in names), schema=self.schema)
        selected: list[ColumnElement[Any]] = [source.c[self.id].label("id")]
        if self.workspace_id is not None:
            selected.append(source.c[self.workspace_id].label("workspace_id"))
        selected.append(self.active.predicate(source).label("is_active"))
        return select(*selected)

    def to_policy(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"table": self.qualified, "id": self.id}
        if self.workspace_id is not None:
            entry["workspace_id"] = self.workspace_id
        entry["active"] = self.active.to_policy()
        return entry


@dataclass(frozen=True)
class Tenancy:
    tenants: FactSource
    users: FactSource
    #: the application's tables ([tenancy]); False: runwarden's own.
    host: bool

    def to_dict(self) -> dict[str, Any]:
        return {"tenants": self.tenants.to_policy(), "users": self.users.to_policy()}

    @functools.cached_property
    def sha256(self) -> str:
        """What the gate views record as ``mapping_sha256``: the views are current when
        it is the policy's."""
        canonical = json.dumps(
            {"host": self.host, **self.to_dict()}, sort_keys=True, separators=(",", ":")
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def views(self) -> tuple[tuple[str, Select[Any]], ...]:
        """(name, SELECT) of each gate view, the mapping's record last."""
        return (
            (GATE_TENANTS_VIEW, self.tenants.view()),
            (GATE_USERS_VIEW, self.users.view()),
            (GATE_MAPPING_VIEW, select(literal(self.sha256).label("mapping_sha256"))),
        )


#: The gate reads runwarden's own tables (no [tenancy]).
OWN_TENANCY = Tenancy(
    tenants=FactSource(
        "tenants", None, "tenants", "id", ActiveRule("is_active"), workspace_id="workspace_id"
    ),
    users=FactSource("users", None, "users", "id", ActiveRule("is_active")),
    host=False,
)


# -- the policy section --------------------------------------------------------------------


def parse_tenancy(section: object, fail: _Fail) -> Tenancy:
    """The ``[tenancy]`` section: both ``tenants`` and ``users``, each an inline table."""
    if not isinstance(section, dict):
        raise fail("tenancy", "must be a table")
    for key in section:
        if key not in _TABLE_KEYS:
            raise fail(f"tenancy.{_key(key)}", "unknown key (expected 'tenants' or 'users')")
    sources = {}
    for key, allowed in _TABLE_KEYS.items():
        where = f"tenancy.{key}"
        entry = section.get(key)
        if entry is None:
            raise fail(where, "missing (the gate needs both tenants and users mapped)")
        if not isinstance(entry, dict):
            raise fail(where, 'must be a table such as { table = "public.x", id = "id", ... }')
        for name in entry:
            if name not in allowed:
                raise fail(f"{where}.{_key(name)}", f"unknown key (expected {', '.join(allowed)})")
        schema, table_name = _qualified_table(entry, f"{where}.table", fail)
        sources[key] = FactSource(
            key=key,
            schema=schema,
            table=table_name,
            id=_identifier(entry, "id", f"{where}.id", fail),
            workspace_id=(
                _identifier(entry, "workspace_id", f"{where}.workspace_id", fail)
                if "workspace_id" in allowed
                else None
            ),
            active=_active(entry, f"{where}.active", fail),
        )
    return Tenancy(tenants=sources["tenants"], users=sources["users"], host=True)


def _key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key)
    return key if bare else json.dumps(key)


def _text(entry: Mapping[str, Any], key: str, where: str, fail: _Fail) -> str:
    if key not in entry:
        raise fail(where, "missing")
    value = entry[key]
    if not isinstance(value, str):
        raise fail(where, f"must be a string (got {value!r})")
    return value


def _check_identifier(value: str, where: str, fail: _Fail) -> str:
    if not IDENTIFIER.fullmatch(value):
        raise fail(
            where,
            f"{value!r} is not an identifier (letters, digits and _, not starting with a "
            "digit, at most 63 characters)",
        )
    return value


def _identifier(entry: Mapping[str, Any], key: str, where: str, fail: _Fail) -> str:
    return _check_identifier(_text(entry, key, where, fail), where, fail)


def _qualified_table(entry: Mapping[str, Any], where: str, fail: _Fail) -> tuple[str, str]:
    value = _text(entry, "table", where, fail)
    parts = value.split(".")
    if len(parts) != 2:
        raise fail(where, f"{value!r} must name its schema too, as schema.table (public.x)")
    return _check_identifier(parts[0], where, fail), _check_identifier(parts[1], where, fail)


def _active(entry: Mapping[str, Any], where: str, fail: _Fail) -> ActiveRule:
    if "active" not in entry:
        raise fail(where, "missing")
    value = entry["active"]
    if isinstance(value, str):
        return ActiveRule(_check_identifier(value, where, fail))
    if not isinstance(value, dict):
        raise fail(
            where,
            'must be a boolean column\'s name, { column = "x", is_null = true } or '
            f'{{ column = "x", equals = "active" }} (got {value!r})',
        )
    for key in value:
        if key not in ("column", "is_null", "equals"):
            raise fail(f"{where}.{_key(key)}", "unknown key (expected column, is_null, equals)")
    name = _identifier(value, "column", f"{where}.column", fail)
    if ("is_null" in value) == ("equals" in value):
        raise fail(where, "needs exactly one of is_null and equals beside column")
    if "is_null" in value:
        is_null = value["is_null"]
        if not isinstance(is_null, bool):
            raise fail(f"{where}.is_null", f"must be true or false (got {is_null!r})")
        return ActiveRule(name, is_null=is_null)
    equals = value["equals"]
    # bool is an int in Python: `true` is not 1.
    if isinstance(equals, bool) or not isinstance(equals, str | int):
        raise fail(f"{where}.equals", f"must be a string or an integer (got {equals!r})")
    if isinstance(equals, str) and (
        not equals.isprintable() or not 0 < len(equals) <= MAX_EQUALS_LENGTH
    ):
        raise fail(
            f"{where}.equals",
            f"must be printable text of 1 to {MAX_EQUALS_LENGTH} characters",
        )
    if isinstance(equals, int) and not -(2**63) <= equals < 2**63:
        raise fail(f"{where}.equals", "must fit in 64 bits")
    return ActiveRule(name, equals=equals)


# -- the database --------------------------------------------------------------------------


def check_tables(connection: Connection, tenancy: Tenancy, source: str) -> None:
    """The mapped tables and columns exist, with types the gate can compare: integer ids,
    a boolean ``active`` column, ``equals`` a column of its value's kind."""

    def fail(key: str, problem: str) -> PolicyError:
        return PolicyError(f"{source}: {key}: {problem}")

    if connection.dialect.name != "postgresql":
        if tenancy.host:
            raise fail("tenancy", "an application's tables need PostgreSQL (this is SQLite)")
        return
    if not tenancy.host:
        return  # runwarden's own: the migrations made them
    tables = inspect(connection)
    for fact in (tenancy.tenants, tenancy.users):
        where = f"tenancy.{fact.key}"
        if not tables.has_table(fact.table, schema=fact.schema):
            raise fail(f"{where}.table", f"no table or view {fact.qualified} in the database")
        found = {c["name"]: c["type"] for c in tables.get_columns(fact.table, schema=fact.schema)}
        for key, name in fact.columns():
            if name not in found:
                raise fail(f"{where}.{key}", f"no column {name!r} in {fact.qualified}")
            kind = found[name]
            if key in ("id", "workspace_id") and not isinstance(kind, Integer):
                raise fail(
                    f"{where}.{key}",
                    f"{fact.qualified}.{name} is {kind}, not an integer type "
                    "(a run's workspace_id, tenant_id and user_id are integers)",
                )
            if key == "active":
                _check_active_type(fact, kind, f"{where}.active", fail)


def _check_active_type(fact: FactSource, kind: Any, where: str, fail: _Fail) -> None:
    rule, shown = fact.active, f"{fact.qualified}.{fact.active.column} is {kind}"
    if rule.is_null is not None:
        return  # any column can be NULL or not
    if rule.equals is None:
        if not isinstance(kind, Boolean):
            raise fail(
                where,
                f"{shown}, not boolean (say {{ column = ..., is_null = true }} or "
                "{ column = ..., equals = ... } for another kind of column)",
            )
    elif isinstance(rule.equals, str) and not isinstance(kind, String):
        raise fail(f"{where}.equals", f"{shown}, not text: equals must be an integer here")
    elif isinstance(rule.equals, int) and not isinstance(kind, Integer):
        raise fail(f"{where}.equals", f"{shown}, not an integer: equals must be text here")


def installed_mapping(connection: Connection) -> str | None:
    """The ``mapping_sha256`` the gate views were built from (None: no views)."""
    if not inspect(connection).has_table(GATE_MAPPING_VIEW):
        return None
    found = connection.execute(select(gate_mapping.c.mapping_sha256)).scalar()
    return str(found) if found is not None else None


def check_gate(connection: Connection, tenancy: Tenancy, source: str) -> None:
    """Whenever runwarden connects: the mapping fits the database, and the gate views are
    the ones ``migrate`` builds from it."""
    check_tables(connection, tenancy, source)
    if installed_mapping(connection) != tenancy.sha256:
        what = "[tenancy]" if tenancy.host else "runwarden's own tenants and users"
        raise PolicyError(
            f"{source}: tenancy: the database's gate views were made for another mapping "
            f"than this policy's ({what}): run `runwarden migrate`"
        )
