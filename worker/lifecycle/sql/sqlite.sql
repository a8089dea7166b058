-- SQLite statements (the embedded default). Bind parameters are :name (SQLAlchemy's
-- text()). Timestamps are stored as fixed-width UTC text ('YYYY-MM-DD HH:MM:SS.ffffff'),
-- so comparing them as text compares them in time; now() (registered on each connection)
-- gives the same format, and replace(t, ' ', 'T') || '+00:00' is evidence.iso's format.
-- JSON arguments are JSON text.

-- name: scan_stale_runs
-- The stale runs a pass assesses in Python, oldest first in the active index's order, at most :limit (PostgreSQL assesses in reconcile_pass).
-- :policy is the JSON array reconcile_pass takes, with cutoffs in the stored format
-- (the database's clock, read by the pass, less each threshold); :lost_cutoff is that
-- clock less the workers' lost_after_seconds. :tenant_ids and :workspace_ids are NULL
-- (every run) or JSON arrays. A running run comes with the worker that started its
-- current attempt, unless it waits for a retry (which may start on any worker).
SELECT r.id, r.type, r.status, r.outcome, r.workspace_id, r.tenant_id, r.user_id,
       r.created_at, r.started_at, r.last_heartbeat_at, r.retry_due_at,
       w.id AS worker_id, r.requeued_at, r.attempts, r.unstarted_attempts,
       w.nodename AS worker_nodename, w.hostname AS worker_hostname,
       w.pid AS worker_pid, w.started_at AS worker_started_at,
       w.last_heartbeat_at AS worker_last_heartbeat_at, w.stopped_at AS worker_stopped_at
FROM operation_runs AS r
JOIN (SELECT json_extract(value, '$.type') AS type,
             json_extract(value, '$.running_s') AS running_s,
             json_extract(value, '$.queued_cutoff') AS queued_cutoff,
             json_extract(value, '$.running_cutoff') AS running_cutoff
      FROM json_each(:policy)) AS p ON p.type = r.type
LEFT JOIN runwarden_workers AS w
       ON w.id = r.worker_id AND r.status = 'running' AND r.retry_due_at IS NULL
WHERE r.status IN ('queued', 'running')
  -- A running run's last sign of life, or the time its retry is due if later (max() of
  -- SQLite is NULL if an argument is, hence '' for no retry: it sorts before any time);
  -- or its worker is gone.
  -- A queued run's window counts from its requeue, if it was requeued.
  -- A run on a live worker is stale only once that worker was heard after the run's
  -- window passed; strftime keeps milliseconds, so '999' makes its cutoff an upper bound
  -- and the scan a superset of what the assessment in Python then takes exactly.
  AND (CASE WHEN r.status = 'queued' THEN COALESCE(r.requeued_at, r.created_at) < p.queued_cutoff
            ELSE max(COALESCE(r.last_heartbeat_at, r.started_at, r.created_at),
                     COALESCE(r.retry_due_at, '')) < p.running_cutoff
                 AND (w.id IS NULL
                      OR COALESCE(r.last_heartbeat_at, r.started_at, r.created_at)
                         < strftime('%Y-%m-%d %H:%M:%f', w.last_heartbeat_at,
                                    '-' || p.running_s || ' seconds') || '999') END
       OR w.stopped_at IS NOT NULL
       OR w.last_heartbeat_at < :lost_cutoff)
  AND (:tenant_ids IS NULL OR r.tenant_id IN (SELECT value FROM json_each(:tenant_ids)))
  AND (:workspace_ids IS NULL
       OR r.workspace_id IN (SELECT value FROM json_each(:workspace_ids)))
ORDER BY r.type, r.status, r.created_at, r.id
LIMIT :limit;

-- name: end_runs
-- The terminal write of a batch of runs: compare-and-set on the status; returns the ids won (audit_ended_runs writes their audit rows).
-- :payload is a JSON array of TerminalTransition.payload() objects; a key left out is
-- NULL and leaves its column alone (or, for expected_*, checks nothing), as in
-- PostgreSQL's end_runs. The transaction began with BEGIN IMMEDIATE.
UPDATE operation_runs SET
    status = 'completed',
    outcome = v.outcome,
    completed_at = COALESCE(:now, now()),
    updated_at = COALESCE(:now, now()),
    context = CASE WHEN v.record_key IS NULL THEN operation_runs.context
                   ELSE json_set(operation_runs.context, '$.' || v.record_key,
                                 json_set(json(v.record), '$.' || v.stamp_key,
                                          replace(COALESCE(:now, now()), ' ', 'T') || '+00:00'))
              END,
    failure_summary = CASE WHEN v.failure IS NULL THEN operation_runs.failure_summary
                           ELSE json_insert(operation_runs.failure_summary, '$[#]',
                                            json(v.failure))
                      END,
    summary_counts = COALESCE(v.summary_counts, operation_runs.summary_counts)
FROM (
    SELECT json_extract(value, '$.id') AS id,
           json_extract(value, '$.outcome') AS outcome,
           json_extract(value, '$.expected_status') AS expected_status,
           json_extract(value, '$.expected_attempt') AS expected_attempt,
           json_extract(value, '$.expected_task_id') AS expected_task_id,
           json_extract(value, '$.record_key') AS record_key,
           json_extract(value, '$.stamp_key') AS stamp_key,
           json_extract(value, '$.record') AS record,
           json_extract(value, '$.failure') AS failure,
           json_extract(value, '$.summary_counts') AS summary_counts
    FROM json_each(:payload)
) AS v
WHERE operation_runs.id = v.id
  AND operation_runs.status IN ('queued', 'running')
  AND (v.expected_status IS NULL OR operation_runs.status = v.expected_status)
  AND (v.expected_attempt IS NULL OR operation_runs.attempts = v.expected_attempt)
  AND (v.expected_task_id IS NULL OR operation_runs.celery_task_id = v.expected_task_id)
RETURNING operation_runs.id;

-- name: audit_ended_runs
-- One audit row for each run end_runs won (:won_ids, a JSON array) whose transition has an audit action, in the same transaction.
-- SQLite has no INSERT inside the WITH of an UPDATE, so this is a second statement; the
-- metadata is end_runs' PostgreSQL audit row's, key for key.
INSERT INTO audit_logs (workspace_id, tenant_id, actor_type, actor_id, action,
                        resource_type, resource_id, metadata, recorded_at)
SELECT r.workspace_id, r.tenant_id, 'system',
       json_extract(v.value, '$.source'),
       json_extract(v.value, '$.audit_action'),
       'operation_run', CAST(r.id AS TEXT),
       json_object('reason_code', json_extract(v.value, '$.record.reason_code'),
                   'reason_message', json_extract(v.value, '$.record.reason_message'),
                   'source', json_extract(v.value, '$.source'),
                   'outcome', json_extract(v.value, '$.outcome'),
                   'evidence', json(json_extract(v.value, '$.record.evidence'))),
       COALESCE(:now, now())
FROM json_each(:payload) AS v
JOIN operation_runs AS r ON r.id = json_extract(v.value, '$.id')
WHERE json_extract(v.value, '$.audit_action') IS NOT NULL
  AND r.id IN (SELECT value FROM json_each(:won_ids))
ORDER BY v.key;

-- name: record_retry
-- A retry was scheduled by the delivery that owns the run: it stays running, with the failed attempt's evidence as context.bridge.last_retry.
UPDATE operation_runs SET
    context = json_set(context, '$.bridge',
                       json_set(COALESCE(json_extract(context, '$.bridge'), '{}'),
                                '$.last_retry',
                                json_set(json(:last_retry), '$.recorded_at',
                                         replace(COALESCE(:now, now()), ' ', 'T') || '+00:00'))),
    -- NULL without a countdown; the stored format (strftime has milliseconds).
    retry_due_at = strftime('%Y-%m-%d %H:%M:%f', COALESCE(:now, now()),
                            '+' || :retry_in_seconds || ' seconds') || '000',
    updated_at = COALESCE(:now, now())
WHERE id = :run_id
  AND status = 'running'
  AND attempts = :attempt
  AND celery_task_id = :celery_task_id;

-- name: requeue_runs
-- Recovery: runs back to queued under the new task ids of :payload (Requeue.payload() objects), compare-and-set on the status, attempts and task id judged; returns the ids won (audit_ended_runs writes their audit rows).
-- The outbox flag is set in the same write: the new message goes out after the commit.
-- A queued run's try was a message that never started: unstarted_attempts counts it (SET
-- expressions read the row as it was).
UPDATE operation_runs SET
    status = 'queued',
    celery_task_id = v.celery_task_id,
    worker_id = NULL,
    retry_due_at = NULL,
    requeued_at = COALESCE(:now, now()),
    updated_at = COALESCE(:now, now()),
    publish_pending = 1,
    unstarted_attempts = operation_runs.unstarted_attempts
                         + (CASE WHEN operation_runs.status = 'queued' THEN 1 ELSE 0 END)
FROM (
    SELECT json_extract(value, '$.id') AS id,
           json_extract(value, '$.expected_status') AS expected_status,
           json_extract(value, '$.expected_attempt') AS expected_attempt,
           json_extract(value, '$.expected_task_id') AS expected_task_id,
           json_extract(value, '$.celery_task_id') AS celery_task_id
    FROM json_each(:payload)
) AS v
WHERE operation_runs.id = v.id
  AND operation_runs.status IN ('queued', 'running')
  AND operation_runs.status = v.expected_status
  AND operation_runs.attempts = v.expected_attempt
  AND (v.expected_task_id IS NULL OR operation_runs.celery_task_id = v.expected_task_id)
RETURNING operation_runs.id;

-- name: claim_publications
-- The outbox: take up to :limit requeued runs whose new message is not yet published, clearing their flag; the caller publishes the queued ones after this commits.
-- The transaction began with BEGIN IMMEDIATE, so two claimers never take the same run.
UPDATE operation_runs SET publish_pending = 0
WHERE id IN (SELECT id FROM operation_runs WHERE publish_pending ORDER BY id LIMIT :limit)
RETURNING id, type, status, celery_task_id, attempts;

-- name: release_publications
-- The outbox: give back the claims whose publish failed (:payload, a JSON array of {id, celery_task_id}), for a later call to publish; a run requeued again or ended meanwhile is left alone.
UPDATE operation_runs SET publish_pending = 1
WHERE status = 'queued'
  AND EXISTS (SELECT 1 FROM json_each(:payload) AS p
              WHERE json_extract(p.value, '$.id') = operation_runs.id
                AND json_extract(p.value, '$.celery_task_id') = operation_runs.celery_task_id);
