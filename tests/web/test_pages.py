"""The console's pages: what they show, escaped, and the POSTs behind the buttons."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from models import AuditLog, OperationRun
from tests.web.conftest import INJECTION, SECRET, Seeded
from worker.db import read_session


def _csrf(client: TestClient) -> str:
    client.get("/")
    token = client.cookies.get("runwarden_csrf")
    assert token
    return str(token)


def _audit_rows(seeded: Seeded) -> int:
    with read_session(seeded.engine) as session:
        return session.scalar(select(func.count()).select_from(AuditLog)) or 0


def test_overview__active_runs_stale_forced_and_last_tick(
    client: TestClient, seeded: Seeded
) -> None:
    page = client.get("/")
    assert page.status_code == 200
    html = page.text
    assert '<span class="value" id="active-total">4</span>' in html
    assert '<span class="value" id="stale-total">2</span>' in html
    assert "run.job_failed" in html  # the chart of the last 24 h
    assert '<span class="value" id="last-tick">never</span>' in html
    assert "other.thing" in html  # uncovered types are active runs too


def test_runs_page__filter_failed_and_open_one(client: TestClient, seeded: Seeded) -> None:
    page = client.get("/runs", params={"outcome": "failed"})
    assert page.status_code == 200
    links = re.findall(r'href="/runs/(\d+)" class="run-link"', page.text)
    assert links == [str(seeded.bridged)]
    detail = client.get(f"/runs/{seeded.bridged}")
    assert detail.status_code == 200
    assert '<code class="reason" id="reason-code">run.job_failed</code>' in detail.text
    assert "completed with outcome failed: run.job_failed by bridge at" in detail.text
    assert "celery@web-1" in detail.text
    assert "operation_run.force_failed" in detail.text
    assert SECRET not in detail.text


def test_runs_page__older_link_pages_by_id(client: TestClient, seeded: Seeded) -> None:
    first = client.get("/runs", params={"limit": 4})
    ids = re.findall(r'class="run-link">(\d+)<', first.text)
    assert len(ids) == 4
    older = re.search(r'href="(/runs\?[^"]+)" id="older"', first.text)
    assert older is not None
    second = client.get(older.group(1).replace("&amp;", "&"))
    rest = re.findall(r'class="run-link">(\d+)<', second.text)
    assert [int(i) for i in ids + rest] == sorted((int(i) for i in ids + rest), reverse=True)
    assert len(ids + rest) == 6


def test_run_page__stale_run_shows_what_the_next_pass_would_record(
    client: TestClient, seeded: Seeded
) -> None:
    html = client.get(f"/runs/{seeded.stale_queued}").text
    assert "past its 600 s window: the next pass fails it with run.stale_queued" in html
    assert "&#34;threshold_seconds&#34;: 600" in html or '"threshold_seconds": 600' in html
    assert 'id="timeline"' in html


def test_pages__markup_in_a_tenant_name_and_a_failure_message_renders_inert(
    client: TestClient, seeded: Seeded
) -> None:
    pages = [
        client.get("/runs").text,
        client.get(f"/runs/{seeded.bridged}").text,
        client.get("/audit").text,
        client.get("/audit", params={"open": "1"}).text,
    ]
    for html in pages:
        assert INJECTION not in html
        assert "<img src=x" not in html
        assert 'alert("x")</script>' not in html
    detail = pages[1]
    assert (
        "acme &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"
        in detail
    )
    assert "export failed: &lt;script&gt;" in detail


def test_pages__no_inline_script_and_security_headers_on_every_answer(
    client: TestClient, seeded: Seeded
) -> None:
    for path in (
        "/",
        "/runs",
        f"/runs/{seeded.bridged}",
        "/audit",
        "/workers",
        "/api/runs",
        "/api/workers",
        "/metrics",
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        csp = response.headers["content-security-policy"]
        assert "script-src 'self';" in csp
        assert "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        # Every script is a file of the console's own.
        for tag in re.findall(r"<script[^>]*>", response.text):
            assert 'src="/static/' in tag, tag
        assert " on" + "click=" not in response.text


def test_audit_page__a_row_opens_its_metadata_in_the_side_panel(
    client: TestClient, seeded: Seeded
) -> None:
    rows = client.get("/api/audit").json()
    closed = client.get("/audit").text
    assert '<aside id="panel" class="panel" hidden>' in closed
    opened = client.get("/audit", params={"open": rows[0]["id"]}).text
    panel = opened.split('<aside id="panel"', 1)[1].split("</aside>", 1)[0]
    assert "hidden" not in panel.split(">", 1)[0]
    assert f"Audit row {rows[0]['id']}" in panel
    assert "&#34;reason_code&#34;: &#34;run.job_failed&#34;" in panel
    assert SECRET not in opened
    filtered = client.get("/audit", params={"reason": "run.stale_queued"}).text
    assert "No audit rows match." in filtered


def test_reconcile_preview__shows_what_would_fail_and_writes_nothing(
    client: TestClient, seeded: Seeded
) -> None:
    audits = _audit_rows(seeded)
    page = client.post("/reconcile/preview", data={"csrf_token": _csrf(client)})
    assert page.status_code == 200
    assert "dry run: 2 candidates, 2 would be force-failed, 0 skipped" in page.text
    assert f'href="/runs/{seeded.stale_queued}"' in page.text
    assert _audit_rows(seeded) == audits


def test_reconcile_now__fails_the_stale_runs(client: TestClient, seeded: Seeded) -> None:
    page = client.post("/reconcile", data={"csrf_token": _csrf(client)})
    assert page.status_code == 200
    assert "2 candidates, 2 reconciled, 0 skipped" in page.text
    with read_session(seeded.engine) as session:
        run = session.get(OperationRun, seeded.stale_queued)
        assert run is not None
        assert (run.status, run.outcome) == ("completed", "failed")


def test_reconcile_forms__without_the_csrf_token_are_refused_and_write_nothing(
    client: TestClient, seeded: Seeded
) -> None:
    audits = _audit_rows(seeded)
    _csrf(client)
    for path in ("/reconcile", "/reconcile/preview"):
        assert client.post(path, data={}).status_code == 403
        assert client.post(path, data={"csrf_token": "x" * 43}).status_code == 403
    assert _audit_rows(seeded) == audits


def test_pages__bad_filter_is_422_with_the_message_and_missing_run_404(
    client: TestClient,
) -> None:
    bad = client.get("/runs", params={"status": "<b>done</b>"})
    assert bad.status_code == 422
    assert "invalid value for status: &#39;&lt;b&gt;done&lt;/b&gt;&#39;" in bad.text
    missing = client.get("/runs/999999")
    assert missing.status_code == 404
    assert "no operation run has id 999999" in missing.text
