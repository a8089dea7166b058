"""With RUNWARDEN_WEB_TOKEN set, every page, API call and /metrics needs it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.acceptance.cli import one_line_error, run_cli
from tests.web.conftest import TOKEN, Seeded
from worker.web.security import is_loopback

GUARDED = (
    "/",
    "/runs",
    "/runs/1",
    "/audit",
    "/workers",
    "/api/runs",
    "/api/runs/1",
    "/api/audit",
    "/api/workers",
    "/metrics",
)


def test_token__without_it_pages_go_to_login_and_api_and_metrics_are_401(
    guarded: TestClient,
) -> None:
    for path in GUARDED:
        response = guarded.get(path, follow_redirects=False)
        if path.startswith(("/api/", "/metrics")):
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"] == "Bearer"
        else:
            assert response.status_code == 303, path
            assert response.headers["location"] == "/login"
    assert guarded.post("/api/reconcile", json={}).status_code == 401
    assert guarded.post("/reconcile", data={}).status_code == 401


def test_token__a_wrong_bearer_is_refused_the_right_one_accepted(guarded: TestClient) -> None:
    wrong = {"Authorization": "Bearer " + TOKEN[:-1] + "X"}
    right = {"Authorization": f"Bearer {TOKEN}"}
    for path in GUARDED:
        assert guarded.get(path, headers=wrong, follow_redirects=False).status_code in (401, 303)
        assert guarded.get(path, headers=right).status_code == 200, path
    # A Bearer call needs no CSRF token: no browser sends that header cross-site.
    assert guarded.post("/api/reconcile", json={"dry_run": True}, headers=right).status_code == 200


def test_login__sets_an_httponly_samesite_cookie_that_opens_every_page(
    guarded: TestClient, seeded: Seeded
) -> None:
    guarded.get("/login")
    csrf = guarded.cookies.get("runwarden_csrf")
    refused = guarded.post("/login", data={"csrf_token": csrf, "token": "guess"})
    assert refused.status_code == 401
    assert "That is not the console's token." in refused.text
    response = guarded.post(
        "/login", data={"csrf_token": csrf, "token": TOKEN}, follow_redirects=False
    )
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    assert "runwarden_session=" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert TOKEN not in cookie
    for path in GUARDED:
        assert guarded.get(path).status_code == 200, path
    # A JSON call carried by the cookie alone must prove it comes from the console.
    assert guarded.post("/api/reconcile", json={"dry_run": True}).status_code == 403
    ok = guarded.post("/api/reconcile", json={"dry_run": True}, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200
    logged_out = guarded.post("/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert logged_out.status_code == 303
    guarded.cookies.delete("runwarden_session")
    assert guarded.get("/api/runs").status_code == 401


def test_login__static_files_and_the_form_need_no_token(guarded: TestClient) -> None:
    assert guarded.get("/login").status_code == 200
    assert guarded.get("/static/console.css").status_code == 200


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("example.test", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_web__non_loopback_host_without_token_is_one_line_exit_2(sqlite_url: str) -> None:
    result = run_cli("web", "--host", "0.0.0.0", env={"RUNWARDEN_DATABASE_URL": sqlite_url})
    line = one_line_error(result, 2)
    assert line == (
        "runwarden: error: --host 0.0.0.0 is not a loopback address: set RUNWARDEN_WEB_TOKEN "
        "to serve the console beyond this machine"
    )


def test_web__unmigrated_database_is_one_line_exit_1(tmp_path: object) -> None:
    result = run_cli(
        "web", "--port", "1", env={"RUNWARDEN_DATABASE_URL": "sqlite:////nonexistent/x.db"}
    )
    assert one_line_error(result, 1).startswith("runwarden: error: ")
