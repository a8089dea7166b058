"""The Celery configuration of runwarden's app, as data: no app, no receivers, no Celery.

:mod:`worker.celery_app` configures the app workers run with from it; a command that only
publishes (:mod:`worker.publishing`) configures a bare app from it, without importing
what a worker needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from worker.lifecycle.policy import LifecyclePolicy
from worker.settings import Settings

RECONCILE_TASK = "runwarden.reconcile_operation_runs"
SCHEDULED_RECONCILE_TASK = "runwarden.reconcile_scheduled"
BEAT_ENTRY = "reconcile-operation-runs"
#: The tick's message priority: on the Redis broker a lower number is served first, and
#: operations are published at :data:`worker.publishing.OPERATION_PRIORITY`.
TICK_PRIORITY = 0
#: How many intervals a tick may wait for a pool slot before it is superseded.
TICK_EXPIRY_INTERVALS = 10


@dataclass(frozen=True, slots=True)
class TickLimits:
    """Timing of one scheduled reconciliation tick, all derived from the beat interval."""

    #: drain passes until this is spent; the rest of the interval is slack.
    budget_seconds: float
    soft_time_limit_seconds: int
    hard_time_limit_seconds: int
    #: the tick's lock lives one interval and its holder extends it after each pass: a
    #: holder killed mid-tick delays the next tick by one interval at most.
    lock_ttl_seconds: int


def tick_limits(interval_seconds: int) -> TickLimits:
    budget = max(1.0, interval_seconds * 0.5)
    # One pass is bounded (500 runs, milliseconds each); the margins cover a slow database.
    soft = math.ceil(budget) + 30
    hard = soft + 30
    return TickLimits(
        budget_seconds=budget,
        soft_time_limit_seconds=soft,
        hard_time_limit_seconds=hard,
        lock_ttl_seconds=interval_seconds,
    )


def build_config(settings: Settings, policy: LifecyclePolicy) -> dict[str, Any]:
    """The Celery configuration for ``settings`` and ``policy``."""
    limits = tick_limits(policy.interval_seconds)
    return {
        "broker_url": settings.resolved_broker_url,
        "result_backend": settings.resolved_result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        "imports": ("worker.tasks", *settings.imports),
        "task_acks_late": True,
        "task_reject_on_worker_lost": False,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        # Reconcile results are read by whoever asked; nobody reads them after an hour.
        "result_expires": 3600,
        # The run row is the result of an operation; never keep raw exception text around.
        "task_store_errors_even_if_ignored": False,
        # A dead broker must fail a publish within seconds (dispatch then records
        # run.dispatch_failed) instead of hanging the caller.
        "broker_connection_timeout": 4,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": True,
        "worker_send_task_events": False,
        "task_annotations": {
            SCHEDULED_RECONCILE_TASK: {
                "soft_time_limit": limits.soft_time_limit_seconds,
                "time_limit": limits.hard_time_limit_seconds,
            },
        },
        "beat_schedule": {
            BEAT_ENTRY: {
                "task": SCHEDULED_RECONCILE_TASK,
                "schedule": float(policy.interval_seconds),
                # Ahead of every queued operation; superseded after a while, so ticks
                # do not pile up while workers are down (a late tick finds the lock held
                # or nothing left to do: it costs milliseconds).
                "options": {
                    "expires": float(policy.interval_seconds * TICK_EXPIRY_INTERVALS),
                    "priority": TICK_PRIORITY,
                },
            }
        },
    }
