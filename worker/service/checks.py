"""What ``runwarden up`` checks before it writes or starts anything: a setting that would
only fail inside the worker (a traceback in its log, after the database was migrated)
is refused here as one line and exit 2; a configured broker that does not answer, as
one line and exit 1 (the worker would retry it for minutes, the database migrated)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from importlib.machinery import ModuleSpec, PathFinder

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.db import describe_url
from worker.errors import BrokerUnavailableError, ConfigurationError
from worker.lifecycle.evidence import scrub
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
            f"cannot reach the broker {describe_url(url)}{detail} "
            "(RUNWARDEN_BROKER_URL; unset it to use the embedded Redis)"
        ) from exc
    finally:
        client.close()
