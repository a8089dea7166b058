"""All configuration: one pydantic-settings class read from ``RUNWARDEN_*``, and the
lifecycle policy file it names, each loaded once per process."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.errors import ConfigurationError

if TYPE_CHECKING:
    from worker.lifecycle.policy import LifecyclePolicy


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RUNWARDEN_", extra="ignore", frozen=True)

    #: Where runwarden keeps its embedded state (SQLite file, embedded Redis, beat schedule).
    var_dir: Path = Path("var")
    #: SQLAlchemy URL. Default: a SQLite file under ``var_dir``.
    database_url: str | None = None
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

    @field_validator("imports", mode="before")
    @classmethod
    def _split_imports(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("database_url", "broker_url", "result_backend", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        key = "RUNWARDEN_" + "_".join(str(p) for p in first["loc"]).upper()
        raise ConfigurationError(f"{key}: {first['msg']}") from exc


@lru_cache(maxsize=1)
def current_policy() -> LifecyclePolicy:
    """The configured lifecycle policy, loaded (and validated) once per process."""
    from worker.lifecycle.policy import load_policy

    return load_policy()
