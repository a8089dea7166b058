"""The JSON API: the CLI's objects, built by the same calls, and its validation messages."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from models import AuditLog, OperationRun
from tests.web.conftest import SECRET, Seeded
from worker.db import read_session
from worker.lifecycle.clock import database_now
from worker.lifecycle.listing import list_runs
from worker.lifecycle.reconciler import OperationLifecycleReconciler, ReconcileOptions


def _state(seeded: Seeded) -> tuple[dict[int, tuple[str, str]], int]:
    with read_session(seeded.engine) as session:
        rows = session.execute(select(OperationRun.id, OperationRun.status, OperationRun.outcome))
        audits = session.scalar(select(func.count()).select_from(AuditLog)) or 0
        return {r.id: (r.status, r.outcome) for r in rows}, audits


def test_api_runs__are_the_cli_objects_newest_first_with_reason_codes(
    client: TestClient, seeded: Seeded
) -> None:
    response = client.get("/api/runs")
    assert response.status_code == 200
    with read_session(seeded.engine) as session:
        expected = list_runs(session, seeded.policy, now=database_now(session))
    assert response.json() == expected
    reasons = {r["id"]: r["reason_code"] for r in response.json()}
    assert reasons[seeded.bridged] == "run.job_failed"
    assert reasons[seeded.succeeded] is None


def test_api_runs__filters_of_the_contract(client: TestClient, seeded: Seeded) -> None:
    def ids(**params: Any) -> list[int]:
        response = client.get("/api/runs", params=params)
        assert response.status_code == 200, response.text
        return [r["id"] for r in response.json()]

    assert ids(outcome="failed") == [seeded.bridged]
    assert ids(status="running") == [seeded.stale_running]
    assert ids(freshness="likely_stale") == [seeded.stale_running, seeded.stale_queued]
    assert ids(type="other.thing") == [seeded.uncovered]
    assert ids(tenant=seeded.tenant_id) == [seeded.bridged, seeded.fresh, seeded.stale_queued]
    assert ids(workspace=seeded.workspace_id + 1000) == []
    assert ids(reason="run.job_failed") == [seeded.bridged]
    assert client.post("/api/reconcile", json={}).status_code == 200
    assert ids(reason="run.stale_queued") == [seeded.stale_queued]
    assert ids(outcome="failed", type="backup.create") == [seeded.stale_running]


def test_api_runs__keyset_pages_cover_every_run_once_newest_first(
    client: TestClient, seeded: Seeded
) -> None:
    seen: list[int] = []
    url: str | None = "/api/runs?limit=2"
    while url:
        response = client.get(url)
        assert response.status_code == 200
        page = [r["id"] for r in response.json()]
        assert len(page) <= 2
        seen += page
        link = response.headers.get("link")
        url = link.split(";")[0].strip("<>") if link else None
    assert seen == sorted(
        [
            seeded.stale_queued,
            seeded.stale_running,
            seeded.fresh,
            seeded.succeeded,
            seeded.bridged,
            seeded.uncovered,
        ],
        reverse=True,
    )


def test_api_runs__bad_filters_are_422_naming_the_filter(client: TestClient) -> None:
    cases = {
        "status=done": "invalid value for status: 'done' is not one of",
        "outcome=exploded": "invalid value for outcome: 'exploded'",
        "freshness=stale": "invalid value for freshness",
        "tenant=abc": "invalid value for tenant: 'abc' is not an integer",
        "limit=0": "invalid value for limit: 0 is not in the range 1<=x<=500",
        "before=9223372036854775808": "invalid value for before",
    }
    for query, message in cases.items():
        response = client.get(f"/api/runs?{query}")
        assert response.status_code == 422, query
        assert response.json()["detail"].startswith(message), response.json()


def test_api_run__is_the_explain_json_object(client: TestClient, seeded: Seeded) -> None:
    response = client.get(f"/api/runs/{seeded.bridged}")
    assert response.status_code == 200
    data = response.json()
    reconciler = OperationLifecycleReconciler(seeded.policy)
    with read_session(seeded.engine) as session:
        run = session.get(OperationRun, seeded.bridged)
        assert run is not None
        assert data == reconciler.explain(session, run).to_dict()
    assert data["terminal"]["reason_code"] == "run.job_failed"
    assert data["terminal"]["source"] == "bridge"
    assert [a["action"] for a in data["audit"]] == ["operation_run.force_failed"]
    assert SECRET not in response.text


def test_api_run__missing_is_404_and_bad_id_is_422(client: TestClient) -> None:
    missing = client.get("/api/runs/999999")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "no operation run has id 999999"}
    assert client.get("/api/runs/0").status_code == 422
    assert client.get("/api/runs/abc").status_code == 422


def test_api_audit__rows_newest_first_filtered_by_action_and_reason(
    client: TestClient, seeded: Seeded
) -> None:
    client.post("/api/reconcile", json={})
    rows = client.get("/api/audit").json()
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)
    # One pass wrote two rows (in its own order); the bridge's is older.
    assert {r["resource_id"] for r in rows[:2]} == {
        str(seeded.stale_running),
        str(seeded.stale_queued),
    }
    assert rows[2]["resource_id"] == str(seeded.bridged)
    only = client.get("/api/audit", params={"reason": "run.job_failed"}).json()
    assert [r["resource_id"] for r in only] == [str(seeded.bridged)]
    assert SECRET not in str(only)
    blocked = client.get("/api/audit", params={"action": "operation_run.blocked"}).json()
    assert blocked == []
    by_run = client.get("/api/audit", params={"run": seeded.stale_queued}).json()
    assert [r["reason_code"] for r in by_run] == ["run.stale_queued"]


def test_api_reconcile__dry_run_writes_nothing_and_a_pass_fails_the_stale_runs(
    client: TestClient, seeded: Seeded
) -> None:
    before = _state(seeded)
    preview = client.post("/api/reconcile", json={"dry_run": True})
    assert preview.status_code == 200
    body = preview.json()
    assert set(body) == {"candidates", "reconciled", "skipped", "changes"}
    assert {c["operation_run_id"] for c in body["changes"]} == {
        seeded.stale_queued,
        seeded.stale_running,
    }
    assert all(c["applied"] is False for c in body["changes"])
    assert _state(seeded) == before

    applied = client.post("/api/reconcile", json={"types": ["inventory.sync"]}).json()
    assert applied["reconciled"] == 1
    assert applied["changes"][0]["operation_run_id"] == seeded.stale_queued
    states, _ = _state(seeded)
    assert states[seeded.stale_queued] == ("completed", "failed")
    assert states[seeded.stale_running] == ("running", "pending")


def test_api_reconcile__bad_options_are_422_with_the_cli_message(
    client: TestClient, seeded: Seeded
) -> None:
    before = _state(seeded)
    cases: list[tuple[Any, str]] = [
        ({"limit": 0}, ReconcileOptions.__name__),
        ({"types": ["nope.never"]}, ReconcileOptions.__name__),
        ({"tenant_ids": [-1]}, ReconcileOptions.__name__),
        ({"source": "me"}, ""),
        ({"frobnicate": True}, ""),
    ]
    for body, _ in cases:
        response = client.post("/api/reconcile", json=body)
        assert response.status_code == 422, body
        assert response.json()["detail"].startswith("invalid reconcile option"), response.json()
    # The CLI's message for the same option, word for word.
    limit = client.post("/api/reconcile", json={"limit": 0}).json()["detail"]
    assert limit == (
        "invalid reconcile option limit: Input should be greater than or equal to 1 (got 0)"
    )
    assert client.post("/api/reconcile", json=[1, 2]).status_code == 422
    assert _state(seeded) == before


def test_openapi__documents_the_api(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/runs", "/api/runs/{run_id}", "/api/audit", "/api/reconcile"} <= set(paths)
    assert client.get("/docs").status_code == 200
