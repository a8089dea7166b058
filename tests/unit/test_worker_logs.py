"""The worker's log output: credentials never reach a handler, JSON when asked."""

from __future__ import annotations

import io
import json
import logging
import sys
import traceback
from typing import Any

from celery import Celery

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


# -- item 5: nothing reaches a JSON line unscrubbed ---------------------------------------

_SECRETS = ("hunter2", "TOK123")


def _failing_task_context() -> tuple[dict[str, Any], Any]:
    """What Celery's ``TraceInfo._log_error`` passes: the raw repr and traceback."""
    try:
        raise ConnectionError("cannot reach https://u:hunter2@h/ token=TOK123")
    except ConnectionError as exc:
        context = {
            "hostname": "worker@host",
            "id": "1",
            "name": "operations.x",
            "exc": repr(exc),
            "traceback": "".join(traceback.format_exception(exc)),
            "args": "()",
            "kwargs": "{}",
            "description": "raised unexpected",
            "internal": False,
        }
        return context, sys.exc_info()


def _assert_no_secret(text: str) -> None:
    for secret in _SECRETS:
        assert secret not in text, text


def test_json_formatter__celery_raised_unexpected_with_data_extra__no_secret_anywhere() -> None:
    stream = io.StringIO()
    logger = _logger(stream, log_format="json")
    context, exc_info = _failing_task_context()

    # The shape of celery/app/trace.py's log call for a failing task.
    logger.log(
        logging.ERROR,
        "Task %(name)s[%(id)s] %(description)s: %(exc)s",
        context,
        exc_info=exc_info,
        extra={"data": context},
    )

    [line] = stream.getvalue().splitlines()
    _assert_no_secret(line)
    document = json.loads(line)
    assert "raised unexpected" in document["message"]
    assert "https://u:***@h/" in document["data"]["exc"]
    assert "ConnectionError" in document["data"]["traceback"]
    assert "ConnectionError" in document["exception"]


def test_json_formatter__nested_extras_exception_objects_and_stack__all_scrubbed() -> None:
    stream = io.StringIO()
    logger = _logger(stream, log_format="json")
    error = ConnectionError("https://u:hunter2@h/")

    logger.info(
        "checked",
        extra={
            "deep": {"list": ["token=TOK123", ("x", {"url": "https://u:hunter2@h/"})]},
            "error": error,  # not JSON: rendered with str(), which holds the URL
            "settings": {"password": "hunter2", "api_token": "TOK123", "user": "bob"},
        },
        stack_info=True,
    )

    [line] = stream.getvalue().splitlines()
    _assert_no_secret(line)
    document = json.loads(line)
    assert document["settings"]["user"] == "bob"  # a non-secret name keeps its value
    assert "stack" in document


def test_json_formatter__without_the_filter__still_scrubs() -> None:
    # A handler configured by hand (formatter only) must not leak either.
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.worker.logs.formatter_only")
    logger.handlers.clear()
    logger.propagate = False
    logger.addHandler(handler)
    context, exc_info = _failing_task_context()

    logger.error("raised: %(exc)s", context, exc_info=exc_info, extra={"data": context})

    _assert_no_secret(stream.getvalue())


def test_text_format__celery_data_extra_in_the_format_string__scrubbed() -> None:
    # A text format that prints an extra (here Celery's ``data``) is scrubbed too.
    stream = io.StringIO()
    logger = _logger(stream, log_format="text")
    logger.handlers[0].setFormatter(logging.Formatter("%(message)s %(data)s"))
    context, exc_info = _failing_task_context()

    logger.error("raised: %(exc)s", context, exc_info=exc_info, extra={"data": context})

    text = stream.getvalue()
    _assert_no_secret(text)
    assert "raised: ConnectionError" in text


def test_json_formatter__real_celery_task_failure__no_secret_anywhere() -> None:
    # The real log call: an eagerly applied task that raises goes through Celery's
    # TraceInfo._log_error, which logs on "celery.app.trace" with extra={"data": ...}.
    app = Celery("test-logs", set_as_current=False)

    @app.task(name="test.logs.boom")
    def boom() -> None:
        raise ConnectionError("cannot reach https://u:hunter2@h/ token=TOK123")

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    trace_logger = logging.getLogger("celery.app.trace")
    saved = (trace_logger.level, trace_logger.propagate)
    trace_logger.addHandler(handler)
    trace_logger.setLevel(logging.INFO)
    trace_logger.propagate = False
    configure_handlers(trace_logger, log_format="json")
    try:
        assert boom.apply().state == "FAILURE"
    finally:
        trace_logger.removeHandler(handler)
        trace_logger.setLevel(saved[0])
        trace_logger.propagate = saved[1]

    [line] = [line for line in stream.getvalue().splitlines() if "raised unexpected" in line]
    _assert_no_secret(line)
    document = json.loads(line)
    assert "ConnectionError" in document["data"]["traceback"]
