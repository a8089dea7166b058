"""The PostgreSQL pass walks the active-scan index in its own order and stops at the batch
size, whatever the ties in ``created_at`` (runs bulk-created in one transaction share it).

Asserted on the plan, not on time: with sorting made as costly as the planner allows, a
scan whose order the index cannot give still has to sort every stale run left -- a Sort
(or Incremental Sort) keyed on ``created_at`` -- on every pass of a drain.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text

from models import utcnow
from tests.factories import seed_tenancy
from worker.db import build_engine
from worker.lifecycle.policy import LifecyclePolicy, TypePolicy
from worker.lifecycle.reconciler.options import ReconcileOptions
from worker.lifecycle.reconciler.passes import PassPlan, pass_parameters
from worker.lifecycle.sql import query

pytestmark = pytest.mark.postgres

POLICY = LifecyclePolicy(
    batch_limit=50,
    types=(
        TypePolicy("inventory.sync", queued_stale_after_seconds=60, running_stale_after_seconds=60),
    ),
)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


@pytest.fixture
def tied_backlog(pg_url: str) -> Iterator[Engine]:
    engine = build_engine(pg_url)
    ids = seed_tenancy(engine)
    with engine.begin() as conn:
        # One transaction, one now(): 2,000 stale runs that share their creation time.
        conn.execute(
            text(
                "INSERT INTO operation_runs (workspace_id, type, status, outcome, created_at,"
                " updated_at, started_at) SELECT :workspace_id, 'inventory.sync', 'running',"
                " 'pending', now() - interval '2 hours', now(), now() - interval '2 hours'"
                " FROM generate_series(1, 2000)"
            ),
            {"workspace_id": ids["workspace_id"]},
        )
        conn.execute(text("ANALYZE operation_runs"))
    yield engine
    engine.dispose()


def test_pass_plan__tied_creation_times_need_no_sort(tied_backlog: Engine) -> None:
    now = utcnow()
    plan = PassPlan(
        options=ReconcileOptions(dry_run=True, source="test"),
        types=("inventory.sync",),
        limit=50,
    )
    params = pass_parameters(POLICY, plan, now)
    explain = text("EXPLAIN (FORMAT JSON) " + query("postgresql", "reconcile_pass").sql)
    with tied_backlog.connect() as conn:
        conn.execute(text("SET enable_sort = off"))
        conn.execute(text("SET enable_incremental_sort = off"))
        conn.execute(text("SET enable_seqscan = off"))
        (document,) = conn.execute(explain, params).one()
    plan = (document if isinstance(document, list) else json.loads(document))[0]["Plan"]
    nodes = list(_nodes(plan))
    sorts_on_runs = [
        node
        for node in nodes
        if "Sort" in node["Node Type"] and any("created_at" in k for k in node.get("Sort Key", []))
    ]
    assert sorts_on_runs == [], [n["Sort Key"] for n in sorts_on_runs]
    scans = [n.get("Index Name") for n in nodes if n.get("Relation Name") == "operation_runs"]
    assert "ix_operation_runs_active_scan" in scans
