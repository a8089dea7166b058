"""Run alembic programmatically against the configured database."""

from __future__ import annotations

from collections.abc import Callable

from alembic import command
from alembic.config import Config
from sqlalchemy.exc import DBAPIError

from migrations import SCRIPT_LOCATION
from worker.db import build_engine, immediate, unavailable
from worker.settings import get_settings


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    _run(command.upgrade, url, revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    _run(command.downgrade, url, revision)


def _run(step: Callable[[Config, str], None], url: str | None, revision: str) -> None:
    # One transaction for the whole step: a migration that fails half way leaves nothing.
    # On SQLite it takes the write lock at BEGIN: alembic reads the version table before
    # its first write, and a deferred transaction whose snapshot another writer committed
    # past fails at once with "database is locked" instead of waiting its busy timeout.
    url = url or get_settings().resolved_database_url
    engine = build_engine(url)
    try:
        with immediate(engine).begin() as connection:
            config = alembic_config(url)
            config.attributes["connection"] = connection
            step(config, revision)
    except DBAPIError as exc:
        raise unavailable(exc, url) from exc
    finally:
        engine.dispose()
