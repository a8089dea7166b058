"""Log output for the worker: credentials scrubbed from every line, JSON on request.

Celery logs a failing task as "Task ... raised unexpected: <exception>" with the raw
exception text and traceback, so a connection URL with its password would land in the
logs even though the evidence stored on the run is scrubbed. :class:`ScrubFilter` sits on
the handlers (a filter on a logger does not see records propagated from child loggers)
and rewrites the message, the formatted traceback, the stack and every ``extra=`` field
before any formatter sees them. Celery's failure line carries the raw exception repr and
traceback a second time, in ``extra={"data": ...}``, which a JSON line prints whole; so
:class:`JsonFormatter` scrubs every value it writes as well, whether or not the filter ran.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from worker.lifecycle.evidence import REDACTED, is_secret_name, scrub

# Attributes every LogRecord has; anything else was passed through ``extra=``.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
    | {"message", "asctime", "taskName"}
)


#: Past this depth a value is written as its (scrubbed) ``str``: a self-referencing
#: structure must end, and nobody reads a log field nested deeper than this.
_MAX_DEPTH = 8


def scrub_value(value: Any, _depth: int = 0) -> Any:
    """``value`` with every string in it scrubbed, at any depth of dicts, lists and tuples.

    A value stored under a secret-looking name (``{"password": "hunter2"}``) is hidden
    whole: the text alone does not say it is a credential. Anything that is not a plain
    JSON value becomes its ``str`` (an exception's text holds what its repr holds), scrubbed.
    """
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return scrub(value)
    if _depth < _MAX_DEPTH:
        if isinstance(value, Mapping):
            return {scrub(str(k)): _scrub_field(str(k), v, _depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            items = [scrub_value(item, _depth + 1) for item in value]
            return tuple(items) if isinstance(value, tuple) else items
    return scrub(str(value))


def _scrub_field(name: str, value: Any, depth: int = 0) -> Any:
    if value is not None and is_secret_name(name):
        return REDACTED
    return scrub_value(value, depth)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD_ATTRS and not key.startswith("_")
    }


class ScrubFilter(logging.Filter):
    """Hide credentials in a record's message, traceback, stack and ``extra=`` fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not lose the record
            message = str(record.msg)
        record.msg = scrub(message)
        record.args = None
        if record.exc_info and record.exc_info[0] is not None:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = scrub(text)
            # The formatter would re-render the raw exception from exc_info otherwise.
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        # A text format may print an extra ("%(data)s"); replace, never mutate: the
        # caller still owns the objects it passed.
        for key, value in _extras(record).items():
            setattr(record, key, _scrub_field(key, value))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the ``extra=`` fields, the
    exception and the stack -- every value scrubbed."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": scrub(record.getMessage()),
            "process": record.process,
        }
        for key, value in _extras(record).items():
            document[key] = _scrub_field(key, value)
        if record.exc_info and record.exc_info[0] is not None:
            document["exception"] = scrub(self.formatException(record.exc_info))
        elif record.exc_text:
            document["exception"] = scrub(record.exc_text)
        if record.stack_info:
            document["stack"] = scrub(self.formatStack(record.stack_info))
        # scrub_value leaves only JSON values; the default is a safety net, because a
        # value json cannot encode would cost the whole record.
        return json.dumps(document, default=lambda value: scrub(str(value)))


def configure_handlers(logger: logging.Logger, *, log_format: str) -> None:
    """Add the scrub filter (and the JSON formatter) to ``logger``'s handlers."""
    for handler in logger.handlers:
        if not any(isinstance(f, ScrubFilter) for f in handler.filters):
            handler.addFilter(ScrubFilter())
        if log_format == "json":
            handler.setFormatter(JsonFormatter())


def configure_root(*, log_format: str, level: str = "INFO") -> None:
    """Logging for runwarden's own processes (``up``, ``demo``), outside Celery."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s: %(levelname)s/%(name)s] %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    configure_handlers(root, log_format=log_format)
