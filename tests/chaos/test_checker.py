"""The chaos checker catches what it is there to catch: each rule on a hand-made history
that breaks it, beside the same history kept honest."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from chaos.checker import Bounds, Checker, Report

T0 = 1_800_000_000.0
SECRET = "s3cr3t-for-the-checker"
BOUNDS = Bounds(
    interval=2,
    lost_after=5,
    queued={"chaos.quick": 45, "chaos.recover": 45},
    running={"chaos.quick": 20, "chaos.recover": 20},
)


def _ts(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _run(run_id: int = 1, **fields: Any) -> dict[str, Any]:
    row = {
        "id": run_id,
        "type": "chaos.quick",
        "status": "completed",
        "outcome": "succeeded",
        "attempts": 1,
        "celery_task_id": "task-1",
        "created_at": _ts(T0),
        "completed_at": _ts(T0 + 1.2),
        "context": {},
    }
    row.update(fields)
    return row


def _line(event: str, t: float, **fields: Any) -> dict[str, Any]:
    line = {"run": 1, "attempt": 1, "task_id": "task-1", "pid": 100, "event": event, "t": t}
    line.update(fields)
    return line


def _forced(reason: str, source: str = "reconciliation") -> dict[str, Any]:
    return {source: {"reason_code": reason, "source": "scheduled_reconciler"}}


def _audit(run_id: int = 1, action: str = "operation_run.force_failed") -> dict[str, Any]:
    return {"resource_id": str(run_id), "action": action, "metadata": {}}


def check(
    runs: list[dict[str, Any]],
    journal: list[dict[str, Any]],
    *,
    audit: list[dict[str, Any]] | None = None,
    events: list[dict[str, Any]] | None = None,
    texts: dict[str, str] | None = None,
) -> Report:
    return Checker(
        runs=runs,
        audit=audit or [],
        journal=journal,
        events=events or [],
        dispatched={run["id"]: {"fate": "succeed"} for run in runs},
        bounds=BOUNDS,
        secret=SECRET,
        texts=texts or {},
    ).check()


def rules(report: Report) -> list[str]:
    return sorted({v.rule for v in report.violations})


HONEST = [_line("start", T0 + 0.1), _line("end", T0 + 1.0, returned="succeeded")]


def test_checker__an_honest_success_passes() -> None:
    assert check([_run()], HONEST).ok


def test_checker__a_run_left_running_is_a_violation() -> None:
    report = check([_run(status="running", outcome="pending", completed_at=None)], HONEST[:1])
    assert "a" in rules(report)


def test_checker__success_recorded_without_a_successful_body() -> None:
    assert rules(check([_run()], HONEST[:1])) == ["b"]


def test_checker__a_successful_body_recorded_failed() -> None:
    failed = _run(outcome="failed", context=_forced("run.stale_running"))
    assert rules(check([failed], HONEST, audit=[_audit()])) == ["b"]


def test_checker__a_killed_body_may_end_worker_lost_but_not_job_failed() -> None:
    kill = {"kind": "fault", "fault": "child_kill", "t": T0 + 0.5, "pids": [100]}
    lost = _run(outcome="failed", context=_forced("run.worker_lost", "bridge"))
    assert check([lost], HONEST[:1], audit=[_audit()], events=[kill]).ok
    failed = _run(outcome="failed", context=_forced("run.job_failed", "bridge"))
    assert rules(check([failed], HONEST[:1], audit=[_audit()], events=[kill])) == ["b"]
    # Nobody killed it: a worker_lost is a false death.
    assert rules(check([lost], HONEST[:1], audit=[_audit()])) == ["b"]


def test_checker__two_executions_of_one_attempt() -> None:
    twice = [
        *HONEST,
        _line("start", T0 + 0.2, pid=101),
        _line("end", T0 + 0.9, pid=101, returned="succeeded"),
    ]
    assert "c" in rules(check([_run()], twice))


def test_checker__attempts_that_overlap() -> None:
    run = _run(attempts=2, celery_task_id="task-2")
    overlapping = [
        _line("start", T0 + 0.1),
        _line("start", T0 + 0.3, attempt=2, task_id="task-2", pid=101),
        _line("end", T0 + 0.5),
        _line("end", T0 + 1.0, attempt=2, task_id="task-2", pid=101, returned="succeeded"),
    ]
    assert rules(check([run], overlapping)) == ["c"]


def test_checker__a_body_started_after_its_run_ended() -> None:
    late = [_line("start", T0 + 2.0), _line("end", T0 + 2.5, returned="succeeded")]
    assert "c" in rules(check([_run()], late))


def test_checker__a_body_fenced_while_alive() -> None:
    fenced = [_line("start", T0 + 0.1), _line("end", T0 + 1.0, returned="succeeded", fenced=True)]
    failed = _run(outcome="failed", context=_forced("run.stale_running"))
    assert "c" in rules(check([failed], fenced, audit=[_audit()]))


def test_checker__audit_rows_one_per_forced_ending_none_for_a_completion() -> None:
    assert rules(check([_run()], HONEST, audit=[_audit()])) == ["d"]
    cancelled = _run(outcome="failed", context=_forced("run.stale_queued"))
    assert rules(check([cancelled], [])) == ["d"]
    assert check([cancelled], [], audit=[_audit()]).ok


def test_checker__the_secret_anywhere() -> None:
    leaked = _run(context={"note": f"token={SECRET}"})
    assert rules(check([leaked], HONEST)) == ["e"]
    assert rules(check([_run()], HONEST, texts={"worker.log": f"x\npassword={SECRET}\n"})) == ["e"]


def test_checker__terminal_long_after_its_bound() -> None:
    slow = _run(completed_at=_ts(T0 + 1.0 + 30))
    assert rules(check([slow], HONEST)) == ["f"]


def test_checker__a_body_killed_before_its_completion_could_be_written_is_indeterminate() -> None:
    lost = _run(outcome="failed", context=_forced("run.worker_lost"))
    # Killed 5 s after it returned, the database up all along: the completion had time.
    late_kill = {"kind": "fault", "fault": "worker_kill", "t": T0 + 6.0, "pids": [100]}
    assert rules(check([lost], HONEST, audit=[_audit()], events=[late_kill])) == ["b"]
    # The same kill while PostgreSQL was down: the completion was still being retried.
    outage = {"kind": "fault", "fault": "pg_outage", "started": T0 + 0.5, "t": T0 + 10.0}
    report = check([lost], HONEST, audit=[_audit()], events=[outage, late_kill])
    assert report.ok
    assert report.counts["indeterminate"] == 1
