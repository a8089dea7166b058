from __future__ import annotations

import string

from hypothesis import assume, given
from hypothesis import strategies as st

from worker.lifecycle.evidence import REDACTED, scrub, scrub_and_truncate


def test_scrub__hides_url_passwords_keeps_user_and_host() -> None:
    text = "could not connect to postgresql://app:s3cr3t@db.internal:5432/prod"
    assert scrub(text) == "could not connect to postgresql://app:***@db.internal:5432/prod"


def test_scrub__hides_key_value_secrets() -> None:
    text = 'login failed password=hunter2 token: abc.def "api_key": "k-123" user=bob'
    scrubbed = scrub(text)
    for secret in ("hunter2", "abc.def", "k-123"):
        assert secret not in scrubbed
    assert "user=bob" in scrubbed


def test_scrub__hides_bearer_authorization() -> None:
    assert "xyz" not in scrub("Authorization: Bearer xyz")


def test_scrub_and_truncate__scrubs_before_cutting() -> None:
    # A cut inside the password would no longer look like a URL with credentials.
    text = "redis://default:" + "p" * 50 + "@cache:6379/0"
    result = scrub_and_truncate(text, limit=30)
    assert "ppp" not in result
    assert len(result) <= 30


def test_scrub_and_truncate__bounds_length() -> None:
    result = scrub_and_truncate("x" * 5000, limit=100)
    assert len(result) == 100
    assert result.endswith("\u2026")


# RFC 3986 userinfo characters: a password in a well-formed URL is made of these
# (anything else is percent-encoded).
_USERINFO = string.ascii_letters + string.digits + "-._~!$&'()*+,;=%"


@given(st.text(alphabet=_USERINFO, min_size=1, max_size=80))
def test_scrub__url_password_never_survives(password: str) -> None:
    assume(password != REDACTED)  # the marker itself "survives" trivially
    text = f"error at amqp://guest:{password}@broker:5672//"
    assert f":{password}@" not in scrub(text)
    assert "amqp://guest:***@broker:5672//" in scrub(text)
