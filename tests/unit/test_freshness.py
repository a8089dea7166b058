from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from worker.lifecycle.freshness import OperationRunFreshnessState, RunSnapshot, reference_time
from worker.lifecycle.policy import LifecyclePolicy, TypePolicy

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
POLICY = LifecyclePolicy(
    types=(
        TypePolicy(
            "inventory.sync", queued_stale_after_seconds=600, running_stale_after_seconds=3600
        ),
    )
)
State = OperationRunFreshnessState


def _run(
    status: str = "queued",
    *,
    type: str = "inventory.sync",
    outcome: str = "pending",
    created_ago: float = 0,
    started_ago: float | None = None,
    heartbeat_ago: float | None = None,
    context: dict[str, Any] | None = None,
) -> RunSnapshot:
    def ago(seconds: float | None) -> datetime | None:
        return None if seconds is None else NOW - timedelta(seconds=seconds)

    return RunSnapshot(
        id=1,
        type=type,
        status=status,
        outcome=outcome,
        workspace_id=1,
        tenant_id=None,
        user_id=None,
        created_at=NOW - timedelta(seconds=created_ago),
        started_at=ago(started_ago),
        last_heartbeat_at=ago(heartbeat_ago),
        context=context or {},
    )


@pytest.mark.parametrize(
    ("run", "expected"),
    [
        (_run("completed", outcome="succeeded"), State.TERMINAL_NORMAL),
        (_run("completed", outcome="failed"), State.TERMINAL_NORMAL),
        (
            _run("completed", outcome="failed", context={"reconciliation": {"x": 1}}),
            State.RECONCILED_FAILED,
        ),
        (_run("queued", type="uncovered.type", created_ago=10**6), State.UNKNOWN),
        (_run("queued", created_ago=600), State.FRESH),  # exactly at the threshold: not past it
        (_run("queued", created_ago=601), State.LIKELY_STALE),
        (_run("running", created_ago=9000, started_ago=3000), State.FRESH),
        (_run("running", created_ago=9000, started_ago=3601), State.LIKELY_STALE),
        (_run("running", created_ago=3601), State.LIKELY_STALE),  # no start: creation counts
    ],
)
def test_freshness__state_for_run(run: RunSnapshot, expected: State) -> None:
    assert State.for_run(run, POLICY, NOW) is expected


def test_freshness__recent_heartbeat_keeps_an_old_running_run_fresh() -> None:
    run = _run("running", created_ago=90_000, started_ago=80_000, heartbeat_ago=30)
    assert State.for_run(run, POLICY, NOW) is State.FRESH
    assert reference_time(run) == NOW - timedelta(seconds=30)


def test_freshness__old_heartbeat_makes_a_running_run_stale() -> None:
    run = _run("running", created_ago=90_000, started_ago=60, heartbeat_ago=3700)
    # The heartbeat is the reference even when the start looks recent.
    assert State.for_run(run, POLICY, NOW) is State.LIKELY_STALE


def test_freshness__heartbeat_does_not_rescue_a_queued_run() -> None:
    run = _run("queued", created_ago=700, heartbeat_ago=1)
    assert State.for_run(run, POLICY, NOW).is_likely_stale()


def test_freshness__only_likely_stale_is_likely_stale() -> None:
    assert [s for s in State if s.is_likely_stale()] == [State.LIKELY_STALE]
    assert {s.value for s in State} == {
        "terminal_normal",
        "reconciled_failed",
        "unknown",
        "likely_stale",
        "fresh",
    }
