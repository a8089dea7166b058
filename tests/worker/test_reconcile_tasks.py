"""The reconcile tasks in a real worker: the on-demand contract and the locked beat tick."""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories import make_run, seed_tenancy
from tests.worker.conftest import LiveWorker
from worker.celery_app import RECONCILE_TASK, SCHEDULED_RECONCILE_TASK
from worker.locks import RECONCILE_LOCK_KEY, RedisLock, redis_client

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture(scope="module", params=["postgresql"])
def worker_backend(request: pytest.FixtureRequest) -> str:
    # The tasks are thin shells over the reconciler, which has its own tests on both
    # backends; one backend keeps this module's worker start to one.
    return str(request.param)


def _call(name: str, **kwargs: Any) -> Any:
    from worker.celery_app import app

    return app.send_task(name, kwargs=kwargs).get(timeout=30)


def _stale_run(live: LiveWorker) -> tuple[int, int]:
    tenancy = seed_tenancy(live.engine)
    run_id = make_run(
        live.engine, workspace_id=tenancy["workspace_id"], type="test.stale", age_seconds=120
    )
    return tenancy["workspace_id"], run_id


def test_on_demand__dry_run__returns_contract_result_and_writes_nothing(
    live: LiveWorker,
) -> None:
    workspace_id, run_id = _stale_run(live)

    result = _call(RECONCILE_TASK, workspace_ids=[workspace_id], dry_run=True)

    assert set(result) == {"candidates", "reconciled", "skipped", "changes"}
    assert (result["candidates"], result["reconciled"]) == (1, 0)
    [change] = result["changes"]
    assert change["applied"] is False
    assert change["operation_run_id"] == run_id
    assert change["reason_code"] == "run.stale_queued"
    assert change["before"]["status"] == "queued"
    assert live.run(run_id).status == "queued"
    assert live.audit_rows(run_id) == []


def test_on_demand__applies__run_failed_with_on_demand_source(live: LiveWorker) -> None:
    workspace_id, run_id = _stale_run(live)

    result = _call(RECONCILE_TASK, types=["test.stale"], workspace_ids=[workspace_id], limit=10)

    assert (result["candidates"], result["reconciled"], result["skipped"]) == (1, 1, 0)
    assert result["changes"][0]["applied"] is True
    run = live.run(run_id)
    assert (run.status, run.outcome) == ("completed", "failed")
    assert run.context["reconciliation"]["source"] == "on_demand_reconciler"
    [audit] = live.audit_rows(run_id)
    assert audit.metadata_["source"] == "on_demand_reconciler"


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"limit": 0}, "limit"),
        ({"types": ["no.such.type"]}, "no.such.type"),
        ({"tenant_ids": ["x"]}, "tenant_ids"),
        ({"dry_run": "yes"}, "dry_run"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_on_demand__bad_kwargs__error_result_and_nothing_written(
    live: LiveWorker, kwargs: dict[str, Any], named: str
) -> None:
    workspace_id, run_id = _stale_run(live)
    audits_before = live.audit_count()

    result = _call(RECONCILE_TASK, workspace_ids=[workspace_id], **kwargs)

    assert set(result) == {"error"}
    assert result["error"]["type"] == "InvalidOptionsError"
    assert named in result["error"]["message"]
    assert live.run(run_id).status == "queued"
    assert live.audit_count() == audits_before


def test_tick__another_tick_holds_the_lock__does_nothing_until_released(
    live: LiveWorker,
) -> None:
    _, run_id = _stale_run(live)
    # The lock a tick in progress (on this or another beat replica's worker) would hold.
    other_tick = RedisLock(redis_client(live.broker_url), RECONCILE_LOCK_KEY, ttl_seconds=60)
    assert other_tick.acquire()
    try:
        assert _call(SCHEDULED_RECONCILE_TASK) == {"skipped_reason": "locked"}
        assert live.run(run_id).status == "queued"
    finally:
        assert other_tick.release()

    summary = _call(SCHEDULED_RECONCILE_TASK)

    assert run_id in summary["reconciled_run_ids"]
    assert summary["passes"] >= 1
    run = live.run(run_id)
    assert run.outcome == "failed"
    assert run.context["reconciliation"]["source"] == "scheduled_reconciler"
    live.wait_log("reconcile tick: passes=")
    # The tick released its lock: the next one may run.
    assert redis_client(live.broker_url).get(RECONCILE_LOCK_KEY) is None


def test_tick__two_ticks_at_once__never_reconcile_a_run_twice(live: LiveWorker) -> None:
    from worker.celery_app import app

    for _ in range(5):
        _stale_run(live)
    first = app.send_task(SCHEDULED_RECONCILE_TASK)
    second = app.send_task(SCHEDULED_RECONCILE_TASK)

    results = [first.get(timeout=30), second.get(timeout=30)]

    # Whatever the interleaving, no run is ever reconciled by both ticks.
    reconciled = [r.get("reconciled_run_ids", []) for r in results]
    assert not set(reconciled[0]) & set(reconciled[1])
    assert sum(len(ids) for ids in reconciled) >= 5


def test_tick__records_when_it_finished_on_the_database_clock(live: LiveWorker) -> None:
    from models import Tick
    from worker.db import read_session
    from worker.lifecycle.clock import database_now

    _stale_run(live)
    with read_session(live.engine) as session:
        before = database_now(session)

    summary = _call(SCHEDULED_RECONCILE_TASK)

    with read_session(live.engine) as session:
        tick = session.get(Tick, "reconcile")
        after = database_now(session)
    assert tick is not None
    assert before <= tick.ticked_at <= after
    assert (tick.passes, tick.reconciled) == (summary["passes"], summary["reconciled"])
