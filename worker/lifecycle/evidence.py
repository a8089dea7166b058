"""Making outside text safe to store as evidence: credentials scrubbed, length bounded."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

#: Evidence messages are bounded: an exception can carry a whole HTTP response body.
MESSAGE_LIMIT = 1000

_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@"
)
_SECRET_PAIRS = re.compile(
    r"(?P<key>[\"']?\b(?:password|passwd|pwd|token|access_token|refresh_token|secret|"
    r"client_secret|api[_-]?key|authorization)\b[\"']?\s*[=:]\s*)"
    r"(?P<quote>[\"']?)(?P<value>(?:Bearer\s+)?[^\s\"'&,;}]+)",
    re.IGNORECASE,
)
REDACTED = "***"

#: A name holding one of these anywhere ("DB_PASSWORD", "api_token", "sslkey") names a
#: secret: a value stored under it is hidden whatever it looks like.
_SECRET_NAME = re.compile(
    r"password|passwd|passphrase|pwd|secret|token|credential|key|authorization|signature"
    r"|^sig$",
    re.IGNORECASE,
)


def is_secret_name(name: str) -> bool:
    """Whether a field, parameter or header called ``name`` holds a credential."""
    return _SECRET_NAME.search(name) is not None


def scrub(text: str) -> str:
    """Hide URL passwords and ``password=``/``token=``-style values."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)
    return _SECRET_PAIRS.sub(lambda m: f"{m['key']}{m['quote']}{REDACTED}", text)


def scrub_and_truncate(text: str, limit: int = MESSAGE_LIMIT) -> str:
    # Scrub first: a URL cut in the middle of its password no longer matches the pattern.
    text = scrub(text)
    if len(text) <= limit:
        return text
    return text[: max(limit - 1, 0)] + "\u2026"


def iso(moment: datetime) -> str:
    """ISO-8601 in UTC, always with microseconds: the one format of every timestamp
    runwarden writes into evidence and records, whether Python or PostgreSQL builds it
    (see :data:`PG_ISO_FORMAT`)."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def iso_or_none(moment: datetime | None) -> str | None:
    return iso(moment) if moment is not None else None


#: ``to_char`` pattern giving :func:`iso`'s format for a timestamptz at time zone UTC.
PG_ISO_FORMAT = 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'


def pg_iso(expression: str) -> str:
    """SQL rendering ``expression`` (a timestamptz) exactly as :func:`iso` does."""
    return f"to_char(({expression}) AT TIME ZONE 'UTC', '{PG_ISO_FORMAT}')"


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"evidence value of type {type(value).__name__} is not JSON-serialisable")


def dumps(value: Any) -> str:
    """Compact JSON for evidence and payloads; datetimes as ISO-8601."""
    return json.dumps(value, default=_json_default, separators=(",", ":"), sort_keys=False)
