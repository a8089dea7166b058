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


@pytest.mark.parametrize(
    "url",
    [
        "garbage",
        "nosuch://app:s3cret@h/db",
        "postgresql+nosuch://app:s3cret@h/db",
        "postgresql+psycopg2://app:s3cret@h/db",  # a driver that is not installed
        "mysql+pymysql://app:s3cret@h/db",
        "nosuch://app@h/db?password=s3cret",  # libpq-style: the password as a parameter
    ],
)
def test_settings__unsupported_database_url_names_the_variable_not_the_password(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("RUNWARDEN_DATABASE_URL", url)
    with pytest.raises(ConfigurationError) as raised:
        get_settings()
    assert raised.value.message.startswith("RUNWARDEN_DATABASE_URL: ")
    assert "s3cret" not in raised.value.message
    assert "Value error" not in raised.value.message
    assert raised.value.exit_code == 2


@pytest.mark.parametrize(
    "url", ["sqlite:///x.db", "sqlite+pysqlite:///:memory:", "postgresql+psycopg://u@h/db"]
)
def test_settings__sqlite_and_postgresql_database_urls_are_accepted(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("RUNWARDEN_DATABASE_URL", url)
    assert get_settings().resolved_database_url == url


@pytest.mark.parametrize(
    "url",
    ["garbage", "amqp://guest:s3cret@h//", "memory://", "unix:///tmp/r.sock", "sentinel://h"],
)
def test_settings__broker_url_that_is_not_redis_names_the_variable_not_the_password(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("RUNWARDEN_BROKER_URL", url)
    with pytest.raises(ConfigurationError) as raised:
        get_settings()
    assert raised.value.message.startswith("RUNWARDEN_BROKER_URL: ")
    assert "redis://" in raised.value.message
    assert "s3cret" not in raised.value.message


@pytest.mark.parametrize(
    "url", ["redis://h:6379/0", "rediss://:pw@h:6380/1", "redis+socket:///tmp/redis.sock"]
)
def test_settings__redis_broker_urls_are_accepted(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("RUNWARDEN_BROKER_URL", url)
    assert get_settings().resolved_broker_url == url


@pytest.mark.parametrize("below", ["", "var"])
def test_settings__var_dir_on_a_file_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, below: str
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    monkeypatch.setenv("RUNWARDEN_VAR_DIR", str(a_file / below))
    with pytest.raises(ConfigurationError) as raised:
        get_settings()
    assert raised.value.message.startswith("RUNWARDEN_VAR_DIR: ")
    assert f"{a_file} is not a directory" in raised.value.message


def test_settings__db_schema__a_plain_identifier_with_postgresql(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUNWARDEN_DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("RUNWARDEN_DB_SCHEMA", "_runwarden_2" + "x" * 51)
    assert get_settings().db_schema == "_runwarden_2" + "x" * 51
    get_settings.cache_clear()
    monkeypatch.setenv("RUNWARDEN_DB_SCHEMA", " ")
    assert get_settings().db_schema is None


@pytest.mark.parametrize("schema", ["Public", "a-b", "1a", "a.b", "a" * 64, '"a"', "a b"])
def test_settings__db_schema__anything_else_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, schema: str
) -> None:
    monkeypatch.setenv("RUNWARDEN_DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("RUNWARDEN_DB_SCHEMA", schema)
    with pytest.raises(ConfigurationError) as raised:
        get_settings()
    assert raised.value.message.startswith("RUNWARDEN_DB_SCHEMA: ")
    assert "not a plain schema name" in raised.value.message
    assert raised.value.exit_code == 2
