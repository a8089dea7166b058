"""The reconciler's publisher: the new messages of a claim of requeued runs, sent to the
broker together.

Each message is the Celery message ``send_task`` would write for it, at the operations'
priority (:data:`OPERATION_PRIORITY`, as dispatch sends them): built and sent by Celery's
own message layer (``app.amqp.create_task_message``, ``send_task_message``), the task by
name ``operations.<type>`` routed as Celery routes it (the app's
``task_routes`` over the declared operation's own options, where it is registered), under
the run's new task id, with Celery ``retries`` set to the attempts already started -- so
the start takes it for the run's next attempt, as it takes a Celery retry. It is nobody's
child (its root is itself) and has no result to wait for (``ignore_result``: the run row
is an operation's result).

What makes a claim cheap is what a message does not cost: one producer and one
connection for the whole claim, the messages of each chunk buffered and written in one
round trip (kombu's publish batch: a Redis pipeline), no retry policy wrapped round each
message, no result subscription, and none of ``send_task``'s per-call set-up (70 us a
message against 31 us, measured on 5,000).

A failure stops the claim where it happened: the chunk being written (its buffer is
discarded, or its write failed part way) and every message after it are returned as not
sent, and go back to the outbox for a later pass. A message that did reach the broker
before a write failed part way is published again later under the same task id and
attempt; its start refuses the second copy as a duplicate.

Celery is imported on the first claim with something to publish: a pass that requeues
nothing never loads it. A command publishes with an app of its own
(:func:`command_publisher`), configured as runwarden's but without what a worker needs.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from worker.lifecycle.recovery import Publication, Publisher, PublishFailure

if TYPE_CHECKING:
    from worker.lifecycle.policy import LifecyclePolicy

logger = logging.getLogger(__name__)

#: Every operation task's name is this prefix and its run type.
OPERATION_TASK_PREFIX = "operations."
#: Operation messages' priority on the Redis broker (a lower number is served first): below
#: the beat tick's (worker.celery_config.TICK_PRIORITY), so a backlog of operations never
#: keeps the reconciler waiting for more than one free pool slot.
OPERATION_PRIORITY = 3
#: Messages written in one round trip: a claim (at most the largest pass, 500) in one.
PUBLISH_CHUNK = 500
#: kombu flushes a publish batch by itself once it holds ``max_size`` commands; it is set
#: past anything a chunk writes (a message is one LPUSH, and one PEXPIRE per priority
#: step with queue expiry), so a chunk is written once and a failed write names exactly
#: the chunk's messages.
_MAX_COMMANDS_PER_MESSAGE = 16
#: Of a registered operation's own options (``celery.app.task.extract_exec_options``),
#: those ``send_task`` writes into the message itself; the rest (routing, encoding) go
#: through the app's router to the publish, as there.
_MESSAGE_OPTIONS = ("time_limit", "soft_time_limit", "expires")


def operation_task_name(type_name: str) -> str:
    """The Celery task name of run type ``type_name``."""
    return f"{OPERATION_TASK_PREFIX}{type_name}"


def is_operation_task(name: object) -> bool:
    return isinstance(name, str) and name.startswith(OPERATION_TASK_PREFIX)


def publish_requeued(
    publications: Sequence[Publication], *, app: Any = None, chunk: int = PUBLISH_CHUNK
) -> list[PublishFailure]:
    """Publish ``publications`` (a claim), in order, on one producer, ``chunk`` messages
    a round trip; return those not sent, each with the error that stopped them (see the
    module's doc). ``app`` is the Celery app to publish with (default: runwarden's)."""
    if not publications:
        return []
    if app is None:
        from worker.celery_app import app as default_app

        app = default_app
    sent = 0
    try:
        claim = _Claim(app)
        with app.producer_or_acquire() as producer:
            # Connected once for the claim, retried as the app's publish retry policy says
            # (what send_task does for each message): a broker that is down fails the
            # claim in the policy's time, not each message in it.
            producer.connection.ensure_connection(**_connect_policy(app))
            while sent < len(publications):
                written = publications[sent : sent + chunk]
                # Leaving the block writes the chunk; an error inside discards it unsent.
                with producer.batch(max_size=_MAX_COMMANDS_PER_MESSAGE * len(written)):
                    for publication in written:
                        claim.buffer(producer, publication)
                sent += len(written)
                for publication in written:
                    logger.info(
                        "requeued operation run %s published as attempt %s",
                        publication.run_id,
                        publication.retries + 1,
                        extra={"operation_run_id": publication.run_id},
                    )
    except Exception as exc:  # kombu/redis raise many types; any of them means "not sent"
        return [PublishFailure(publication, exc) for publication in publications[sent:]]
    return []


def command_publisher(policy: LifecyclePolicy) -> Publisher:
    """The publisher of a command (``runwarden reconcile``): :func:`publish_requeued` with
    a Celery app of the command's own, made on the first claim with something in it and
    configured as runwarden's app is (:func:`worker.celery_config.build_config`, from
    the settings and ``policy``) -- but without importing :mod:`worker.celery_app`, whose
    bridge receivers, task modules and ORM a publish needs none of (a twentieth of a
    second of start-up)."""

    @functools.cache
    def app() -> Any:
        from celery import Celery

        from worker.celery_config import build_config
        from worker.settings import get_settings

        command_app = Celery("runwarden", set_as_current=False)
        command_app.config_from_object(build_config(get_settings(), policy))
        return command_app

    def publish(publications: Sequence[Publication]) -> list[PublishFailure]:
        return publish_requeued(publications, app=app())

    return publish


def _connect_policy(app: Any) -> dict[str, Any]:
    if not app.conf.task_publish_retry:
        return {"max_retries": 0}
    policy = app.conf.task_publish_retry_policy or {}
    keys = ("max_retries", "interval_start", "interval_step", "interval_max")
    return {key: policy[key] for key in keys if key in policy}


class _Claim:
    """What one claim's messages share: the app's message layer, each type's options (read
    once), and the queues already declared on this connection."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._amqp = app.amqp
        self._reply_to = app.thread_oid
        self._sent_event = app.conf.task_send_sent_event
        self._options: dict[str, tuple[Any, dict[str, Any], dict[str, Any]]] = {}
        self._declared: set[str] = set()

    def buffer(self, producer: Any, publication: Publication) -> None:
        name = operation_task_name(publication.type)
        task, options, limits = self._options_of(name)
        kwargs = {"operation_run_id": publication.run_id}
        # Routed per message, as send_task does: a router may look at the arguments.
        route = self._amqp.router.route(dict(options), name, (), kwargs, task)
        queue = route.get("queue")
        queue_name = getattr(queue, "name", queue)
        if queue_name in self._declared:
            # Declared with the claim's first message for it; kombu would find it in its
            # cache, at a price for each message.
            route["declare"] = []
        self._declared.add(queue_name)
        message = self._amqp.create_task_message(
            publication.celery_task_id,
            name,
            (),
            kwargs,
            retries=publication.retries,
            reply_to=self._reply_to,
            create_sent_event=self._sent_event,
            ignore_result=True,
            # What Celery's saferepr makes of them, without its cost.
            argsrepr="()",
            kwargsrepr=repr(kwargs),
            **limits,
        )
        # The claim is the unit that fails and is given back: no retry of one message.
        self._amqp.send_task_message(producer, name, message, retry=False, **route)

    def _options_of(self, name: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        found = self._options.get(name)
        if found is None:
            from celery.app.task import extract_exec_options

            # Registered where the operation is declared (a worker); a command knows
            # only the app's routes, as send_task there does.
            task = self._app.tasks.get(name)
            declared = {
                key: value
                for key, value in (extract_exec_options(task) if task is not None else {}).items()
                if value is not None
            }
            limits = {key: declared.pop(key) for key in _MESSAGE_OPTIONS if key in declared}
            if isinstance(limits.get("expires"), int | float):
                # As send_task: the broker's TTL too, never below zero.
                declared["expiration"] = max(0.0, float(limits["expires"]))
            # As dispatch sends it, over the operation's own and any route's.
            declared["priority"] = OPERATION_PRIORITY
            found = self._options[name] = (task, declared, limits)
        return found
