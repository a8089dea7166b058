"""The database URL and the driver's error text as runwarden prints them: no credentials."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from worker.db import describe_url, unavailable


@pytest.mark.parametrize(
    "name",
    ["password", "passwd", "pwd", "sslpassword", "token", "secret", "key", "sslkey", "API_TOKEN"],
)
def test_describe_url__secret_query_parameter__value_hidden(name: str) -> None:
    url = f"postgresql+psycopg://app@db:5432/prod?sslmode=require&{name}=s3cr3t&application_name=rw"
    described = describe_url(url)
    assert "s3cr3t" not in described
    assert described.startswith("postgresql+psycopg://app@db:5432/prod?")
    query = described.partition("?")[2].split("&")
    assert sorted(query) == sorted([f"{name}=***", "sslmode=require", "application_name=rw"])


def test_describe_url__password_and_repeated_secret_parameter__all_hidden() -> None:
    url = "postgresql+psycopg://app:s3cr3t@db/prod?password=s3cr3t2&password=s3cr3t3"
    described = describe_url(url)
    assert described == "postgresql+psycopg://app:***@db/prod?password=***&password=***"


def test_describe_url__no_secret__unchanged() -> None:
    url = "sqlite:////var/lib/runwarden/runwarden.db?timeout=5"
    assert describe_url(url) == url


def _operational_error(driver_text: str | None) -> OperationalError:
    orig = Exception(driver_text) if driver_text is not None else None
    return OperationalError("SELECT 1", {}, orig)  # type: ignore[arg-type]


def test_unavailable__driver_error_echoing_the_url__scrubbed() -> None:
    error = _operational_error(
        'invalid connection option in "postgresql://u:pw1@h/db?password=pw2": bad\nDETAIL: x'
    )
    message = unavailable(error, "postgresql+psycopg://u:pw1@h/db?password=pw2").message
    assert "pw1" not in message
    assert "pw2" not in message
    assert message.startswith("cannot use postgresql+psycopg://u:***@h/db?password=***: ")
    assert "postgresql://u:***@h/db?password=***" in message
    assert "\n" not in message


def test_unavailable__without_a_driver_error__sqlalchemy_text_scrubbed() -> None:
    error = OperationalError("connect to postgresql://u:pw1@h/db?token=pw2", {}, None)  # type: ignore[arg-type]
    message = unavailable(error).message
    assert "pw1" not in message
    assert "pw2" not in message
    assert message.startswith("cannot use the database: ")
