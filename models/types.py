"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeGuard

from sqlalchemy import JSON, BigInteger, DateTime, Dialect, Integer
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator, TypeEngine

# BIGINT on PostgreSQL; INTEGER on SQLite, where only "INTEGER PRIMARY KEY" autoincrements.
BigId: TypeEngine[int] = BigInteger().with_variant(Integer(), "sqlite")

#: The largest id those columns hold (signed 64 bits; SQLite's INTEGER is too).
MAX_ID = 2**63 - 1


def is_id(value: object) -> TypeGuard[int]:
    """Whether ``value`` can name a row: a positive integer the id columns hold. bool is a
    subclass of int in Python, and ``True`` is not row 1; ``2.7`` is not row 2."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ID


# JSONB on PostgreSQL (indexable, compact), JSON text elsewhere.
JsonDoc: TypeEngine[Any] = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


#: How SQLite stores a :class:`UtcDateTime` (SQLAlchemy's own format for naive values).
SQLITE_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def sqlite_timestamp(value: datetime) -> str:
    """``value`` as SQLite stores it, for comparisons made inside SQL text (JSON params)."""
    return value.astimezone(UTC).strftime(SQLITE_TIMESTAMP_FORMAT)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL stores ``timestamptz``. SQLite has no time type: SQLAlchemy writes a
    fixed-width ``YYYY-MM-DD HH:MM:SS.ffffff`` string, so values are normalised to UTC
    and stored naive -- then string comparison in SQL orders exactly like time does.
    Naive datetimes are refused: a naive value would silently mean local time.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: runwarden stores timezone-aware UTC")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
