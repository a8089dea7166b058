"""Who may use the console, and the headers every answer carries.

With ``RUNWARDEN_WEB_TOKEN`` set, every page, API call and ``/metrics`` needs it: as an
``Authorization: Bearer`` header, or as the session cookie the login form sets (HttpOnly,
SameSite=Strict; its value is derived from the token, never the token itself). Tokens
are compared in constant time. Every form POST carries a CSRF token (double submit: a
random HttpOnly cookie and the same value in the form), with or without a console token;
a JSON API POST authenticated by the cookie carries it as ``X-CSRF-Token``, while one with
a Bearer header, or with no token configured, does not need it (a cross-site page can
send neither a Bearer header nor, without CORS, a JSON body).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

SESSION_COOKIE = "runwarden_session"
CSRF_COOKIE = "runwarden_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"

#: Paths anyone may load: the login form and the console's own CSS/JS.
_OPEN_PREFIXES = ("/login", "/static/")

#: No inline script or style anywhere; the console's own files only; never framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: FastAPI's /docs page loads Swagger UI with an inline bootstrap script and from a CDN;
#: it is the one page allowed to (it shows the OpenAPI document, no run data).
DOCS_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def same(a: str, b: str) -> bool:
    """Constant-time comparison of two secrets."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


@dataclass(frozen=True)
class Guard:
    """The console's access rule; ``token`` None: open (loopback only)."""

    token: str | None

    @property
    def session_value(self) -> str:
        """The session cookie's value: a MAC of the token, so the cookie never holds the
        token itself and changing the token ends every session."""
        assert self.token is not None
        return hmac.new(
            self.token.encode(), b"runwarden-console-session", hashlib.sha256
        ).hexdigest()

    def bearer_ok(self, request: Request) -> bool:
        if self.token is None:
            return False
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and same(value.strip(), self.token)

    def cookie_ok(self, request: Request) -> bool:
        if self.token is None:
            return False
        return same(request.cookies.get(SESSION_COOKIE, ""), self.session_value)

    def authenticated(self, request: Request) -> bool:
        return self.token is None or self.bearer_ok(request) or self.cookie_ok(request)

    def login(self, response: Response, offered: str) -> bool:
        """Set the session cookie if ``offered`` is the token."""
        if self.token is None or not same(offered, self.token):
            return False
        response.set_cookie(
            SESSION_COOKIE, self.session_value, httponly=True, samesite="strict", path="/"
        )
        return True


def csrf_token(request: Request) -> str:
    """The CSRF token of this browser (its cookie's value), made on its first page."""
    existing = request.cookies.get(CSRF_COOKIE)
    if existing and len(existing) == 43:
        return existing
    token = getattr(request.state, "new_csrf", None)
    if token is None:
        token = request.state.new_csrf = secrets.token_urlsafe(32)
    return str(token)


def csrf_ok(request: Request, offered: str | None) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE)
    return bool(cookie) and offered is not None and same(offered, str(cookie))


def wants_html(request: Request) -> bool:
    path = request.url.path
    return not (path.startswith("/api/") or path in {"/metrics", "/openapi.json"})


def middleware(
    guard: Guard,
) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    """Refuses unauthenticated requests and adds the security headers to every answer."""

    async def guard_and_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        path = request.url.path
        response: Response
        if guard.authenticated(request) or path.startswith(_OPEN_PREFIXES):
            response = await call_next(request)
        elif wants_html(request) and request.method == "GET":
            response = RedirectResponse("/login", status_code=303)
        else:
            response = JSONResponse(
                {"detail": "authentication required: a Bearer token or the console's login"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        response.headers["Content-Security-Policy"] = (
            DOCS_CONTENT_SECURITY_POLICY if path == "/docs" else CONTENT_SECURITY_POLICY
        )
        new_csrf = getattr(request.state, "new_csrf", None)
        if new_csrf is not None:
            response.set_cookie(CSRF_COOKIE, new_csrf, httponly=True, samesite="strict", path="/")
        return response

    return guard_and_headers
