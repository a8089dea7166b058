"""``/metrics``: the values equal the database's counts, forced transitions are read
incrementally from the audit log, and deploy/ uses only metrics that exist."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import timedelta
from pathlib import Path

import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from models import AuditLog, OperationRun
from tests.factories import make_run
from tests.web.conftest import Seeded
from worker.db import read_session, write_session
from worker.lifecycle.clock import database_now
from worker.lifecycle.freshness import OperationRunFreshnessState
from worker.lifecycle.ticks import RECONCILE_TICK, record_tick
from worker.lifecycle.transitions import force_fail_non_terminal_run
from worker.web.metrics import METRIC_NAMES

ROOT = Path(__file__).resolve().parents[2]
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def _scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def _db_counts(
    seeded: Seeded,
) -> tuple[Counter[tuple[str, str]], Counter[tuple[str, str]], Counter[tuple[str, str]]]:
    with read_session(seeded.engine) as session:
        now = database_now(session)
        runs = session.scalars(
            select(OperationRun).where(OperationRun.status.in_(("queued", "running")))
        ).all()
        active = Counter((r.type, r.status) for r in runs)
        stale = Counter(
            (r.type, r.status)
            for r in runs
            if OperationRunFreshnessState.for_run(r, seeded.policy, now).is_likely_stale()
        )
        forced = Counter(
            (row.action, row.metadata_["reason_code"])
            for row in session.scalars(select(AuditLog)).all()
        )
    return active, stale, forced


def _by(samples: Samples, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(dict(labels)[k] for k in keys): value
        for labels, value in samples.get(name, {}).items()
    }


def test_metrics__equal_the_database_counts_after_a_reconcile(
    client: TestClient, seeded: Seeded
) -> None:
    before = _scrape(client)
    active, stale, forced = _db_counts(seeded)
    assert _by(before, "runwarden_runs_active", "type", "status") == dict(active)
    assert {
        k: v for k, v in _by(before, "runwarden_runs_stale", "type", "status").items() if v
    } == dict(stale)
    assert _by(before, "runwarden_forced_transitions_total", "action", "reason") == dict(forced)
    assert sum(stale.values()) == 2

    assert client.post("/api/reconcile", json={}).json()["reconciled"] == 2
    after = _scrape(client)
    active, stale, forced = _db_counts(seeded)
    assert _by(after, "runwarden_runs_active", "type", "status") == dict(active)
    assert sum(_by(after, "runwarden_runs_stale", "type", "status").values()) == 0
    assert _by(after, "runwarden_forced_transitions_total", "action", "reason") == dict(forced)
    assert dict(forced) == {
        ("operation_run.force_failed", "run.job_failed"): 1,
        ("operation_run.force_failed", "run.stale_queued"): 1,
        ("operation_run.force_failed", "run.stale_running"): 1,
    }
    # Uncovered types count as active: every non-terminal row does.
    assert ("other.thing", "queued") in active


def test_metrics__forced_transitions_grow_by_one_per_new_audit_row(
    client: TestClient, seeded: Seeded
) -> None:
    key = ("operation_run.force_failed", "run.worker_lost")
    first = _by(_scrape(client), "runwarden_forced_transitions_total", "action", "reason")
    assert key not in first
    for expected in (1, 2):
        run_id = make_run(seeded.engine, workspace_id=seeded.workspace_id, status="running")
        with write_session(seeded.engine) as session:
            assert force_fail_non_terminal_run(
                session, run_id, reason_code="run.worker_lost", source="bridge", record_key="bridge"
            )
        totals = _by(_scrape(client), "runwarden_forced_transitions_total", "action", "reason")
        assert totals[key] == expected
        # The rows counted before are not counted again.
        assert totals[("operation_run.force_failed", "run.job_failed")] == 1


def test_metrics__forced_rows_older_than_the_settle_window_are_counted_in_sql_once(
    client: TestClient, seeded: Seeded
) -> None:
    # An audit row recorded an hour ago: the first scrape counts it in its starting sums.
    run_id = make_run(seeded.engine, workspace_id=seeded.workspace_id, status="running")
    with write_session(seeded.engine) as session:
        an_hour_ago = database_now(session) - timedelta(hours=1)
        force_fail_non_terminal_run(
            session,
            run_id,
            reason_code="run.expired",
            source="bridge",
            record_key="bridge",
            now=an_hour_ago,
        )
    for _ in range(2):
        totals = _by(_scrape(client), "runwarden_forced_transitions_total", "action", "reason")
        assert totals[("operation_run.force_failed", "run.expired")] == 1
        assert totals[("operation_run.force_failed", "run.job_failed")] == 1


def test_metrics__last_tick_is_the_recorded_database_time(
    client: TestClient, seeded: Seeded
) -> None:
    assert "runwarden_reconcile_last_tick_timestamp_seconds" not in _scrape(client)
    with write_session(seeded.engine) as session:
        record_tick(
            session, RECONCILE_TICK, passes=1, candidates=0, reconciled=0, skipped=0, duration_ms=3
        )
    with read_session(seeded.engine) as session:
        from models import Tick

        tick = session.get(Tick, RECONCILE_TICK)
        assert tick is not None
        expected = tick.ticked_at.timestamp()
    samples = _scrape(client)
    assert samples["runwarden_reconcile_last_tick_timestamp_seconds"][()] == expected
    page = client.get("/").text
    assert 'id="last-tick">' in page and "never" not in page.split('id="last-tick">')[1][:20]


def test_metrics__no_label_carries_a_tenant_or_a_run_id(client: TestClient) -> None:
    samples = _scrape(client)
    labels = {name for series in samples.values() for key in series for name, _ in key}
    assert labels <= {"type", "status", "action", "reason"}


def _metrics_in(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in re.findall(r"\brunwarden_[a-z_]+", expr)}


def _alert_metrics() -> dict[str, set[str]]:
    """Each alert rule's metrics, by the alert's name."""
    rules = yaml.safe_load((ROOT / "deploy/prometheus/runwarden-alerts.yml").read_text())
    return {
        rule["alert"]: _metrics_in([rule["expr"]])
        for group in rules["groups"]
        for rule in group["rules"]
    }


def _dashboard_metrics() -> dict[str, set[str]]:
    """Each dashboard panel's metrics, by the panel's title."""
    dashboard = json.loads((ROOT / "deploy/grafana/runwarden-dashboard.json").read_text())
    return {
        panel["title"]: _metrics_in([t["expr"] for t in panel["targets"]])
        for panel in dashboard["panels"]
    }


def test_deploy__alerts_and_dashboard_use_only_metrics_that_exist(
    client: TestClient, seeded: Seeded
) -> None:
    with write_session(seeded.engine) as session:
        record_tick(
            session, RECONCILE_TICK, passes=1, candidates=0, reconciled=0, skipped=0, duration_ms=1
        )
    alerts, panels = _alert_metrics(), _dashboard_metrics()
    referenced = set().union(*alerts.values(), *panels.values())
    assert referenced, "no metric found in deploy/"
    assert referenced <= set(METRIC_NAMES)
    exposed = set(_scrape(client))
    assert referenced <= exposed, referenced - exposed
    # The dashboard charts every metric; the contract's alerts are there.
    assert set().union(*panels.values()) == set(METRIC_NAMES)
    assert {
        "RunwardenStaleRuns": {"runwarden_runs_stale"},
        "RunwardenNoReconcileTick": {"runwarden_reconcile_last_tick_timestamp_seconds"},
        "RunwardenForcedFailureRate": {"runwarden_forced_transitions_total"},
        "RunwardenNoWorkerAlive": {"runwarden_workers_alive"},
    }.items() <= alerts.items()
    assert panels["Workers alive"] == {"runwarden_workers_alive"}
