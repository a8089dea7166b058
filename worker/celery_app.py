"""The Celery app (``celery -A worker.celery_app worker|beat``) and its beat schedule.

Configuration is read from :class:`worker.settings.Settings` and the lifecycle policy when
Celery first needs it (``on_configure``), not at import, so a process can set its
environment before touching the app. Importing this module connects the failed-job bridge
receivers, so they exist in the worker's main process and in every pool child.

Delivery semantics, chosen deliberately:

- ``acks_late``: a message is acknowledged only after its task ended, so a message whose
  whole worker vanished (host crash, OOM of the main process) is delivered again. The
  redelivery cannot run the body twice: the task-start CAS on the run's attempt count
  refuses it (``Ignore``), and the run is then ended truthfully by the reconciler once
  it stops heartbeating.
- ``reject_on_worker_lost = False``: when only a pool child dies, requeueing would
  swallow ``task_failure`` and the redelivery would be refused as a duplicate -- the run
  would sit ``running`` until the reconciler. Acknowledging instead lets the bridge record
  ``run.worker_lost`` at once.
- ``worker_prefetch_multiplier = 1``: operations are long; a worker must not hoard
  messages that an idle worker could start.
- Priorities (Redis: 0 is served first): operation messages are published at
  :data:`worker.publishing.OPERATION_PRIORITY`, the beat tick at :data:`TICK_PRIORITY`, so
  the next free pool slot takes the tick before any queued operation. Without it, a
  backlog longer than the interval made every tick expire in the queue, and nothing was
  reconciled until the backlog drained. A tick still waits for a slot: a pool whose every
  slot runs a long body delays it until one ends (its expiry is long enough for that).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from celery import Celery, signals

from worker.lifecycle.policy import LifecyclePolicy
from worker.settings import Settings, current_policy, get_settings

RECONCILE_TASK = "runwarden.reconcile_operation_runs"
SCHEDULED_RECONCILE_TASK = "runwarden.reconcile_scheduled"
BEAT_ENTRY = "reconcile-operation-runs"
#: The tick's message priority: on the Redis broker a lower number is served first, and
#: operations are published at :data:`worker.publishing.OPERATION_PRIORITY`.
TICK_PRIORITY = 0
#: How many intervals a tick may wait for a pool slot before it is superseded.
TICK_EXPIRY_INTERVALS = 10

app = Celery("runwarden")


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


def _configure(sender: Celery, **_: Any) -> None:
    # Runs once, when Celery first reads its configuration. Values set on app.conf
    # before that (tests, embedding applications) take precedence over these.
    sender.config_from_object(build_config(get_settings(), current_policy()))


def _setup_logger(logger: Any, **_: Any) -> None:
    # Celery's own loggers and the task logger alike: scrubbed, JSON on request.
    from worker.logs import configure_handlers

    configure_handlers(logger, log_format=get_settings().log_format)


app.on_configure.connect(_configure, weak=False)
signals.after_setup_logger.connect(_setup_logger, weak=False)
signals.after_setup_task_logger.connect(_setup_logger, weak=False)

# Connect the failed-job bridge now, in whichever process imported the app.
from worker import bridge as _bridge  # noqa: E402
from worker.liveness import LivenessStep  # noqa: E402

_bridge.connect()
# A worker's main process registers and heartbeats in runwarden_workers.
app.steps["worker"].add(LivenessStep)
