"""The failed-job bridge's decisions, free of Celery and servers."""

from __future__ import annotations

import pytest
from billiard.exceptions import TimeLimitExceeded, WorkerLostError

from worker.lifecycle.reasons import ReasonCode
from worker.lifecycle.task_events import exception_evidence, reason_for_exception


class AppError(RuntimeError):
    pass


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (WorkerLostError("Worker exited prematurely: signal 9 (SIGKILL)."), ReasonCode.WORKER_LOST),
        (TimeLimitExceeded(2.0), ReasonCode.TIME_LIMIT_EXCEEDED),
        (AppError("boom"), ReasonCode.JOB_FAILED),
        (KeyError("x"), ReasonCode.JOB_FAILED),
    ],
)
def test_reason_for_exception(exc: BaseException, reason: ReasonCode) -> None:
    assert reason_for_exception(exc) is reason


def test_exception_evidence__scrubbed_then_truncated() -> None:
    message = "redis://:sekret@cache:6379/0 " + "x" * 5000
    evidence = exception_evidence(AppError(message))
    assert evidence["exception_type"] == "AppError"
    assert "sekret" not in evidence["exception_message"]
    assert len(evidence["exception_message"]) <= 1000
