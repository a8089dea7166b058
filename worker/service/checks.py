"""What ``runwarden up`` checks before it writes or starts anything: a setting that would
only fail inside the worker (a traceback in its log, after the database was migrated)
is refused here as one line and exit 2; a configured broker that does not answer, as
one line and exit 1 (the worker would retry it for minutes, the database migrated)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from importlib.machinery import ModuleSpec, PathFinder
from urllib.parse import parse_qsl, quote_plus, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.errors import BrokerUnavailableError, ConfigurationError
from worker.lifecycle.evidence import REDACTED, is_secret_name, scrub
from worker.locks import redis_client


def check_imports(names: Sequence[str]) -> None:
    """Each of ``RUNWARDEN_IMPORTS`` is a module the worker will find.

    Found, not imported: importing application code in ``up`` would run it in a process
    that only supervises. Packages are walked with their search paths, so even a dotted
    name's packages are not executed.
    """
    for name in names:
        if not _findable(name):
            raise ConfigurationError(
                f"RUNWARDEN_IMPORTS: no module named {name!r} for the worker to import"
            )


def _findable(name: str) -> bool:
    parts = name.split(".")
    if not all(part.isidentifier() for part in parts):
        return False
    top, *rest = parts
    try:
        spec: ModuleSpec | None = importlib.util.find_spec(top)
    except ValueError:  # in sys.modules without a spec (__main__): not a module to import
        return False
    if spec is None:
        # The worker runs as `python -m celery` in this working directory, which puts it
        # first on the worker's sys.path; the `runwarden` script's sys.path lacks it.
        spec = PathFinder.find_spec(top, [os.getcwd()])
    for part in rest:
        if spec is None or spec.submodule_search_locations is None:
            return False
        spec = PathFinder.find_spec(part, list(spec.submodule_search_locations))
    return spec is not None


def check_broker(url: str) -> None:
    """The configured broker answers a PING (within the client's few seconds' timeout)."""
    client = redis_client(url)
    # One attempt: the client's retries with backoff would make a missing socket or a
    # refused port take seconds more, and an unroutable host four connect timeouts.
    client.set_retry(Retry(NoBackoff(), 0))
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        # The client's text names the host or socket; scrubbed, as a driver's text is.
        lines = scrub(str(exc)).strip().splitlines()
        detail = f": {lines[0]}" if lines else ""
        raise BrokerUnavailableError(
            f"cannot reach the broker {describe_broker_url(url)}{detail} "
            "(RUNWARDEN_BROKER_URL; unset it to use the embedded Redis)"
        ) from exc
    finally:
        client.close()


def describe_broker_url(url: str) -> str:
    """A broker URL for messages: its password and secret-looking query values as ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")
    if at and parts.password is not None:
        netloc = f"{userinfo.partition(':')[0]}:{REDACTED}@{host}"
    query = "&".join(
        f"{quote_plus(name)}={REDACTED if is_secret_name(name) else quote_plus(value)}"
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    # Not urlunsplit: it drops the "//" of an empty netloc (redis+socket:///path).
    shown = f"{parts.scheme}://{netloc}{parts.path}"
    return shown + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")
