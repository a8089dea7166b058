"""The Celery app's configuration and the embedded Redis's start-up checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.celery_app import (
    BEAT_ENTRY,
    SCHEDULED_RECONCILE_TASK,
    TICK_PRIORITY,
    build_config,
    tick_limits,
)
from worker.dispatch import OPERATION_PRIORITY
from worker.errors import ConfigurationError
from worker.lifecycle.policy import parse_policy
from worker.service.embedded import EmbeddedRedis
from worker.settings import Settings


def test_build_config__beat_tick_goes_first_and_lock_lives_one_interval() -> None:
    policy = parse_policy("[reconciliation]\ninterval_seconds = 60\n")
    config = build_config(Settings(broker_url="redis://h:6379/0"), policy)

    entry = config["beat_schedule"][BEAT_ENTRY]
    assert entry["task"] == SCHEDULED_RECONCILE_TASK
    assert entry["schedule"] == 60.0
    # Served before any operation, and superseded only after ten intervals of waiting
    # for a pool slot (tests/worker/test_tick_priority.py runs it in a real worker).
    assert entry["options"]["priority"] == TICK_PRIORITY < OPERATION_PRIORITY
    assert entry["options"]["expires"] == 600.0
    limits = tick_limits(60)
    assert config["task_annotations"][SCHEDULED_RECONCILE_TASK]["time_limit"] == (
        limits.hard_time_limit_seconds
    )
    # The holder extends the lock after each pass; a dead holder's lock expires within
    # one interval, so it delays the next tick by one interval at most.
    assert limits.budget_seconds < limits.lock_ttl_seconds <= 60
    assert config["task_serializer"] == "json"
    assert config["task_acks_late"] is True
    assert config["task_reject_on_worker_lost"] is False
    assert config["imports"][0] == "worker.tasks"


def test_embedded_redis__socket_path_too_long__clear_error(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    with pytest.raises(ConfigurationError, match="107"):
        EmbeddedRedis(deep / "redis.sock", data_dir=deep).start()
