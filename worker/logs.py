"""Log output for the worker: credentials scrubbed from every line, JSON on request.

Celery logs a failing task as "Task ... raised unexpected: <exception>" with the raw
exception text and traceback, so a connection URL with its password would land in the
logs even though the evidence stored on the run is scrubbed. :class:`ScrubFilter` sits on
the handlers (a filter on a logger does not see records propagated from child loggers)
and rewrites the message and the formatted traceback before any formatter sees them.
"""

from __future__ import annotations

import json
import logging
import traceback
from datetime import UTC, datetime
from typing import Any

from worker.lifecycle.evidence import scrub

# Attributes every LogRecord has; anything else was passed through ``extra=``.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
    | {"message", "asctime", "taskName"}
)


class ScrubFilter(logging.Filter):
    """Hide URL passwords and ``password=``/``token=`` values in a record's text."""

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
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                document[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        return json.dumps(document, default=str)


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
