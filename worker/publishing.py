"""The reconciler's publisher: the new messages of a claim of requeued runs, sent to the
broker together.

Each message is a Celery message like any other (``send_task``: the task by name
``operations.<type>``, routed as Celery routes it, under the run's new task id, with
Celery ``retries`` set to the attempts already started -- so the start takes it for the
run's next attempt, as it takes a Celery retry). What makes a claim cheap is how they go
out: one producer and one connection for the whole claim, the messages of each chunk
buffered and written in one round trip (kombu's publish batch: a Redis pipeline), no
retry policy wrapped round each message, and no result subscription (nobody waits for
an operation task's result: the run row is its result).

A failure stops the claim where it happened: the chunk being written (its buffer is
discarded, or its write failed part way) and every message after it are returned as not
sent, and go back to the outbox for a later pass. A message that did reach the broker
before a write failed part way is published again later under the same task id and
attempt; its start refuses the second copy as a duplicate.

Celery is imported on the first claim with something to publish: a pass that requeues
nothing never loads it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from worker.lifecycle.recovery import Publication, PublishFailure

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
    declared: set[str] = set()
    try:
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
                        _buffer(app, producer, publication, declared)
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


def _connect_policy(app: Any) -> dict[str, Any]:
    if not app.conf.task_publish_retry:
        return {"max_retries": 0}
    policy = app.conf.task_publish_retry_policy or {}
    keys = ("max_retries", "interval_start", "interval_step", "interval_max")
    return {key: policy[key] for key in keys if key in policy}


def _buffer(app: Any, producer: Any, publication: Publication, declared: set[str]) -> None:
    name = operation_task_name(publication.type)
    kwargs = {"operation_run_id": publication.run_id}
    options: dict[str, Any] = {}
    if name in declared:
        # Its queue was declared with the claim's first message of the type (kombu would
        # find it in its cache, at a price for each message).
        options["declare"] = []
    declared.add(name)
    app.send_task(
        name,
        kwargs=kwargs,
        task_id=publication.celery_task_id,
        retries=publication.retries,
        priority=OPERATION_PRIORITY,
        producer=producer,
        # The batch is the unit that fails and is given back; no retry of one message.
        retry=False,
        # No result subscription per message: an operation's result is its run row.
        ignore_result=True,
        # What Celery's saferepr makes of them, without its cost.
        argsrepr="()",
        kwargsrepr=repr(kwargs),
        **options,
    )
