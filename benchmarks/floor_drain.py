"""The floor of a backlog drain: bare psycopg, one SQL statement per pass, no ORM, no CLI
framework.

It does the work of ``runwarden reconcile --drain --json`` and nothing less, so the drain
benchmark's ratio measures runwarden's own overhead (start-up, Python per row):

* the stale scan over the partial index ``ix_operation_runs_active_scan`` (status written
  as literals: a bound status list would not match the index predicate), in the index's
  order (type, status, oldest first; the index carries id after them, so runs sharing a
  creation time cost nothing more), ``FOR UPDATE SKIP LOCKED``. Not ``ORDER BY id``: on
  450,000 runs the planner then prefers walking the primary key, filtering out every run
  already completed, and a pass grows from 4 ms to 110 ms as the drain advances;
* the staleness rule on the database's clock (``now()``), a running run judged by the
  later of its last sign of life and its retry's due time;
* the worker that started a running run (joined; lost after ``lost_after_seconds`` of
  silence on the database's clock counted from its last heartbeat or the server's start,
  or stopped: ``run.worker_lost``), and its evidence; a run on a live worker stale only
  once that worker was heard after the run's window;
* the legitimacy inputs (tenant and user joined) and the full evidence, the policy's
  hash included;
* recovery: the try a run is on (``attempts + unstarted_attempts``, plus one for a queued
  run), and its action -- ``requeue`` for a retry type with tries left whose run is queued
  past its window (counted from ``COALESCE(requeued_at, created_at)``) or running on a
  lost worker, ``force_fail`` otherwise; the evidence's ``attempt``/``attempts``/
  ``max_attempts``;
* two conditional UPDATEs, compare-and-set on the status judged: one writing
  ``context.reconciliation`` and one failure entry, one putting a requeued run back to
  queued under a ``gen_random_uuid`` task id (worker cleared, ``requeued_at``,
  ``publish_pending``, ``unstarted_attempts``; also CAS on ``attempts``);
* one audit row per run written (``operation_run.force_failed`` or
  ``operation_run.requeued``);
* every change object (with its ``action``, and a requeue's ``after``) built in the same
  statement and printed as one JSON document with the sums and ``passes`` (streamed pass
  by pass: the changes first, then the sums);
* the outbox, as runwarden's drain does it: the claim statement once before the first pass
  and after every pass that requeued, then each claimed queued run's Celery message
  (protocol 2, the JSON envelope ``send_task`` writes, ``retries`` = attempts) pushed onto
  the default queue's Redis list at ``RUNWARDEN_BROKER_URL`` -- one LPUSH per message, the
  claim's messages sent in one pipelined round trip, kombu's queue bindings added once;
  at the operations' priority (3), so onto the list kombu keeps for it
  (``celery\x06\x163``: one list per priority step), as runwarden's messages are.
  It does not give a claim back when a push fails (runwarden's ``release_publications``):
  the benchmark's broker is up, and a failed push ends the floor with a traceback.

Reads ``RUNWARDEN_DATABASE_URL``, ``RUNWARDEN_DB_SCHEMA``, ``RUNWARDEN_POLICY_FILE`` and
``RUNWARDEN_BROKER_URL`` like runwarden does (the policy's ``[tenancy]`` only for its hash:
the floor reads runwarden's own tables).
Usage: ``python benchmarks/floor_drain.py [--limit 500] [--source on_demand_reconciler]``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import socket
import sys
import tomllib
import uuid

import psycopg
import redis

PASS_SQL = """
WITH policy AS (
    SELECT * FROM jsonb_to_recordset(%(policy)s::jsonb)
        AS p(type text, queued_s int, running_s int, truth_path text, retry boolean,
             max_attempts int)
),
candidates AS (
    SELECT r.id, r.type, r.status, r.outcome, r.workspace_id, r.tenant_id, r.user_id,
           r.attempts, p.retry, p.max_attempts,
           r.attempts + r.unstarted_attempts + CASE WHEN r.status = 'queued' THEN 1 ELSE 0 END
               AS attempt,
           COALESCE(w.lost, false) AS lost,
           CASE WHEN w.lost THEN %(lost_after_s)s::int
                WHEN r.status = 'queued' THEN p.queued_s ELSE p.running_s END
               AS threshold_seconds,
           CASE WHEN w.lost THEN COALESCE(w.stopped_at, w.last_heartbeat_at)
                WHEN r.status = 'queued' THEN COALESCE(r.requeued_at, r.created_at)
                ELSE GREATEST(COALESCE(r.last_heartbeat_at, r.started_at, r.created_at),
                              r.retry_due_at) END
               AS reference_time,
           p.truth_path,
           w.id AS worker_id, w.nodename, w.hostname, w.pid,
           w.last_heartbeat_at AS worker_seen, w.stopped_at AS worker_stopped
    FROM operation_runs AS r
    JOIN policy AS p ON p.type = r.type
    LEFT JOIN LATERAL (
        SELECT w.*, w.stopped_at IS NOT NULL
                    OR GREATEST(w.last_heartbeat_at, pg_postmaster_start_time())
                       < now() - make_interval(secs => %(lost_after_s)s)
                    AS lost
        FROM runwarden_workers AS w
        WHERE w.id = r.worker_id AND r.status = 'running' AND r.retry_due_at IS NULL
    ) AS w ON true
    WHERE r.status IN ('queued', 'running')
      AND (CASE WHEN r.status = 'queued'
                THEN COALESCE(r.requeued_at, r.created_at)
                     < now() - make_interval(secs => p.queued_s)
                ELSE GREATEST(COALESCE(r.last_heartbeat_at, r.started_at, r.created_at),
                              r.retry_due_at)
                     < now() - make_interval(secs => p.running_s)
                     AND (w.id IS NULL
                          OR COALESCE(r.last_heartbeat_at, r.started_at, r.created_at)
                             < w.last_heartbeat_at - make_interval(secs => p.running_s)) END
           OR w.lost)
    -- The partial index's own order: ORDER BY id would let the planner walk the primary
    -- key past every completed run (the cost grows with each pass of a drain).
    ORDER BY r.type, r.status, r.created_at
    LIMIT %(limit)s
    FOR UPDATE OF r SKIP LOCKED
),
checked AS (
    SELECT c.*,
           c.tenant_id IS NULL OR t.id IS NOT NULL AS tenant_exists,
           c.tenant_id IS NULL OR coalesce(t.is_active, false) AS tenant_active,
           c.tenant_id IS NULL OR coalesce(t.workspace_id = c.workspace_id, false)
               AS tenant_in_workspace,
           c.user_id IS NULL OR coalesce(u.is_active, false) AS user_active
    FROM candidates AS c
    LEFT JOIN tenants AS t ON t.id = c.tenant_id
    LEFT JOIN users AS u ON u.id = c.user_id
),
assessed AS (
    SELECT k.*,
           CASE WHEN k.lost THEN 'run.worker_lost'
                WHEN k.status = 'queued' THEN 'run.stale_queued' ELSE 'run.stale_running' END
               AS reason_code,
           CASE WHEN k.lost
                THEN 'The worker process running the task died before it finished.'
                WHEN k.status = 'queued'
                THEN 'Run was queued but never started within its lifecycle window.'
                ELSE 'Run started but did not finish within its lifecycle window.' END
               AS reason_message,
           -- Recovery: a lost message or worker on a retry type with tries left is
           -- requeued; anything else fails.
           CASE WHEN k.retry AND (k.lost OR k.status = 'queued')
                     AND k.attempt < k.max_attempts THEN 'requeue'
                ELSE 'force_fail' END AS action,
           CASE WHEN NOT k.tenant_exists THEN 'execution.tenant_missing'
                WHEN NOT k.tenant_active THEN 'execution.tenant_inactive'
                WHEN NOT k.tenant_in_workspace THEN 'execution.tenant_workspace_mismatch'
                WHEN NOT k.user_active THEN 'execution.user_inactive' END
               AS legitimacy_reason
    FROM checked AS k
),
evidenced AS (
    SELECT a.id, a.type, a.status, a.outcome, a.reason_code, a.reason_message, a.action,
           a.attempts,
           json_build_object(
               'evaluated_at', now(),
               'freshness_state', 'likely_stale',
               'threshold_seconds', a.threshold_seconds,
               'reference_time', a.reference_time,
               'status', a.status,
               'execution_legitimacy', json_build_object(
                   'allowed', a.legitimacy_reason IS NULL,
                   'reason_code', a.legitimacy_reason,
                   'checks', json_build_object(
                       'run_non_terminal', true,
                       'tenant_exists', a.tenant_exists,
                       'tenant_active', a.tenant_active,
                       'tenant_in_workspace', a.tenant_in_workspace,
                       'user_active', a.user_active,
                       'type_covered', true)),
               'terminal_truth_path', a.truth_path,
               'policy_sha256', %(policy_sha256)s::text,
               'worker', CASE WHEN a.worker_id IS NOT NULL THEN json_build_object(
                   'id', a.worker_id, 'nodename', a.nodename, 'hostname', a.hostname,
                   'pid', a.pid, 'last_heartbeat_at', a.worker_seen,
                   'stopped_at', a.worker_stopped) END,
               'attempt', a.attempt,
               'attempts', a.attempts,
               'max_attempts', a.max_attempts) AS evidence
    FROM assessed AS a
),
failed AS (
    -- CAS: only a row still in the status judged is written.
    UPDATE operation_runs AS r SET
        status = 'completed',
        outcome = 'failed',
        completed_at = now(),
        updated_at = now(),
        context = jsonb_set(r.context, '{reconciliation}', jsonb_build_object(
            'reason_code', e.reason_code,
            'reason_message', e.reason_message,
            'source', %(source)s::text,
            'evidence', e.evidence::jsonb,
            'reconciled_at', now())),
        failure_summary = r.failure_summary || jsonb_build_array(jsonb_build_object(
            'reason_code', e.reason_code, 'message', e.reason_message))
    FROM evidenced AS e
    WHERE r.id = e.id AND e.action = 'force_fail'
      AND r.status IN ('queued', 'running') AND r.status = e.status
    RETURNING r.id, r.workspace_id, r.tenant_id
),
requeued AS (
    -- Back to queued under a fresh task id, flagged for the outbox; CAS on the status
    -- and attempts judged.
    UPDATE operation_runs AS r SET
        status = 'queued',
        celery_task_id = gen_random_uuid()::text,
        worker_id = NULL,
        retry_due_at = NULL,
        requeued_at = now(),
        updated_at = now(),
        publish_pending = true,
        unstarted_attempts = r.unstarted_attempts
                             + CASE WHEN r.status = 'queued' THEN 1 ELSE 0 END
    FROM evidenced AS e
    WHERE r.id = e.id AND e.action = 'requeue'
      AND r.status IN ('queued', 'running') AND r.status = e.status
      AND r.attempts = e.attempts
    RETURNING r.id, r.workspace_id, r.tenant_id
),
written AS (
    SELECT f.id, f.workspace_id, f.tenant_id, 'operation_run.force_failed' AS audit_action,
           'failed' AS outcome
    FROM failed AS f
    UNION ALL
    SELECT q.id, q.workspace_id, q.tenant_id, 'operation_run.requeued', 'pending'
    FROM requeued AS q
),
audited AS (
    INSERT INTO audit_logs (workspace_id, tenant_id, actor_type, actor_id, action,
                            resource_type, resource_id, metadata, recorded_at)
    SELECT u.workspace_id, u.tenant_id, 'system', %(source)s::text,
           u.audit_action, 'operation_run', u.id::text,
           jsonb_build_object('reason_code', e.reason_code,
                              'reason_message', e.reason_message,
                              'source', %(source)s::text,
                              'outcome', u.outcome,
                              'evidence', e.evidence::jsonb),
           now()
    FROM written AS u JOIN evidenced AS e ON e.id = u.id
)
SELECT (SELECT count(*) FROM candidates),
       (SELECT count(*) FROM written),
       (SELECT count(*) FROM requeued),
       (SELECT json_agg(json_build_object(
            'applied', true,
            'operation_run_id', e.id,
            'type', e.type,
            'action', e.action,
            'before', json_build_object('status', e.status, 'outcome', e.outcome,
                                        'freshness_state', 'likely_stale'),
            'after', CASE WHEN e.action = 'requeue'
                          THEN json_build_object('status', 'queued', 'outcome', 'pending',
                                                 'freshness_state', 'fresh')
                          ELSE json_build_object('status', 'completed', 'outcome', 'failed',
                                                 'freshness_state', 'reconciled_failed') END,
            'reason_code', e.reason_code,
            'reason_message', e.reason_message,
            'evidence', e.evidence) ORDER BY e.id)::text
        FROM written AS u JOIN evidenced AS e ON e.id = u.id)
"""

#: The outbox claim, runwarden's ``claim_publications``: the requeued runs whose message
#: is not yet published, their flag cleared.
CLAIM_SQL = """
UPDATE operation_runs AS r SET publish_pending = false
WHERE r.id IN (SELECT p.id FROM operation_runs AS p WHERE p.publish_pending
               ORDER BY p.id LIMIT 500 FOR UPDATE SKIP LOCKED)
RETURNING r.id, r.type, r.status, r.celery_task_id, r.attempts
"""


def policy_sha256(path: str) -> str:
    """The hash runwarden's evidence carries: sha256 of the effective policy's canonical
    JSON (defaults filled in, keys sorted, no whitespace). ``[tenancy]`` is taken as
    written, which for the benchmark's policy is its effective form."""
    with open(path, "rb") as policy_file:
        document = tomllib.load(policy_file)
    reconciliation = document.get("reconciliation", {})
    effective: dict[str, object] = {
        "reconciliation": {
            "batch_limit": reconciliation.get("batch_limit", 100),
            "interval_seconds": reconciliation.get("interval_seconds", 60),
        },
        "workers": {
            "heartbeat_interval_seconds": _workers(document)[0],
            "lost_after_seconds": _workers(document)[1],
        },
        "types": {
            name: {
                "queued_stale_after_seconds": entry["queued_stale_after_seconds"],
                "running_stale_after_seconds": entry["running_stale_after_seconds"],
                "scheduled_reconciliation": entry.get("scheduled_reconciliation", True),
                "direct_failed_bridge": entry.get("direct_failed_bridge", True),
                "recovery": entry.get("recovery", "fail"),
                "max_attempts": entry.get("max_attempts", 1),
            }
            for name, entry in document.get("types", {}).items()
        },
    }
    if "tenancy" in document:
        effective["tenancy"] = document["tenancy"]
    canonical = json.dumps(effective, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _workers(document: dict[str, object]) -> tuple[int, int]:
    workers = document.get("workers", {})
    assert isinstance(workers, dict)
    interval = int(workers.get("heartbeat_interval_seconds", 10))
    return interval, int(workers.get("lost_after_seconds", max(60, 3 * interval)))


def policy_rows(path: str) -> list[dict[str, object]]:
    with open(path, "rb") as policy_file:
        document = tomllib.load(policy_file)
    rows: list[dict[str, object]] = []
    for name, entry in document.get("types", {}).items():
        if not entry.get("scheduled_reconciliation", True):
            continue
        bridge = entry.get("direct_failed_bridge", True)
        max_attempts = int(entry.get("max_attempts", 1))
        rows.append(
            {
                "type": name,
                "queued_s": entry["queued_stale_after_seconds"],
                "running_s": entry["running_stale_after_seconds"],
                "truth_path": "direct_and_scheduled" if bridge else "scheduled_only",
                "retry": entry.get("recovery", "fail") == "retry" and max_attempts > 1,
                "max_attempts": max_attempts,
            }
        )
    return rows


def celery_message(run_id: int, type_name: str, task_id: str, retries: int) -> bytes:
    """What Celery's ``send_task`` puts on the Redis list of the default queue for a
    requeued run (message protocol 2, JSON, the body base64'd)."""
    kwargs = {"operation_run_id": run_id}
    body = json.dumps(
        [[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    )
    envelope = {
        "body": base64.b64encode(body.encode("utf-8")).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": f"operations.{type_name}",
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": retries,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": "()",
            "kwargsrepr": repr(kwargs),
            "origin": ORIGIN,
            "ignore_result": None,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": REPLY_TO,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": QUEUE},
            "priority": PRIORITY,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope).encode("utf-8")


QUEUE = "celery"
#: runwarden's operation messages' priority (worker.publishing.OPERATION_PRIORITY) and the
#: Redis list kombu puts a message of that priority on.
PRIORITY = 3
PRIORITY_LIST = f"{QUEUE}\x06\x16{PRIORITY}"
ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"
REPLY_TO = str(uuid.uuid4())


def publish(conn: psycopg.Connection[tuple[object, ...]], broker: redis.Redis) -> int:
    """The outbox: claim the pending requeues (one committed statement), then push each
    queued one's message; returns how many were pushed."""
    claimed = conn.execute(CLAIM_SQL).fetchall()
    messages = [
        celery_message(int(run_id), str(type_name), str(task_id), int(attempts))
        for run_id, type_name, status, task_id, attempts in sorted(claimed)
        if status == "queued"
    ]
    if messages:
        if not DECLARED:
            # kombu's queue binding, declared once per process as Celery does.
            binding = f"{QUEUE}\x06\x16\x06\x16{QUEUE}"
            broker.sadd(f"_kombu.binding.{QUEUE}", binding)
            broker.sadd(f"_kombu.binding_permanent.{QUEUE}", binding)
            DECLARED.append(QUEUE)
        pipe = broker.pipeline(transaction=False)
        for message in messages:
            pipe.lpush(PRIORITY_LIST, message)
        pipe.execute()
    return len(messages)


DECLARED: list[str] = []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--source", default="on_demand_reconciler")
    args = parser.parse_args()
    url = os.environ["RUNWARDEN_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    policy = json.dumps(policy_rows(os.environ["RUNWARDEN_POLICY_FILE"]))
    sha256 = policy_sha256(os.environ["RUNWARDEN_POLICY_FILE"])
    with open(os.environ["RUNWARDEN_POLICY_FILE"], "rb") as policy_file:
        lost_after = _workers(tomllib.load(policy_file))[1]
    broker = redis.Redis.from_url(os.environ["RUNWARDEN_BROKER_URL"])

    candidates = reconciled = passes = 0
    out = sys.stdout
    # Streamed: each pass's changes are written as they come, the sums after them, so the
    # process never holds the whole backlog.
    out.write('{"changes": [')
    options = "-c TimeZone=UTC"
    schema = os.environ.get("RUNWARDEN_DB_SCHEMA")
    if schema:
        # runwarden's tables in their own schema (the drain's "host" shape); the floor
        # reads runwarden's own tenants and users there: no mapping, no views.
        options += f" -c search_path={schema}"
    with psycopg.connect(url, autocommit=True, options=options) as conn:
        # Requeues a earlier call left unpublished, as runwarden's drain does first.
        publish(conn, broker)
        while True:
            # One statement, one transaction per pass.
            params = {
                "policy": policy,
                "policy_sha256": sha256,
                "lost_after_s": lost_after,
                "limit": min(max(args.limit, 1), 500),
                "source": args.source,
            }
            row = conn.execute(PASS_SQL, params).fetchone()
            assert row is not None
            passes += 1
            candidates += int(row[0])
            if row[2]:
                publish(conn, broker)
            if row[3]:
                out.write("," if reconciled else "")
                out.write(row[3][1:-1])  # the pass's changes, without the brackets
            reconciled += int(row[1])
            if not row[1]:
                break
    out.write(
        f'], "candidates": {candidates}, "reconciled": {reconciled}, '
        f'"skipped": {candidates - reconciled}, "passes": {passes}}}\n'
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
