"""Every reason a run can be ended for, with its outcome and default message."""

from __future__ import annotations

from enum import StrEnum

from models import RunOutcome


class ReasonCode(StrEnum):
    STALE_QUEUED = "run.stale_queued"
    STALE_RUNNING = "run.stale_running"
    JOB_FAILED = "run.job_failed"
    WORKER_LOST = "run.worker_lost"
    TIME_LIMIT_EXCEEDED = "run.time_limit_exceeded"
    EXPIRED = "run.expired"
    TASK_UNKNOWN = "run.task_unknown"
    DISPATCH_FAILED = "run.dispatch_failed"
    CANCELLED = "run.cancelled"
    EXECUTION_RUN_TERMINAL = "execution.run_terminal"
    EXECUTION_TENANT_MISSING = "execution.tenant_missing"
    EXECUTION_TENANT_INACTIVE = "execution.tenant_inactive"
    EXECUTION_TENANT_WORKSPACE_MISMATCH = "execution.tenant_workspace_mismatch"
    EXECUTION_USER_INACTIVE = "execution.user_inactive"
    EXECUTION_TYPE_NOT_COVERED = "execution.type_not_covered"

    @property
    def default_message(self) -> str:
        return _MESSAGES[self]

    @property
    def outcome(self) -> RunOutcome:
        if self is ReasonCode.CANCELLED:
            return RunOutcome.CANCELLED
        if self.value.startswith("execution."):
            return RunOutcome.BLOCKED
        return RunOutcome.FAILED

    @property
    def audit_action(self) -> str:
        return {
            RunOutcome.CANCELLED: "operation_run.cancelled",
            RunOutcome.BLOCKED: "operation_run.blocked",
        }.get(self.outcome, "operation_run.force_failed")


_MESSAGES: dict[ReasonCode, str] = {
    ReasonCode.STALE_QUEUED: "Run was queued but never started within its lifecycle window.",
    ReasonCode.STALE_RUNNING: "Run started but did not finish within its lifecycle window.",
    ReasonCode.JOB_FAILED: "The task raised an error and exhausted its retries.",
    ReasonCode.WORKER_LOST: "The worker process running the task died before it finished.",
    ReasonCode.TIME_LIMIT_EXCEEDED: "The task exceeded its hard time limit and was killed.",
    ReasonCode.EXPIRED: "The task message expired before a worker started it.",
    ReasonCode.TASK_UNKNOWN: "No worker has a task registered under this operation's name.",
    ReasonCode.DISPATCH_FAILED: "The task could not be published to the message broker.",
    ReasonCode.CANCELLED: "The task was revoked and terminated.",
    ReasonCode.EXECUTION_RUN_TERMINAL: "The run had already ended before its task started.",
    ReasonCode.EXECUTION_TENANT_MISSING: "The run's tenant no longer exists.",
    ReasonCode.EXECUTION_TENANT_INACTIVE: "The run's tenant is not active.",
    ReasonCode.EXECUTION_TENANT_WORKSPACE_MISMATCH: (
        "The run's tenant does not belong to the run's workspace."
    ),
    ReasonCode.EXECUTION_USER_INACTIVE: "The user who started the run is not active.",
    ReasonCode.EXECUTION_TYPE_NOT_COVERED: "The run's type is not covered by the lifecycle policy.",
}


def default_message(reason_code: str) -> str:
    """The default message of a known reason code; the code itself otherwise."""
    try:
        return ReasonCode(reason_code).default_message
    except ValueError:
        return reason_code
