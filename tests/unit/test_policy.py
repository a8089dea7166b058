from __future__ import annotations

import re
from pathlib import Path

import pytest

from worker.errors import PolicyError
from worker.lifecycle.policy import LifecyclePolicy, load_policy, parse_policy

VALID = """
[reconciliation]
batch_limit = 250
interval_seconds = 30

[types."inventory.sync"]
queued_stale_after_seconds = 600
running_stale_after_seconds = 3600

[types."report.export"]
queued_stale_after_seconds = 60
running_stale_after_seconds = 120
scheduled_reconciliation = false
direct_failed_bridge = false
"""


_SYNC = '[types."inventory.sync"]\n'


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def test_load_policy__reads_thresholds_flags_and_limits(tmp_path: Path) -> None:
    policy = load_policy(_write(tmp_path, VALID))
    assert policy.interval_seconds == 30
    assert policy.batch_limit == policy.reconciliation_batch_limit() == 250
    assert policy.covered_type_names() == ("inventory.sync", "report.export")
    assert policy.supports("inventory.sync")
    assert not policy.supports("restore.run")
    assert policy.queued_stale_after_seconds("inventory.sync") == 600
    assert policy.running_stale_after_seconds("report.export") == 120
    assert policy.supports_scheduled_reconciliation("inventory.sync")
    assert not policy.supports_scheduled_reconciliation("report.export")
    assert not policy.supports_scheduled_reconciliation("restore.run")
    assert policy.requires_direct_failed_bridge("inventory.sync")
    assert not policy.requires_direct_failed_bridge("report.export")


def test_load_policy__is_frozen(tmp_path: Path) -> None:
    policy = load_policy(_write(tmp_path, VALID))
    with pytest.raises(AttributeError):
        policy.batch_limit = 1  # type: ignore[misc]


def test_load_policy__packaged_default_covers_examples_including_scheduled_only() -> None:
    policy = load_policy()
    assert isinstance(policy, LifecyclePolicy)
    assert {"inventory.sync", "backup.create", "restore.run"} <= set(policy.covered_type_names())
    assert any(not policy.requires_direct_failed_bridge(t) for t in policy.covered_type_names())
    assert 1 <= policy.batch_limit <= 500


def test_load_policy__none_reads_the_configured_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.settings import get_settings

    monkeypatch.setenv("RUNWARDEN_POLICY_FILE", str(_write(tmp_path, VALID)))
    get_settings.cache_clear()
    assert load_policy().batch_limit == 250


def test_load_policy__reconciliation_defaults_when_section_missing() -> None:
    policy = parse_policy(
        "[types.a]\nqueued_stale_after_seconds = 1\nrunning_stale_after_seconds = 2\n"
    )
    assert (policy.batch_limit, policy.interval_seconds) == (100, 60)


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (
            _SYNC + "queued_stale_after_seconds = 0\nrunning_stale_after_seconds = 1",
            'types."inventory.sync".queued_stale_after_seconds',
            "must be a positive integer",
        ),
        (
            _SYNC + "queued_stale_after_seconds = true\nrunning_stale_after_seconds = 1",
            'types."inventory.sync".queued_stale_after_seconds',
            "must be a positive integer",
        ),
        (
            _SYNC + 'queued_stale_after_seconds = "600"\nrunning_stale_after_seconds = 1',
            'types."inventory.sync".queued_stale_after_seconds',
            "must be a positive integer",
        ),
        (
            _SYNC + "queued_stale_after_seconds = 1.5\nrunning_stale_after_seconds = 1",
            'types."inventory.sync".queued_stale_after_seconds',
            "must be a positive integer",
        ),
        (
            _SYNC + "queued_stale_after_seconds = 5",
            'types."inventory.sync".running_stale_after_seconds',
            "missing",
        ),
        (
            "[types.a]\nqueued_stale_after_seconds = 5\nrunning_stale_after_seconds = 5\n"
            'direct_failed_bridge = "no"',
            "types.a.direct_failed_bridge",
            "must be true or false",
        ),
        (
            "[types.a]\nqueued_stale_after_seconds = 5\nrunning_stale_after_seconds = 5\n"
            "scheduled_reconcilation = true",
            "types.a.scheduled_reconcilation",
            "unknown key",
        ),
        ("[reconciliation]\nbatch_limit = 501", "reconciliation.batch_limit", "between 1 and 500"),
        ("[reconciliation]\nbatch_limit = 0", "reconciliation.batch_limit", "positive integer"),
        (
            "[reconciliation]\ninterval_seconds = -5",
            "reconciliation.interval_seconds",
            "positive integer",
        ),
        ("[reconciliation]\nbatchlimit = 5", "reconciliation.batchlimit", "unknown key"),
        ("[reconcile]\nbatch_limit = 5", "reconcile", "unknown key"),
        ('types = "inventory.sync"', "types", "must be a table"),
        ('[types]\n"inventory.sync" = 5', 'types."inventory.sync"', "must be a table"),
    ],
)
def test_load_policy__invalid_value_names_file_and_key(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(PolicyError) as raised:
        load_policy(path)
    assert raised.value.message.startswith(f"{path}: {key}: ")
    assert problem in raised.value.message
    assert raised.value.exit_code == 2


def test_load_policy__toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "[types.a\nqueued = 1")
    with pytest.raises(PolicyError, match=rf"^{path}: invalid TOML"):
        load_policy(path)


def test_load_policy__missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(PolicyError, match=rf"^{path}: cannot read the policy file"):
        load_policy(path)


@pytest.mark.parametrize("key", ["queued_stale_after_seconds", "running_stale_after_seconds"])
@pytest.mark.parametrize(
    "value",
    [
        315_360_001,  # one second past ten years
        2_147_483_648,  # 2**31: passed a dry run, then failed PostgreSQL's int recordset
        99_999_999_999,  # made every pass die with OverflowError (now - timedelta)
    ],
)
def test_load_policy__threshold_beyond_ten_years_names_the_key_and_the_bound(
    tmp_path: Path, key: str, value: int
) -> None:
    thresholds = {"queued_stale_after_seconds": 60, "running_stale_after_seconds": 60, key: value}
    path = _write(tmp_path, _SYNC + "".join(f"{k} = {v}\n" for k, v in thresholds.items()))
    with pytest.raises(PolicyError) as raised:
        load_policy(path)
    message = raised.value.message
    assert message.startswith(f'{path}: types."inventory.sync".{key}: ')
    assert "between 1 and 315360000" in message
    assert str(value) in message


@pytest.mark.parametrize("value", [86_401, 99_999_999_999])
def test_load_policy__interval_beyond_a_day_names_the_key_and_the_bound(
    tmp_path: Path, value: int
) -> None:
    path = _write(tmp_path, f"[reconciliation]\ninterval_seconds = {value}\n")
    with pytest.raises(PolicyError) as raised:
        load_policy(path)
    message = raised.value.message
    assert message.startswith(f"{path}: reconciliation.interval_seconds: ")
    assert "between 1 and 86400" in message


def test_load_policy__values_at_the_bounds_load() -> None:
    policy = parse_policy(
        "[reconciliation]\ninterval_seconds = 86400\nbatch_limit = 500\n"
        + _SYNC
        + "queued_stale_after_seconds = 315360000\nrunning_stale_after_seconds = 315360000\n"
    )
    assert policy.interval_seconds == 86_400
    assert policy.queued_stale_after_seconds("inventory.sync") == 315_360_000
    assert policy.running_stale_after_seconds("inventory.sync") == 315_360_000


_FORMATTED = """
# the same rules, written another way
[types."b.two"]
running_stale_after_seconds = 30
queued_stale_after_seconds = 20
scheduled_reconciliation = true

[reconciliation]
interval_seconds = 60
batch_limit = 100

[types."a.one"]
queued_stale_after_seconds = 10
running_stale_after_seconds = 10
"""
_PLAIN = """
[types."a.one"]
queued_stale_after_seconds = 10
running_stale_after_seconds = 10
[types."b.two"]
queued_stale_after_seconds = 20
running_stale_after_seconds = 30
"""


def test_policy_sha256__formatting_order_comments_and_written_defaults_do_not_change_it() -> None:
    assert parse_policy(_FORMATTED).sha256 == parse_policy(_PLAIN).sha256
    assert len(parse_policy(_PLAIN).sha256) == 64


@pytest.mark.parametrize(
    "changed",
    [
        _PLAIN.replace("= 30", "= 31"),
        _PLAIN + "direct_failed_bridge = false\n",
        _PLAIN + "scheduled_reconciliation = false\n",
        "[reconciliation]\nbatch_limit = 99\n" + _PLAIN,
        _PLAIN.replace('"a.one"', '"a.uno"'),
        "[workers]\nlost_after_seconds = 61\n" + _PLAIN,
    ],
    ids=["threshold", "bridge", "scheduled", "batch limit", "type name", "lost after"],
)
def test_policy_sha256__any_rule_changes_it(changed: str) -> None:
    assert parse_policy(changed).sha256 != parse_policy(_PLAIN).sha256


def test_policy_to_toml__loads_back_to_the_same_policy() -> None:
    policy = load_policy()
    again = parse_policy(policy.to_toml())
    assert again.sha256 == policy.sha256
    assert again.to_dict() == policy.to_dict()


def test_load_policy__workers_defaults_and_packaged_values() -> None:
    assert parse_policy("").workers.heartbeat_interval_seconds == 10
    assert parse_policy("").workers.lost_after_seconds == 60
    # A longer interval alone moves the default threshold along (3 beats at least).
    assert (
        parse_policy("[workers]\nheartbeat_interval_seconds = 30\n").workers.lost_after_seconds
        == 90
    )
    packaged = load_policy().workers
    assert (packaged.heartbeat_interval_seconds, packaged.lost_after_seconds) == (10, 60)
    assert load_policy().to_dict()["workers"] == {
        "heartbeat_interval_seconds": 10,
        "lost_after_seconds": 60,
    }


@pytest.mark.parametrize(
    ("workers", "message"),
    [
        (
            "heartbeat_interval_seconds = 10\nlost_after_seconds = 29",
            "workers.lost_after_seconds: must be at least 3 x "
            "workers.heartbeat_interval_seconds = 30 (got 29)",
        ),
        (
            "heartbeat_interval_seconds = 0",
            "workers.heartbeat_interval_seconds: must be a positive",
        ),
        ("lost_after_seconds = '60'", "workers.lost_after_seconds: must be a positive integer"),
        ("lost_after_seconds = 86401", "workers.lost_after_seconds: must be between 1 and 86400"),
        ("heartbeat_interval_seconds = 3601", "must be between 1 and 3600"),
        ("stale_after = 5", "workers.stale_after: unknown key"),
    ],
)
def test_load_policy__bad_workers_section_names_the_key(workers: str, message: str) -> None:
    with pytest.raises(PolicyError, match=r"^p\.toml: ") as raised:
        parse_policy(f"[workers]\n{workers}\n", source="p.toml")
    assert message in str(raised.value)


_WINDOWS = "queued_stale_after_seconds = 60\nrunning_stale_after_seconds = 60\n"


def test_load_policy__recovery_defaults_to_fail_once() -> None:
    policy = parse_policy(_SYNC + _WINDOWS)
    sync = policy.type_policy("inventory.sync")
    assert (sync.recovery, sync.max_attempts, policy.retries("inventory.sync")) == (
        "fail",
        1,
        False,
    )
    assert policy.to_dict()["types"]["inventory.sync"]["recovery"] == "fail"
    assert policy.to_dict()["types"]["inventory.sync"]["max_attempts"] == 1


def test_load_policy__recovery_retry_with_attempts() -> None:
    policy = parse_policy(_SYNC + _WINDOWS + 'recovery = "retry"\nmax_attempts = 3\n')
    assert policy.retries("inventory.sync")
    assert policy.max_attempts("inventory.sync") == 3
    assert parse_policy(policy.to_toml()).sha256 == policy.sha256
    # retry with max_attempts = 1 is allowed and means fail.
    once = parse_policy(_SYNC + _WINDOWS + 'recovery = "retry"\n')
    assert not once.retries("inventory.sync")


_KEY = 'types."inventory.sync".'


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('recovery = "again"', "recovery: must be 'fail' or 'retry'"),
        ("recovery = true", "recovery: must be 'fail' or 'retry'"),
        ("max_attempts = 0", "max_attempts: must be a positive integer"),
        ('max_attempts = "2"', "max_attempts: must be a positive integer"),
        ("max_attempts = true", "max_attempts: must be a positive integer"),
        ("max_attempts = 101", "max_attempts: must be between 1 and 100"),
    ],
)
def test_load_policy__bad_recovery_names_the_key(line: str, message: str) -> None:
    with pytest.raises(PolicyError, match="^" + re.escape(f"<policy>: {_KEY}{message}")) as raised:
        parse_policy(_SYNC + _WINDOWS + line + "\n")
    assert "\n" not in str(raised.value)
