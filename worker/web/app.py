"""The console's FastAPI application: pages, the JSON API and ``/metrics``, thin over
:class:`worker.web.console.Console` (and so over worker/lifecycle)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Annotated, Any

from fastapi import Body, FastAPI, Path, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from worker.errors import DatabaseUnavailableError, InvalidOptionsError, RunNotFoundError
from worker.lifecycle.policy import LifecyclePolicy
from worker.web import metrics
from worker.web.console import MAX_ID, AuditFilters, Console, RunFilters, WorkerFilters
from worker.web.security import (
    CSRF_FIELD,
    CSRF_HEADER,
    SESSION_COOKIE,
    Guard,
    csrf_ok,
    csrf_token,
    middleware,
    wants_html,
)

RunId = Annotated[int, Path(ge=1, le=MAX_ID, description="The operation run's id.")]


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def _templates() -> Jinja2Templates:
    directory = resources.files("worker.web").joinpath("templates")
    templates = Jinja2Templates(directory=str(directory))
    # Every value is escaped: Starlette's templates autoescape .html; said here explicitly.
    templates.env.autoescape = True
    templates.env.filters["pretty"] = _pretty
    return templates


def _next_link(request: Request, rows: list[dict[str, Any]], limit: int) -> dict[str, str]:
    """RFC 8288 ``Link`` to the next (older) page when this one is full."""
    if len(rows) < limit:
        return {}
    params = dict(request.query_params) | {"before": str(rows[-1]["id"])}
    query = "&".join(f"{k}={v}" for k, v in sorted(params.items()))
    return {"Link": f'<{request.url.path}?{query}>; rel="next"'}


def create_app(engine: Engine, policy: LifecyclePolicy, *, token: str | None = None) -> FastAPI:
    """The console over ``engine`` and ``policy``; with ``token`` every request needs it."""
    console = Console(engine, policy)
    guard = Guard(token)
    templates = _templates()
    registry = metrics.registry(engine, policy)
    app = FastAPI(
        title="runwarden console",
        summary="Operation runs, why they ended, and reconciliation.",
        version="1",
        redoc_url=None,
    )
    app.middleware("http")(middleware(guard))
    app.mount(
        "/static",
        StaticFiles(directory=str(resources.files("worker.web").joinpath("static"))),
        name="static",
    )

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        context |= {
            "csrf_token": csrf_token(request),
            "csrf_field": CSRF_FIELD,
            "logged_in": guard.token is not None and guard.cookie_ok(request),
            "nav": name.removesuffix(".html"),
        }
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    # -- errors: one line, the CLI's message -------------------------------------------

    def error(request: Request, status_code: int, message: str) -> Response:
        if wants_html(request):
            return page(request, "error.html", status_code, message=message)
        return JSONResponse({"detail": message}, status_code=status_code)

    @app.exception_handler(InvalidOptionsError)
    async def _invalid(request: Request, exc: InvalidOptionsError) -> Response:
        return error(request, 422, exc.message)

    @app.exception_handler(RunNotFoundError)
    async def _missing(request: Request, exc: RunNotFoundError) -> Response:
        return error(request, 404, exc.message)

    @app.exception_handler(DatabaseUnavailableError)
    async def _unavailable(request: Request, exc: DatabaseUnavailableError) -> Response:
        return error(request, 503, exc.message)

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: DBAPIError) -> Response:
        from worker.db import unavailable

        return error(request, 503, unavailable(exc).message)

    # -- JSON API ----------------------------------------------------------------------

    @app.get("/api/runs", tags=["api"], summary="Runs, newest first (runwarden runs --json)")
    def api_runs(
        request: Request,
        *,
        status: str | None = None,
        outcome: str | None = None,
        freshness: str | None = None,
        type: str | None = None,
        tenant: str | None = None,
        workspace: str | None = None,
        reason: str | None = None,
        before: str | None = None,
        limit: str | None = None,
    ) -> JSONResponse:
        filters = RunFilters.parse(dict(request.query_params))
        rows = console.runs(filters)
        return JSONResponse(rows, headers=_next_link(request, rows, filters.limit))

    @app.get(
        "/api/runs/{run_id}", tags=["api"], summary="One run explained (runwarden explain --json)"
    )
    def api_run(run_id: RunId) -> dict[str, Any]:
        return console.explain(run_id)

    @app.get("/api/audit", tags=["api"], summary="Audit rows, newest first")
    def api_audit(
        request: Request,
        *,
        action: str | None = None,
        reason: str | None = None,
        run: str | None = None,
        before: str | None = None,
        limit: str | None = None,
    ) -> JSONResponse:
        filters = AuditFilters.parse(dict(request.query_params))
        rows = console.audit(filters)
        return JSONResponse(rows, headers=_next_link(request, rows, filters.limit))

    @app.get(
        "/api/workers",
        tags=["api"],
        summary="Registered workers, newest first (runwarden workers --json)",
    )
    def api_workers(request: Request, *, limit: str | None = None) -> JSONResponse:
        _, rows = console.workers(WorkerFilters.parse(dict(request.query_params)))
        return JSONResponse(rows)

    @app.post(
        "/api/reconcile",
        tags=["api"],
        summary="Reconcile now, or preview with dry_run (runwarden reconcile --json)",
    )
    def api_reconcile(
        request: Request,
        body: Annotated[
            dict[str, Any],
            Body(
                examples=[{"types": ["inventory.sync"], "limit": 100, "dry_run": True}],
                description="types, tenant_ids, workspace_ids, limit, dry_run",
            ),
        ],
    ) -> Response:
        # A session cookie is sent by the browser on any request, so a call that relies
        # on it must prove it comes from the console's own page.
        by_cookie = not guard.bearer_ok(request) and guard.cookie_ok(request)
        if by_cookie and not csrf_ok(request, request.headers.get(CSRF_HEADER)):
            return JSONResponse({"detail": "missing or wrong CSRF token"}, status_code=403)
        return JSONResponse(console.reconcile(body))

    @app.get("/api/overview", tags=["api"], summary="What the overview page shows")
    def api_overview() -> dict[str, Any]:
        return console.overview()

    @app.get("/metrics", tags=["metrics"], summary="Prometheus metrics")
    def prometheus_metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # -- pages -------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def overview_page(request: Request) -> Response:
        data = console.overview()
        peak = max((f["count"] for f in data["forced_last_24h"]), default=0)
        return page(request, "overview.html", data=data, peak=peak)

    @app.get("/runs", response_class=HTMLResponse, include_in_schema=False)
    def runs_page(request: Request) -> Response:
        filters = RunFilters.parse(dict(request.query_params))
        rows = console.runs(filters)
        names = console.tenant_names({r["tenant_id"] for r in rows if r["tenant_id"]})
        older = filters.query(before=rows[-1]["id"]) if len(rows) == filters.limit else None
        return page(
            request,
            "runs.html",
            runs=rows,
            filters=filters,
            tenant_names=names,
            older=older,
            choices={
                "status": ("queued", "running", "completed"),
                "outcome": (
                    "pending",
                    "succeeded",
                    "partially_succeeded",
                    "blocked",
                    "failed",
                    "cancelled",
                ),
                "freshness": (
                    "terminal_normal",
                    "reconciled_failed",
                    "unknown",
                    "likely_stale",
                    "fresh",
                ),
            },
        )

    @app.get("/runs/{run_id}", response_class=HTMLResponse, include_in_schema=False)
    def run_page(request: Request, run_id: RunId) -> Response:
        data = console.explain(run_id)
        run = data["run"]
        names = console.tenant_names({run["tenant_id"]} if run["tenant_id"] else set())
        timeline = [
            (label, run[key])
            for label, key in (
                ("created", "created_at"),
                ("started", "started_at"),
                ("last heartbeat", "last_heartbeat_at"),
                ("completed", "completed_at"),
            )
            if run[key]
        ]
        return page(
            request,
            "run.html",
            data=data,
            run=run,
            tenant_name=names.get(run["tenant_id"]),
            timeline=timeline,
        )

    @app.get("/audit", response_class=HTMLResponse, include_in_schema=False)
    def audit_page(request: Request, open: int | None = None) -> Response:
        filters = AuditFilters.parse({k: v for k, v in request.query_params.items() if k != "open"})
        rows = console.audit(filters)
        opened = next((r for r in rows if r["id"] == open), None)
        params = {
            k: str(v)
            for k, v in (
                ("action", filters.action),
                ("reason", filters.reason),
                ("run", filters.run),
            )
            if v
        }
        older = params | {"before": str(rows[-1]["id"])} if len(rows) == filters.limit else None
        return page(
            request,
            "audit.html",
            rows=rows,
            filters=filters,
            params=params,
            opened=opened,
            older=older,
        )

    @app.get("/workers", response_class=HTMLResponse, include_in_schema=False)
    def workers_page(request: Request) -> Response:
        now, rows = console.workers(WorkerFilters.parse(dict(request.query_params)))
        return page(request, "workers.html", now=now, workers=rows, policy=policy.workers)

    async def _form(request: Request) -> dict[str, str]:
        form = await request.form()
        values = {k: v for k, v in form.items() if isinstance(v, str)}
        if not csrf_ok(request, values.get(CSRF_FIELD)):
            raise _CsrfRefusedError
        return values

    @app.exception_handler(_CsrfRefusedError)
    async def _csrf(request: Request, exc: _CsrfRefusedError) -> Response:
        return error(request, 403, "missing or wrong CSRF token: reload the page and try again")

    @app.post("/reconcile/preview", response_class=HTMLResponse, include_in_schema=False)
    async def reconcile_preview(request: Request) -> Response:
        await _form(request)
        result = console.reconcile({}, dry_run=True)
        return page(request, "reconcile.html", result=result, dry_run=True)

    @app.post("/reconcile", response_class=HTMLResponse, include_in_schema=False)
    async def reconcile_now(request: Request) -> Response:
        await _form(request)
        result = console.reconcile({}, dry_run=False)
        return page(request, "reconcile.html", result=result, dry_run=False)

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request) -> Response:
        if guard.token is None:
            return RedirectResponse("/", status_code=303)
        return page(request, "login.html", failed=False)

    @app.post("/login", response_class=HTMLResponse, include_in_schema=False)
    async def login(request: Request) -> Response:
        values = await _form(request)
        response = RedirectResponse("/", status_code=303)
        if guard.login(response, values.get("token", "")):
            return response
        return page(request, "login.html", 401, failed=True)

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        await _form(request)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    return app


class _CsrfRefusedError(Exception):
    """A form POST without this browser's CSRF token."""
