"""The Celery app (``celery -A worker.celery_app worker|beat``) and its beat schedule.

Configuration (:func:`worker.celery_config.build_config`) is read from
:class:`worker.settings.Settings` and the lifecycle policy when Celery first needs it
(``on_configure``), not at import, so a process can set its environment before touching
the app. Importing this module connects the failed-job bridge
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
  :data:`worker.publishing.OPERATION_PRIORITY`, the beat tick at
  :data:`worker.celery_config.TICK_PRIORITY`, so the next free pool slot takes the tick
  before any queued operation. Without it, a backlog longer than the interval made every
  tick expire in the queue, and nothing was reconciled until the backlog drained. A tick
  still waits for a slot: a pool whose every slot runs a long body delays it until one
  ends (its expiry is long enough for that).
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from worker.celery_config import (
    BEAT_ENTRY,
    RECONCILE_TASK,
    SCHEDULED_RECONCILE_TASK,
    TICK_EXPIRY_INTERVALS,
    TICK_PRIORITY,
    TickLimits,
    build_config,
    tick_limits,
)
from worker.settings import current_policy, get_settings

__all__ = [
    "BEAT_ENTRY",
    "RECONCILE_TASK",
    "SCHEDULED_RECONCILE_TASK",
    "TICK_EXPIRY_INTERVALS",
    "TICK_PRIORITY",
    "TickLimits",
    "app",
    "build_config",
    "tick_limits",
]

app = Celery("runwarden")


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
