"""The worker's log output: credentials never reach a handler, JSON when asked."""

from __future__ import annotations

import io
import json
import logging

from worker.logs import JsonFormatter, ScrubFilter, configure_handlers


def _logger(stream: io.StringIO, *, log_format: str) -> logging.Logger:
    logger = logging.getLogger(f"test.worker.logs.{log_format}")
    logger.handlers.clear()
    logger.propagate = False
    logger.addHandler(logging.StreamHandler(stream))
    logger.setLevel(logging.INFO)
    configure_handlers(logger, log_format=log_format)
    return logger


def test_scrub_filter__celery_raised_unexpected_line__password_and_token_hidden() -> None:
    stream = io.StringIO()
    logger = _logger(stream, log_format="text")
    try:
        raise ConnectionError("cannot reach postgresql://app:hunter2@db/x token=abc123")
    except ConnectionError as exc:
        logger.error(
            "Task %(name)s[%(id)s] raised unexpected: %(exc)s",
            {"name": "operations.x", "id": "1", "exc": repr(exc)},
            exc_info=True,
        )

    text = stream.getvalue()
    assert "raised unexpected" in text
    assert "ConnectionError" in text  # the traceback is kept, scrubbed
    assert "hunter2" not in text
    assert "abc123" not in text
    assert "postgresql://app:***@db/x" in text


def test_json_formatter__one_object_per_line_with_extra_fields() -> None:
    stream = io.StringIO()
    logger = _logger(stream, log_format="json")

    logger.info(
        "reconcile tick: reconciled=%d", 2, extra={"operation_run_id": 7, "source": "bridge"}
    )

    [line] = stream.getvalue().splitlines()
    document = json.loads(line)
    assert document["message"] == "reconcile tick: reconciled=2"
    assert document["level"] == "INFO"
    assert (document["operation_run_id"], document["source"]) == (7, "bridge")


def test_configure_handlers__twice__one_filter() -> None:
    stream = io.StringIO()
    logger = _logger(stream, log_format="text")
    configure_handlers(logger, log_format="text")
    assert sum(isinstance(f, ScrubFilter) for f in logger.handlers[0].filters) == 1
    assert not isinstance(logger.handlers[0].formatter, JsonFormatter)
