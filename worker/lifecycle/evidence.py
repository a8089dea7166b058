"""Making outside text safe to store as evidence: credentials scrubbed, length bounded."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

#: Evidence messages are bounded: an exception can carry a whole HTTP response body.
MESSAGE_LIMIT = 1000

REDACTED = "***"

#: A key holding one of these anywhere ("DB_PASSWORD", "api_token", "sslkey") names a
#: secret: the value after it in text, or stored under it in a mapping, is hidden.
_SECRET_KEY_WORDS = (
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "token",
    "credential",
    "key",
)
# A name, unlike a key in text, may also be a header or a URL parameter whose whole value
# is the credential (in text those have their own families below).
_SECRET_NAME = re.compile(
    "|".join((*_SECRET_KEY_WORDS, "authorization", "signature", "^sig$")), re.IGNORECASE
)


def is_secret_name(name: str) -> bool:
    """Whether a field, parameter or header called ``name`` holds a credential."""
    return _SECRET_NAME.search(name) is not None


# -- the scrubber: named pattern families, applied in a fixed order -------------------------
#
# Every pattern runs on every log record, so each must be linear in its input. The rules
# that keep them so: a pattern that starts with a repeated class is anchored to the start
# of a run of that class by a negative lookbehind (otherwise each position inside a 100 kB
# run starts a new scan of the rest of it); the test "does this identifier hold a secret
# word" is a lookahead, which Python never re-enters once it has matched; identifiers and
# quoted strings are consumed possessively (``*+``, ``++``); no quantifier is nested in
# another over overlapping characters.

# An identifier that can name a secret: DB_PASSWORD, client-secret, spring.datasource.password.
_ID = r"[\w.\-]"
# Where such an identifier starts: not inside another, and not a URL's user name or host
# ("redis://token-cache:6379", "u:p@secret-store:5432" are the URL family's business).
_ID_START = r"(?<![\w.\-])(?<!//)(?<!@)"
# An identifier ending in these is an exception class ("KeyError: 'x'"), not a key.
_NOT_A_CLASS = r"(?<!error)(?<!exception)(?<!warning)"
# Between a key and its value: an optional closing quote of the key, then = : or =>.
_SEPARATOR = r"(?:\\?[\"'])?[ \t]*(?:=>?|:)[ \t]*"
# A value: quoted (the whole string, spaces and ;&, included; to the end of the line when
# the closing quote is missing; b'' and r'' literals too; \"...\" inside an escaped JSON
# string), or unquoted, ending at whitespace, a quote, or & , ; }.
_QUOTED = (
    r"[bru]{0,2}\"(?:[^\"\\\n]|\\.)*+\"?"
    r"|[bru]{0,2}'(?:[^'\\\n]|\\.)*+'?"
    r"|\\\"(?:(?!\\\")[^\n])*+(?:\\\")?"
)
_UNQUOTED = r"[^\s\"'&,;}]+"
# Authorization schemes whose credential is one token (RFC 7235 token68).
_ONE_TOKEN_SCHEMES = r"(?:basic|bearer|token|jwt|apikey|key|negotiate|ntlm)"

_OPENING_QUOTE = re.compile(r"[bru]{0,2}(\\?[\"'])", re.IGNORECASE)
_SCHEME_PREFIX = re.compile(rf"{_ONE_TOKEN_SCHEMES}[ \t]+(?=\S)", re.IGNORECASE)


def _split_quotes(value: str) -> tuple[str, str, str]:
    """A matched value as (opening quote, inside, closing quote); quotes "" if absent."""
    opening = _OPENING_QUOTE.match(value)
    if opening is None:
        return "", value, ""
    quote, inside = opening[1], value[opening.end() :]
    if len(inside) >= len(quote) and inside.endswith(quote):
        return opening[0], inside[: -len(quote)], quote
    return opening[0], inside, ""  # unterminated: hidden to the end of the line


def _hide_value(match: re.Match[str]) -> str:
    opening, _, closing = _split_quotes(match["value"])
    return f"{match['lead']}{opening}{REDACTED}{closing}"


def _hide_authorization(match: re.Match[str]) -> str:
    # The scheme says how the caller authenticated, which is worth keeping; the rest goes.
    opening, inside, closing = _split_quotes(match["value"])
    scheme = _SCHEME_PREFIX.match(inside)
    return f"{match['lead']}{opening}{scheme[0] if scheme else ''}{REDACTED}{closing}"


def _hide_all(match: re.Match[str]) -> str:
    return REDACTED


@dataclass(frozen=True)
class PatternFamily:
    """One kind of credential: the pattern finding it and how a match is rewritten."""

    name: str
    pattern: re.Pattern[str]
    replace: Callable[[re.Match[str]], str]
    #: Lower-case text one of which every match contains: a line without any skips the
    #: pattern (a substring test is a fraction of a regex scan, and most lines hold none).
    hints: tuple[str, ...] = ()


#: In this order: a private key block first (it holds text the others would cut into);
#: URL user info before the key=value pairs, so a password in a URL goes whole even when it
#: holds = or &; authorization before bearer and the generic pairs, so its scheme is kept;
#: the token shapes last, for whatever no key or header announced.
PATTERN_FAMILIES: tuple[PatternFamily, ...] = (
    PatternFamily(
        "private key block",
        # Unterminated (a truncated message): hidden to the end.
        re.compile(
            r"-----BEGIN[A-Z ]*PRIVATE KEY[A-Z ]*-----"
            r"(?:(?!-----END)[\s\S])*+(?:-----END[A-Z ]*PRIVATE KEY[A-Z ]*-----)?"
        ),
        _hide_all,
        hints=("private key",),
    ),
    PatternFamily(
        "URL user info",
        # scheme://user:password@host -- the password runs to the LAST @ before the next
        # whitespace or the next "://": a raw @ or / in it (never percent-encoded by the
        # person who wrote the URL) does not end it. SQLAlchemy's URL parser reads a
        # password to the last @ too.
        re.compile(
            r"(?<![A-Za-z0-9+.\-])(?P<lead>[A-Za-z][A-Za-z0-9+.\-]*+://[^\s:/@]*+:)"
            r"(?P<value>(?:[^\s:]|:(?!//))*)@"
        ),
        lambda m: f"{m['lead']}{REDACTED}@",
        hints=("://",),
    ),
    PatternFamily(
        "authorization header",
        # Authorization: Basic dXNlcjpwYXNz -> Authorization: Basic ***. A value that does
        # not start with a one-token scheme (Digest's or AWS4's parameters, a scheme we do
        # not know) is hidden to the end of its line.
        re.compile(
            rf"{_ID_START}(?P<lead>(?={_ID}*?authorization){_ID}++{_NOT_A_CLASS}{_SEPARATOR})"
            rf"(?P<value>{_QUOTED}|{_ONE_TOKEN_SCHEMES}[ \t]+{_UNQUOTED}|[^\r\n]+)",
            re.IGNORECASE,
        ),
        _hide_authorization,
        hints=("authorization",),
    ),
    PatternFamily(
        "bearer token",
        # Anywhere in text, not only after "Authorization:" (a header echoed in prose).
        re.compile(rf"(?<![\w.\-])(?P<lead>bearer[ \t]+)(?P<value>{_UNQUOTED})", re.IGNORECASE),
        _hide_value,
        hints=("bearer",),
    ),
    PatternFamily(
        "signed URL parameter",
        # Pre-signed URLs: X-Amz-Signature=, X-Goog-Signature=, Azure SAS sig=. (The
        # credential and security token parameters name a secret word, so the next family
        # hides them.) Only with "=": "signature: valid" is prose.
        re.compile(
            rf"{_ID_START}(?P<lead>(?:sig|(?={_ID}*?signature){_ID}++)=)"
            r"(?P<value>[^\s\"'&#,;}]+)",
            re.IGNORECASE,
        ),
        _hide_value,
        hints=("sig",),
    ),
    PatternFamily(
        "secret key and value",
        # key=value, key: value, "key": "value", key => 'value', where the key holds a
        # secret word anywhere (AWS_SECRET_ACCESS_KEY, PGPASSWORD, id_token, client-secret).
        re.compile(
            rf"{_ID_START}(?P<lead>"
            rf"(?={_ID}*?(?:{'|'.join(_SECRET_KEY_WORDS)}))"
            rf"{_ID}++{_NOT_A_CLASS}{_SEPARATOR})"
            rf"(?P<value>{_QUOTED}|{_UNQUOTED})",
            re.IGNORECASE,
        ),
        _hide_value,
        hints=_SECRET_KEY_WORDS,
    ),
    PatternFamily(
        "well-known token shape",
        # Tokens recognisable on their own: AWS access key ids, JWTs, GitHub tokens.
        re.compile(
            r"(?<![A-Za-z0-9_\-])(?:"
            r"(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA|ASCA)[A-Z0-9]{16}"
            r"(?![A-Za-z0-9])"
            r"|eyJ[A-Za-z0-9_\-]*+\.eyJ[A-Za-z0-9_\-]*+\.[A-Za-z0-9_\-]*+"
            r"|gh[pousr]_[A-Za-z0-9]{20,}+"
            r"|github_pat_[A-Za-z0-9_]{20,}+"
            r")"
        ),
        _hide_all,
    ),
)


def scrub(text: str) -> str:
    """``text`` with every credential the :data:`PATTERN_FAMILIES` know replaced by
    :data:`REDACTED`: URL passwords, authorization headers, bearer tokens, signed-URL
    signatures, ``password=``/``"api_key": "..."``-style values, well-known token shapes.

    Errs towards hiding: a value after a secret-looking key goes even when it is not a
    credential. Words alone ("password reset failed") are kept."""
    lowered = text.lower()
    for family in PATTERN_FAMILIES:
        if family.hints and not any(hint in lowered for hint in family.hints):
            continue
        scrubbed = family.pattern.sub(family.replace, text)
        if scrubbed is not text:  # re returns its input when nothing matched
            text, lowered = scrubbed, scrubbed.lower()
    return text


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
