"""All configuration: one pydantic-settings class read from ``RUNWARDEN_*``, and the
lifecycle policy file it names, each loaded once per process."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.errors import ConfigurationError

if TYPE_CHECKING:
    from worker.lifecycle.policy import LifecyclePolicy

#: The databases runwarden's migrations and named statements are written for.
DATABASE_BACKENDS = ("sqlite", "postgresql")
#: Celery broker schemes that are Redis: the reconciliation lock (worker/locks.py) needs
#: Redis, and kombu has no ``socket://`` or ``unix://`` transport (``redis+socket://`` is it).
BROKER_SCHEMES = ("redis", "rediss", "redis+socket")
#: A schema name runwarden accepts: a plain PostgreSQL identifier that needs no quoting
#: anywhere (search_path, DDL, messages), at most PostgreSQL's 63 bytes.
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def check_schema_name(value: str) -> str:
    """``value`` when it is a schema name runwarden accepts, else ValueError saying why."""
    if not SCHEMA_NAME.fullmatch(value):
        shown = value if value.isprintable() and len(value) <= 80 else f"{value[:80]!r}..."
        raise ValueError(
            f"{shown!r} is not a plain schema name (lower-case letters, digits and _, "
            "not starting with a digit, at most 63 characters)"
        )
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RUNWARDEN_", extra="ignore", frozen=True)

    #: Where runwarden keeps its embedded state (SQLite file, embedded Redis, beat schedule).
    var_dir: Path = Path("var")
    #: SQLAlchemy URL. Default: a SQLite file under ``var_dir``.
    database_url: str | None = None
    #: PostgreSQL schema that holds every runwarden table (created by ``migrate``).
    #: Default: none, the database's default schema (``public``), as before.
    db_schema: str | None = None
    #: Celery broker. Default: the embedded Redis that ``runwarden up`` starts.
    broker_url: str | None = None
    #: Celery result backend. Default: the broker.
    result_backend: str | None = None
    #: Lifecycle policy TOML. Default: the packaged policy.
    policy_file: Path | None = None
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: Extra modules the worker imports (application operation tasks), comma-separated.
    imports: Annotated[tuple[str, ...], NoDecode] = ()
    #: Seconds a SQLite writer waits for the lock before failing.
    sqlite_busy_timeout_seconds: float = Field(default=30.0, gt=0)
    #: The web console's token: with it set, every page, API call and /metrics needs it
    #: (required to serve beyond loopback). Never shown or logged.
    web_token: SecretStr | None = None

    @field_validator("imports", mode="before")
    @classmethod
    def _split_imports(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator(
        "database_url", "broker_url", "result_backend", "db_schema", "web_token", mode="before"
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("var_dir")
    @classmethod
    def _var_dir_can_be_a_directory(cls, value: Path) -> Path:
        # The nearest existing path decides: a file there makes every mkdir below it fail
        # (FileExistsError, NotADirectoryError) at the first write, long after start-up.
        for path in (value, *value.absolute().parents):
            if path.exists():
                if not path.is_dir():
                    raise ValueError(f"{path} is not a directory")
                break
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url_supported(cls, value: str | None) -> str | None:
        if value is not None:
            _check_database_url(value)
        return value

    @field_validator("db_schema")
    @classmethod
    def _db_schema_is_plain(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        check_schema_name(value)
        if "database_url" not in info.data:
            return value  # the URL itself was refused: that is the error to report
        url = info.data["database_url"]
        if url is None or not url.lower().startswith("postgresql"):
            raise ValueError(
                "a schema is for PostgreSQL; the database is SQLite "
                "(set RUNWARDEN_DATABASE_URL to a postgresql+psycopg:// URL, or unset this)"
            )
        return value

    @field_validator("broker_url")
    @classmethod
    def _broker_url_is_redis(cls, value: str | None) -> str | None:
        if value is not None:
            # Only the scheme is named: the rest of the URL may carry a password.
            scheme = urlsplit(value).scheme.lower() if "://" in value else ""
            if scheme not in BROKER_SCHEMES:
                got = f"{scheme}://" if scheme else "no scheme"
                expected = ", ".join(f"{s}://" for s in BROKER_SCHEMES)
                raise ValueError(f"the broker must be a Redis URL ({expected}), not {got}")
        return value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.var_dir / 'runwarden.db').resolve()}"

    @property
    def embedded_redis_socket(self) -> Path:
        return (self.var_dir / "redis.sock").resolve()

    @property
    def resolved_broker_url(self) -> str:
        if self.broker_url:
            return self.broker_url
        return f"redis+socket://{self.embedded_redis_socket}"

    @property
    def resolved_result_backend(self) -> str:
        return self.result_backend or self.resolved_broker_url


def _check_database_url(value: str) -> None:
    """Refuse a URL that would fail only at the first connection, with a traceback."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    expected = "sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST/DB"
    try:
        url = make_url(value)
    except ArgumentError:
        # Not echoed: a URL that does not parse may still hold a password.
        raise ValueError(f"not a database URL (expected {expected})") from None
    from worker.db import describe_url  # here: worker.db imports this module

    # Secret query parameters hidden too: libpq reads ?password= as readily.
    shown = describe_url(value)
    if url.get_backend_name() not in DATABASE_BACKENDS:
        raise ValueError(
            f"{shown}: runwarden runs on {' or '.join(DATABASE_BACKENDS)}, "
            f"not {url.get_backend_name()!r} (expected {expected})"
        )
    try:
        url.get_dialect().import_dbapi()
    except (NoSuchModuleError, ImportError):
        raise ValueError(
            f"{shown}: the driver {url.get_driver_name()!r} is not installed (expected {expected})"
        ) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        key = "RUNWARDEN_" + "_".join(str(p) for p in first["loc"]).upper()
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigurationError(f"{key}: {message}") from exc


@lru_cache(maxsize=1)
def current_policy() -> LifecyclePolicy:
    """The configured lifecycle policy, loaded (and validated) once per process."""
    from worker.lifecycle.policy import load_policy

    return load_policy()
