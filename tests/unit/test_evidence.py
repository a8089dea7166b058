from __future__ import annotations

import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from worker.lifecycle.evidence import REDACTED, is_secret_name, scrub, scrub_and_truncate


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


# -- item 6: the gaps, one example each ------------------------------------------------------


def test_scrub__url_password_with_raw_at_and_slash__hidden_up_to_the_last_at() -> None:
    text = "cannot use postgresql://app:p@ss/w0rd@db:5432/x now"
    assert scrub(text) == "cannot use postgresql://app:***@db:5432/x now"


def test_scrub__authorization_basic__credential_hidden_scheme_kept() -> None:
    assert scrub("Authorization: Basic dXNlcjpwYXNz") == "Authorization: Basic ***"


def test_scrub__authorization_token_scheme__credential_hidden() -> None:
    assert scrub("sent authorization=Token abc then") == "sent authorization=Token *** then"


def test_scrub__authorization_unknown_scheme__rest_of_line_hidden() -> None:
    # A value runwarden cannot parse (Digest's parameters, AWS4's, a custom scheme) is
    # hidden whole, to the end of its line.
    text = 'Authorization: Digest username="bob", response="6629fae4"\nnext line'
    assert scrub(text) == "Authorization: ***\nnext line"


def test_scrub__bare_bearer_token_in_text__hidden() -> None:
    text = "upstream rejected Bearer eyJhbGciOiJIUzI1NiJ9 with 401"
    assert scrub(text) == "upstream rejected Bearer *** with 401"


@pytest.mark.parametrize(
    "key",
    [
        "AWS_SECRET_ACCESS_KEY=",
        "aws_session_token=",
        "DB_PASSWORD=",
        "PGPASSWORD=",
        "api_token=",
        "secret_key=",
        "id_token=",
        "client-secret: ",
        "--password=",
        "spring.datasource.password: ",
        '"refreshToken": ',
    ],
)
def test_scrub__secret_word_inside_a_longer_key__value_hidden(key: str) -> None:
    scrubbed = scrub(f"env {key}S3cr3tValue user=bob")
    assert "S3cr3tValue" not in scrubbed
    assert scrubbed.startswith(f"env {key}")
    assert scrubbed.endswith(" user=bob")


@pytest.mark.parametrize(
    "parameter",
    ["X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "sig", "signature"],
)
def test_scrub__signed_url_parameter__value_hidden_rest_of_url_kept(parameter: str) -> None:
    url = f"https://b.s3.amazonaws.com/k.txt?X-Amz-Expires=900&{parameter}=Zm9v%2Fbar&v=1"
    assert scrub(url) == f"https://b.s3.amazonaws.com/k.txt?X-Amz-Expires=900&{parameter}=***&v=1"


def test_scrub__quoted_value_with_spaces__hidden_whole() -> None:
    text = '{"password": "correct horse battery staple", "user": "bob"}'
    assert scrub(text) == '{"password": "***", "user": "bob"}'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("token='a b;c,d&e'", "token='***'"),
        ("{'password': b'x y'}", "{'password': b'***'}"),
        ('password="unterminated and more', 'password="***'),
    ],
)
def test_scrub__quoted_value_with_delimiters__hidden_whole(text: str, expected: str) -> None:
    assert scrub(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("password=a1&user=bob", "password=***&user=bob"),
        ("token=a1,user=bob", "token=***,user=bob"),
        ("token=a1;user=bob", "token=***;user=bob"),
        ("{token=a1}", "{token=***}"),
        ("token=a1 user=bob", "token=*** user=bob"),
    ],
)
def test_scrub__unquoted_value__ends_at_whitespace_and_delimiters(text: str, expected: str) -> None:
    assert scrub(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "password reset failed for user bob",
        "refreshing tokens failed; retrying in 5s",
        "KeyError: 'operation_run_id'",
        "TokenExpiredError: refresh needed",
        "redis://token-cache:6379/0 is up",
        "see https://docs.example.com:443/secrets/rotation",
        "the key is in the secret store",
    ],
)
def test_scrub__ordinary_text__left_as_is(text: str) -> None:
    assert scrub(text) == text


@pytest.mark.parametrize(
    "token",
    [
        "AKIAIOSFODNN7EXAMPLE",
        "ASIAY34FZKBOKMUTVV7A",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
    ],
)
def test_scrub__well_known_token_shape_in_prose__hidden(token: str) -> None:
    assert scrub(f"leaked {token} in output") == "leaked *** in output"


def test_scrub__private_key_block__hidden_whole() -> None:
    text = (
        "loaded\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nq1w2e3r4\n"
        "-----END RSA PRIVATE KEY-----\ndone"
    )
    assert scrub(text) == "loaded\n***\ndone"


def test_scrub__scrubbed_text__unchanged_by_a_second_scrub() -> None:
    text = (
        "postgresql://app:p@ss@db/x Authorization: Basic abc Bearer xyz "
        '{"password": "a b"} token=t1 X-Amz-Signature=ff AKIAIOSFODNN7EXAMPLE'
    )
    once = scrub(text)
    assert scrub(once) == once


@pytest.mark.parametrize(
    "unit",
    [
        "a",
        "_",
        "-",
        " ",
        "=",
        ":",
        "@",
        '"',
        "a://",
        "a://b:",
        "u:p@",
        "password",
        "password=",
        'password="',
        "password_",
        "Authorization: ",
        "Authorization: Basic ",
        "Bearer ",
        "eyJ",
        "eyJa.",
        "AKIA",
        "ghp_",
        "-----BEGIN PRIVATE KEY-----",
        "sig=",
        "x://u:" + "@" * 10,
    ],
)
def test_scrub__100_kb_pathological_input__finishes(unit: str) -> None:
    # Linear regexes only: a catastrophic pattern would hang here until the suite's timeout.
    text = unit * (100_000 // len(unit))
    assert isinstance(scrub(text), str)
    assert isinstance(scrub(text + "!" + text[::-1]), str)


# -- item 6: one property per pattern family ----------------------------------------------

# Ordinary words around a secret, including words that name secrets without holding one.
_PROSE = st.lists(
    st.sampled_from(
        [
            "could",
            "not",
            "connect",
            "to",
            "the",
            "database",
            "password",
            "reset",
            "failed",
            "for",
            "user",
            "bob",
            "tokens",
            "expired",
            "retrying",
            "in",
            "5s",
            "at",
            "12:30:01",
            "(attempt",
            "3)",
            "secret",
            "key",
            "error",
            "-",
            "ok.",
        ]
    ),
    max_size=6,
).map(" ".join)
_ALNUM = string.ascii_letters + string.digits
_TOKEN68 = _ALNUM + "-._~+/"
_USER = st.text(alphabet=string.ascii_lowercase + string.digits + "_.", min_size=1, max_size=12)
_HOST = st.sampled_from(
    ["db", "db.internal", "10.0.0.5", "cache-1.example.com", "[::1]", "secret-store.local"]
)


def _ends_in_bearer(value: str) -> bool:
    # "... Bearer" before more text hides the word after it as a bearer token too: the
    # preferred error (too much hidden), but not the exact output these tests compare.
    return value.lower().endswith("bearer")


def _around(before: str, middle: str, after: str) -> str:
    return " ".join(part for part in (before, middle, after) if part)


@given(
    before=_PROSE,
    after=_PROSE,
    scheme=st.sampled_from(["postgresql+psycopg", "redis", "amqp", "https", "mongodb+srv"]),
    user=_USER,
    # A raw password: userinfo characters plus the ones people forget to encode.
    password=st.text(alphabet=_USERINFO + "@/:?#[]", min_size=1, max_size=40),
    host=_HOST,
    port=st.sampled_from(["", ":5432", ":6379"]),
)
def test_scrub__url_userinfo_family__password_hidden_user_and_host_kept(
    *, before: str, after: str, scheme: str, user: str, password: str, host: str, port: str
) -> None:
    assume("://" not in password)  # where the next URL would begin
    text = _around(before, f"{scheme}://{user}:{password}@{host}{port}/x", after)
    assert scrub(text) == _around(before, f"{scheme}://{user}:***@{host}{port}/x", after)


@given(
    before=_PROSE,
    after=_PROSE,
    key=st.sampled_from(
        ["Authorization", "authorization", "Proxy-Authorization", "HTTP_AUTHORIZATION"]
    ),
    separator=st.sampled_from([": ", ":", "=", " = "]),
    scheme=st.sampled_from(["Basic", "Bearer", "Token", "bearer", "ApiKey"]),
    credential=st.text(alphabet=_TOKEN68, min_size=1, max_size=60),
    padding=st.sampled_from(["", "=", "=="]),
)
def test_scrub__authorization_family__credential_hidden_scheme_and_context_kept(
    *,
    before: str,
    after: str,
    key: str,
    separator: str,
    scheme: str,
    credential: str,
    padding: str,
) -> None:
    header = f"{key}{separator}{scheme} {credential}{padding}"
    assert scrub(_around(before, header, after)) == _around(
        before, f"{key}{separator}{scheme} ***", after
    )
    quoted = f'{{"{key}": "{scheme} {credential}{padding}", "user": "bob"}}'
    assert scrub(quoted) == f'{{"{key}": "{scheme} ***", "user": "bob"}}'


@given(
    before=_PROSE,
    after=_PROSE,
    word=st.sampled_from(["Bearer", "bearer", "BEARER"]),
    token=st.text(alphabet=_TOKEN68, min_size=1, max_size=80),
)
def test_scrub__bearer_family__token_hidden_anywhere(
    before: str, after: str, word: str, token: str
) -> None:
    assert scrub(_around(before, f"{word} {token}", after)) == _around(before, f"{word} ***", after)


_SECRET_WORDS = ["password", "PASSWORD", "Passwd", "pwd", "secret", "Token", "credential", "key"]
_KEY_PART = st.text(alphabet=string.ascii_letters + string.digits, max_size=6)
# Anything but whitespace, quotes and the characters that end an unquoted value.
_UNQUOTED = st.text(
    alphabet=st.characters(
        codec="ascii", categories=["L", "N", "P", "S"], exclude_characters="\"'&,;}*"
    ),
    min_size=1,
    max_size=40,
)
_QUOTED = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters='"\\\n\r', exclude_categories=["Cs"]),
    max_size=40,
)


@given(
    before=_PROSE,
    after=_PROSE,
    prefix=_KEY_PART,
    prefix_joint=st.sampled_from(["", "_", "-", "."]),
    word=st.sampled_from(_SECRET_WORDS),
    suffix_joint=st.sampled_from(["", "_", "-"]),
    suffix=_KEY_PART,
    separator=st.sampled_from(["=", ": ", ":", " = ", "=>"]),
    unquoted=_UNQUOTED,
    quoted=_QUOTED,
)
def test_scrub__secret_key_value_family__value_hidden_other_keys_kept(
    *,
    before: str,
    after: str,
    prefix: str,
    prefix_joint: str,
    word: str,
    suffix_joint: str,
    suffix: str,
    separator: str,
    unquoted: str,
    quoted: str,
) -> None:
    key = f"{prefix}{prefix_joint if prefix else ''}{word}{suffix_joint if suffix else ''}{suffix}"
    assume(not key.endswith(("Error", "Exception", "Warning")))  # a class name, not a key
    assume(not (separator == "=" and unquoted.startswith(">")))  # that reads as "=>"
    assume(not _ends_in_bearer(unquoted))
    text = _around(before, f"user=bob {key}{separator}{unquoted} host=db", after)
    assert scrub(text) == _around(before, f"user=bob {key}{separator}*** host=db", after)
    document = f'{{"user": "bob", "{key}": "{quoted}", "host": "db"}}'
    assert scrub(document) == f'{{"user": "bob", "{key}": "***", "host": "db"}}'


@given(
    parameter=st.sampled_from(
        [
            "X-Amz-Signature",
            "X-Amz-Credential",
            "X-Amz-Security-Token",
            "X-Goog-Signature",
            "X-Goog-Credential",
            "sig",
            "Signature",
        ]
    ),
    value=st.text(alphabet=_ALNUM + "%-._~/+=", min_size=1, max_size=80),
    position=st.sampled_from(["first", "middle", "last"]),
)
def test_scrub__signed_url_family__signature_hidden_other_parameters_kept(
    parameter: str, value: str, position: str
) -> None:
    plain = ["X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Date=20240101T000000Z", "sv=2022-11-02"]
    assume(not _ends_in_bearer(value))
    index = {"first": 0, "middle": 1, "last": 3}[position]

    def url(secret: str) -> str:
        query = [*plain]
        query.insert(index, f"{parameter}={secret}")
        return "GET https://bucket.s3.amazonaws.com/report.csv?" + "&".join(query) + " 403"

    assert scrub(url(value)) == url("***")


_SHAPES = st.one_of(
    st.builds(
        lambda prefix, rest: prefix + rest,
        st.sampled_from(["AKIA", "ASIA", "AROA", "AIDA"]),
        st.text(alphabet=string.ascii_uppercase + string.digits, min_size=16, max_size=16),
    ),
    st.builds(
        lambda header, payload, signature: f"eyJ{header}.eyJ{payload}.{signature}",
        st.text(alphabet=_ALNUM + "-_", min_size=1, max_size=40),
        st.text(alphabet=_ALNUM + "-_", min_size=1, max_size=80),
        st.text(alphabet=_ALNUM + "-_", max_size=60),
    ),
    st.builds(
        lambda prefix, rest: prefix + rest,
        st.sampled_from(["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]),
        st.text(alphabet=_ALNUM, min_size=36, max_size=40),
    ),
    st.builds(
        lambda rest: "github_pat_" + rest,
        st.text(alphabet=_ALNUM + "_", min_size=22, max_size=82),
    ),
)


@given(before=_PROSE, after=_PROSE, token=_SHAPES, wrap=st.sampled_from(["{}", "({})", "'{}'"]))
def test_scrub__token_shape_family__token_hidden_in_any_text(
    before: str, after: str, token: str, wrap: str
) -> None:
    assert scrub(_around(before, wrap.format(token), after)) == _around(
        before, wrap.format(REDACTED), after
    )


@given(
    before=_PROSE,
    after=_PROSE,
    kind=st.sampled_from(["", "RSA ", "EC ", "OPENSSH ", "ENCRYPTED "]),
    body=st.lists(st.text(alphabet=_ALNUM + "+/=", min_size=1, max_size=64), max_size=5),
)
def test_scrub__private_key_family__block_hidden_whole(
    before: str, after: str, kind: str, body: list[str]
) -> None:
    block = "\n".join(
        [f"-----BEGIN {kind}PRIVATE KEY-----", *body, f"-----END {kind}PRIVATE KEY-----"]
    )
    assert scrub(f"{before}\n{block}\n{after}") == f"{before}\n***\n{after}"


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("sslpassword", True),
        ("PGPASSWORD", True),
        ("api_token", True),
        ("sslkey", True),
        ("Proxy-Authorization", True),
        ("X-Amz-Signature", True),
        ("sig", True),
        ("user", False),
        ("host", False),
        ("sslmode", False),
        ("application_name", False),
        ("design", False),
    ],
)
def test_is_secret_name__a_secret_word_anywhere_in_the_name(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret
