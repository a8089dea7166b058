"""Every hand-written SQL statement of runwarden, once, by name.

The statements live in ``.sql`` files beside this module, loaded once at import (as
procrastinate's ``sql/queries.sql`` is): ``common.sql`` holds what both backends run as
written, ``postgresql.sql`` and ``sqlite.sql`` what their dialects write differently.
Each statement begins with a header line ``-- name: <name>`` and a one-line description
comment; further comment lines say why. Optional filters are written in the SQL itself
(``:ids IS NULL OR ...``), so each name is one constant statement: one plan cache entry,
one thing to read, and it can be pasted into psql as it stands. Nothing here, or anywhere
else in runwarden, assembles SQL by formatting text.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any

from sqlalchemy import BigInteger, Boolean, Integer, TextClause, bindparam, text
from sqlalchemy.sql.selectable import TextualSelect
from sqlalchemy.types import TypeEngine

from models.types import JsonDoc, UtcDateTime

DIALECTS = ("postgresql", "sqlite")

_HEADER = re.compile(r"^-- name: (?P<name>[a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    description: str
    sql: str


def parse_query_file(source: str, *, origin: str = "<sql>") -> dict[str, Query]:
    """The named statements of one file: ``-- name: x``, a description comment line, the
    statement up to the next header (its comment lines and final ``;`` dropped). Text
    before the first header is the file's own comment."""
    headers = list(_HEADER.finditer(source))
    queries: dict[str, Query] = {}
    for index, header in enumerate(headers):
        end = headers[index + 1].start() if index + 1 < len(headers) else len(source)
        lines = source[header.end() : end].strip("\n").splitlines()
        name = header["name"]
        if not lines or not lines[0].startswith("-- "):
            raise ValueError(f"{origin}: query {name} has no description line")
        # Comment lines are for the reader; the driver gets the statement alone (a
        # ":name" in a comment would otherwise be taken for a parameter).
        body = [line for line in lines[1:] if not line.lstrip().startswith("--")]
        sql = "\n".join(body).strip().removesuffix(";").strip()
        if not sql or name in queries:
            raise ValueError(f"{origin}: query {name} is empty or defined twice")
        queries[name] = Query(name, lines[0].removeprefix("-- ").strip(), sql)
    return queries


def _load(filename: str) -> dict[str, Query]:
    source = resources.files(__package__).joinpath(filename).read_text(encoding="utf-8")
    return parse_query_file(source, origin=filename)


def _load_all() -> MappingProxyType[str, MappingProxyType[str, Query]]:
    common = _load("common.sql")
    loaded = {}
    for dialect in DIALECTS:
        own = _load(f"{dialect}.sql")
        clash = sorted(common.keys() & own.keys())
        if clash:
            raise ValueError(f"{dialect}.sql redefines common queries: {', '.join(clash)}")
        loaded[dialect] = MappingProxyType({**common, **own})
    return MappingProxyType(loaded)


#: dialect name -> query name -> query, loaded once at import.
QUERIES = _load_all()


def query(dialect: str, name: str) -> Query:
    try:
        return QUERIES[dialect][name]
    except KeyError:
        raise LookupError(f"no {dialect} query named {name!r}") from None


# Every statement calls the same thing by the same name, so how a parameter is sent and
# how a column is read are said once, by name, here.
_BIND_TYPES: dict[str, TypeEngine[Any]] = {
    "now": UtcDateTime(),
    "summary_counts": JsonDoc,
    "retries": Integer(),
    "attempt": Integer(),
    "limit": Integer(),
    "dry_run": Boolean(),
    "worker_id": BigInteger(),
}
_RESULT_TYPES: dict[str, TypeEngine[Any]] = {
    "now": UtcDateTime(),
    "created_at": UtcDateTime(),
    "started_at": UtcDateTime(),
    "last_heartbeat_at": UtcDateTime(),
    "retry_due_at": UtcDateTime(),
    "requeued_at": UtcDateTime(),
    "stopped_at": UtcDateTime(),
    "worker_started_at": UtcDateTime(),
    "worker_last_heartbeat_at": UtcDateTime(),
    "worker_stopped_at": UtcDateTime(),
    "context": JsonDoc,
}


@functools.cache
def statement(dialect: str, name: str) -> TextClause | TextualSelect:
    """The named query as a SQLAlchemy statement, built once per dialect and name."""
    clause = text(query(dialect, name).sql)
    clause = clause.bindparams(
        *(
            bindparam(key, type_=type_)
            for key, type_ in _BIND_TYPES.items()
            if re.search(rf"(?<![:\w]):{key}\b", clause.text)
        )
    )
    returned = {key: t for key, t in _RESULT_TYPES.items() if re.search(rf"\b{key}\b", clause.text)}
    return clause.columns(**returned) if returned else clause
