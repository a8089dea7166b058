from __future__ import annotations

from pathlib import Path

import pytest

from worker.errors import ConfigurationError
from worker.settings import get_settings


def test_settings__defaults_to_embedded_sqlite_and_redis(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RUNWARDEN_VAR_DIR", str(tmp_path))
    settings = get_settings()
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'runwarden.db'}"
    assert settings.resolved_broker_url == f"redis+socket://{tmp_path / 'redis.sock'}"
    assert settings.resolved_result_backend == settings.resolved_broker_url


def test_settings__reads_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNWARDEN_DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("RUNWARDEN_BROKER_URL", "redis://h:6379/0")
    monkeypatch.setenv("RUNWARDEN_IMPORTS", "app.ops, app.more ,")
    monkeypatch.setenv("RUNWARDEN_LOG_FORMAT", "json")
    settings = get_settings()
    assert settings.resolved_database_url == "postgresql+psycopg://u@h/db"
    assert settings.resolved_result_backend == "redis://h:6379/0"
    assert settings.imports == ("app.ops", "app.more")
    assert settings.log_format == "json"


def test_settings__bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNWARDEN_LOG_FORMAT", "xml")
    with pytest.raises(ConfigurationError, match="RUNWARDEN_LOG_FORMAT"):
        get_settings()
