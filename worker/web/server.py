"""``runwarden web``: serve the console with uvicorn, bound to loopback unless a token is set."""

from __future__ import annotations

import logging

from worker.errors import ConfigurationError
from worker.settings import Settings
from worker.web.security import is_loopback

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5580


def console_address(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def check_binding(host: str, token: str | None) -> None:
    """A console beyond this machine needs a token: refused before anything is read."""
    if not is_loopback(host) and not token:
        raise ConfigurationError(
            f"--host {host} is not a loopback address: set RUNWARDEN_WEB_TOKEN to serve "
            "the console beyond this machine"
        )


def serve(settings: Settings, *, host: str, port: int, echo: bool = True) -> None:
    """Check the binding, the policy and the database, then serve until stopped."""
    import uvicorn

    from worker.db import check_migrated, get_engine
    from worker.lifecycle.policy import load_policy
    from worker.web.app import create_app

    token = settings.web_token.get_secret_value() if settings.web_token else None
    check_binding(host, token)
    policy = load_policy()
    url = settings.resolved_database_url
    engine = get_engine(url, create=False)
    check_migrated(engine, url)
    app = create_app(engine, policy, token=token)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        access_log=False,
        server_header=False,
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    if echo:
        print(f"runwarden console on {console_address(host, port)}", flush=True)
    server.run()
    if not server.started:
        raise ConfigurationError(f"the console could not listen on {host}:{port}")
