-- PostgreSQL statements. Bind parameters are :name (SQLAlchemy's text()); casts are
-- written CAST(x AS t), never x::t. Non-terminal statuses are literals everywhere: with a
-- bound list, a prepared statement's generic plan cannot prove the partial index
-- predicate of ix_operation_runs_active_scan and scans every completed run.

-- name: reconcile_pass
-- One reconciliation pass as one statement: stale scan, legitimacy gate, evidence, recovery (requeue or fail), compare-and-set writes with their audit rows, and the pass's result; with :dry_run the same result and no write.
-- :policy is a JSON array of {type, queued_s, running_s, truth_path, retry, max_attempts},
-- one per type the pass covers (retry: recovery = "retry" with max_attempts > 1); the cutoffs are the database's clock less each threshold. :tenant_ids and :workspace_ids are NULL
-- (every run) or arrays. The scan walks ix_operation_runs_active_scan in its own order,
-- (type, status, created_at, id), and stops at :limit whatever the ties in created_at:
-- ORDER BY id would walk the primary key past every completed run, and a tie-breaker the
-- index does not carry sorts every stale run left on every pass. The rows stay locked
-- (SKIP LOCKED: concurrent reconcilers split the work), so the write updates straight
-- from them. The Python reference is worker/lifecycle/reconciler/assessment.py; a test
-- holds the two to identical changes.
WITH clock AS (
    -- The server's start bounds every worker's silence (heartbeats sent while it was
    -- down never arrived); a pinned :now has no server behind it.
    SELECT COALESCE(CAST(:now AS timestamptz), now()) AS now,
           CASE WHEN CAST(:now AS timestamptz) IS NULL THEN pg_postmaster_start_time() END
               AS up_since
), policy AS (
    SELECT p.type, p.queued_s, p.running_s, p.truth_path, p.retry, p.max_attempts,
           clock.now - make_interval(secs => p.queued_s) AS queued_cutoff,
           clock.now - make_interval(secs => p.running_s) AS running_cutoff
    FROM jsonb_to_recordset(CAST(:policy AS jsonb))
             AS p(type text, queued_s int, running_s int, truth_path text, retry boolean,
                  max_attempts int)
    CROSS JOIN clock
), candidates AS (
    SELECT r.id, r.type, r.status, r.outcome, r.workspace_id, r.tenant_id, r.user_id,
           r.attempts, p.retry, p.max_attempts,
           -- The try the run is on (worker/lifecycle/recovery.py current_attempt): the
           -- attempts started, the messages that never started, and a queued run's own.
           r.attempts + r.unstarted_attempts + CASE WHEN r.status = 'queued' THEN 1 ELSE 0 END
               AS attempt,
           w.lost AS worker_lost,
           CASE WHEN w.lost THEN CAST(:lost_after_s AS int)
                WHEN r.status = 'queued' THEN p.queued_s ELSE p.running_s END
               AS threshold_seconds,
           CASE WHEN w.lost THEN COALESCE(w.stopped_at, w.last_heartbeat_at)
                WHEN r.status = 'queued' THEN COALESCE(r.requeued_at, r.created_at)
                ELSE GREATEST(COALESCE(r.last_heartbeat_at, r.started_at, r.created_at),
                              r.retry_due_at) END
               AS reference_time,
           p.truth_path,
           w.id AS worker_id, w.nodename AS worker_nodename, w.hostname AS worker_hostname,
           w.pid AS worker_pid, w.last_heartbeat_at AS worker_last_heartbeat_at,
           w.stopped_at AS worker_stopped_at
    FROM operation_runs AS r JOIN policy AS p ON p.type = r.type
    -- The worker that started a running run's current attempt, and whether it is gone
    -- (stopped, or silent for :lost_after_s on the database's clock). A run waiting for
    -- its retry is judged by its retry's due time and window only: the retry may start
    -- on any worker.
    LEFT JOIN LATERAL (
        SELECT w.id, w.nodename, w.hostname, w.pid, w.last_heartbeat_at, w.stopped_at,
               w.stopped_at IS NOT NULL
                   OR GREATEST(w.last_heartbeat_at, (SELECT clock.up_since FROM clock))
                          < (SELECT clock.now FROM clock)
                            - make_interval(secs => CAST(:lost_after_s AS int)) AS lost
        FROM runwarden_workers AS w
        WHERE w.id = r.worker_id AND r.status = 'running' AND r.retry_due_at IS NULL
    ) AS w ON true
    WHERE r.status IN ('queued', 'running')
      -- A running run's last sign of life, or the time its retry is due if later
      -- (GREATEST ignores a NULL retry_due_at); or its worker is gone.
      -- A queued run's window counts from its requeue, if it was requeued.
      -- A run on a live worker is stale only once that worker was heard after the
      -- run's window passed (while the database could not hear, neither could it).
      AND (CASE WHEN r.status = 'queued'
                THEN COALESCE(r.requeued_at, r.created_at) < p.queued_cutoff
                ELSE GREATEST(COALESCE(r.last_heartbeat_at, r.started_at, r.created_at),
                              r.retry_due_at) < p.running_cutoff
                     AND (w.id IS NULL
                          OR COALESCE(r.last_heartbeat_at, r.started_at, r.created_at)
                             < w.last_heartbeat_at - make_interval(secs => p.running_s)) END
           OR w.lost)
      AND (CAST(:tenant_ids AS bigint[]) IS NULL
           OR r.tenant_id = ANY(CAST(:tenant_ids AS bigint[])))
      AND (CAST(:workspace_ids AS bigint[]) IS NULL
           OR r.workspace_id = ANY(CAST(:workspace_ids AS bigint[])))
    ORDER BY r.type, r.status, r.created_at, r.id
    LIMIT :limit
    FOR UPDATE OF r SKIP LOCKED
), gated AS (
    -- The gate's checks (QueuedExecutionLegitimacyGate). A scanned run is non-terminal
    -- and of a covered type by construction.
    SELECT c.*,
           COALESCE(c.worker_lost, false) AS lost_now,
           c.tenant_id IS NULL OR t.id IS NOT NULL AS tenant_exists,
           c.tenant_id IS NULL OR COALESCE(t.is_active, false) AS tenant_active,
           c.tenant_id IS NULL OR COALESCE(t.workspace_id = c.workspace_id, false)
               AS tenant_in_workspace,
           c.user_id IS NULL OR COALESCE(u.is_active, false) AS user_active
    FROM candidates AS c
    LEFT JOIN runwarden_gate_tenants AS t ON t.id = c.tenant_id
    LEFT JOIN runwarden_gate_users AS u ON u.id = c.user_id
), assessed AS (
    SELECT g.*,
           CASE WHEN g.lost_now THEN CAST(:worker_lost AS text)
                WHEN g.status = 'queued' THEN CAST(:stale_queued AS text)
                ELSE CAST(:stale_running AS text) END AS reason_code,
           CASE WHEN g.lost_now THEN CAST(:worker_lost_message AS text)
                WHEN g.status = 'queued' THEN CAST(:stale_queued_message AS text)
                ELSE CAST(:stale_running_message AS text) END AS reason_message,
           -- Recovery (worker/lifecycle/recovery.py action_for): a lost message (queued
           -- past its window) or a lost worker, on a retry type with tries left, is
           -- requeued; anything else -- a hung body above all -- fails.
           CASE WHEN g.retry AND (g.lost_now OR g.status = 'queued')
                     AND g.attempt < g.max_attempts THEN 'requeue'
                ELSE 'force_fail' END AS action,
           -- The first failing check names the gate's reason, in the gate's order.
           CASE WHEN NOT g.tenant_exists THEN 'execution.tenant_missing'
                WHEN NOT g.tenant_active THEN 'execution.tenant_inactive'
                WHEN NOT g.tenant_in_workspace THEN 'execution.tenant_workspace_mismatch'
                WHEN NOT g.user_active THEN 'execution.user_inactive' END
               AS legitimacy_reason,
           -- evidence.iso's format: UTC, always microseconds.
           to_char(clock.now AT TIME ZONE 'UTC',
                   'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"') AS evaluated_at,
           to_char(g.reference_time AT TIME ZONE 'UTC',
                   'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"') AS reference_iso
    FROM gated AS g CROSS JOIN clock
), v AS MATERIALIZED (
    SELECT a.id, a.type, a.status, a.outcome, a.reason_code, a.reason_message,
           a.evaluated_at, a.action, a.attempts,
           json_build_object(
               'evaluated_at', a.evaluated_at,
               'freshness_state', 'likely_stale',
               'threshold_seconds', a.threshold_seconds,
               'reference_time', a.reference_iso,
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
               'policy_sha256', CAST(:policy_sha256 AS text),
               -- The worker that started the current attempt (NULL: none recorded).
               'worker', CASE WHEN a.worker_id IS NOT NULL THEN json_build_object(
                   'id', a.worker_id,
                   'nodename', a.worker_nodename,
                   'hostname', a.worker_hostname,
                   'pid', a.worker_pid,
                   'last_heartbeat_at', to_char(a.worker_last_heartbeat_at AT TIME ZONE 'UTC',
                       'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
                   'stopped_at', to_char(a.worker_stopped_at AT TIME ZONE 'UTC',
                       'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')) END,
               'attempt', a.attempt,
               'attempts', a.attempts,
               'max_attempts', a.max_attempts) AS evidence
    FROM assessed AS a
), failed AS (
    UPDATE operation_runs AS r SET
        status = 'completed',
        outcome = 'failed',
        completed_at = clock.now,
        updated_at = clock.now,
        context = jsonb_set(r.context, '{reconciliation}', jsonb_build_object(
            'reason_code', v.reason_code,
            'reason_message', v.reason_message,
            'source', CAST(:source AS text),
            'evidence', CAST(v.evidence AS jsonb),
            'reconciled_at', v.evaluated_at)),
        failure_summary = r.failure_summary || jsonb_build_array(jsonb_build_object(
            'reason_code', v.reason_code, 'message', v.reason_message))
    FROM v CROSS JOIN clock
    -- Compare-and-set on the status judged: the rows are locked, but a queued run that
    -- started meanwhile must never be failed as "never started".
    WHERE r.id = v.id
      AND v.action = 'force_fail'
      AND r.status IN ('queued', 'running')
      AND r.status = v.status
      AND NOT CAST(:dry_run AS boolean)
    RETURNING r.id, r.workspace_id, r.tenant_id
), requeued AS (
    -- Back to queued under a fresh task id, generated here (gen_random_uuid, one per row):
    -- the old delivery's every write is fenced on the old one. The outbox flag is set in
    -- the same write; the new message is published after this statement commits. The
    -- rows are disjoint from the failed ones, so each row is updated once.
    UPDATE operation_runs AS r SET
        status = 'queued',
        celery_task_id = CAST(gen_random_uuid() AS text),
        worker_id = NULL,
        retry_due_at = NULL,
        requeued_at = clock.now,
        updated_at = clock.now,
        publish_pending = true,
        -- SET expressions read the row as it was: a queued run's try was a lost message.
        unstarted_attempts = r.unstarted_attempts
                             + CASE WHEN r.status = 'queued' THEN 1 ELSE 0 END
    FROM v CROSS JOIN clock
    WHERE r.id = v.id
      AND v.action = 'requeue'
      AND r.status IN ('queued', 'running')
      AND r.status = v.status
      AND r.attempts = v.attempts
      AND NOT CAST(:dry_run AS boolean)
    RETURNING r.id, r.workspace_id, r.tenant_id
), audited AS (
    INSERT INTO audit_logs (workspace_id, tenant_id, actor_type, actor_id, action,
                            resource_type, resource_id, metadata, recorded_at)
    SELECT u.workspace_id, u.tenant_id, 'system', CAST(:source AS text), u.action,
           'operation_run', CAST(u.id AS text),
           jsonb_build_object('reason_code', v.reason_code,
                              'reason_message', v.reason_message,
                              'source', CAST(:source AS text),
                              'outcome', u.outcome,
                              'evidence', CAST(v.evidence AS jsonb)),
           clock.now
    FROM (SELECT f.id, f.workspace_id, f.tenant_id, CAST(:audit_action AS text) AS action,
                 'failed' AS outcome
          FROM failed AS f
          UNION ALL
          SELECT q.id, q.workspace_id, q.tenant_id, CAST(:requeue_action AS text),
                 'pending'
          FROM requeued AS q) AS u
    JOIN v ON v.id = u.id CROSS JOIN clock
)
SELECT (SELECT count(*) FROM v) AS candidates,
       (SELECT count(*) FROM failed) + (SELECT count(*) FROM requeued) AS reconciled,
       (SELECT count(*) FROM requeued) AS requeued,
       (SELECT CAST(json_agg(json_build_object(
            'applied', NOT CAST(:dry_run AS boolean),
            'operation_run_id', v.id,
            'type', v.type,
            'action', v.action,
            'before', json_build_object('status', v.status,
                                        'outcome', v.outcome,
                                        'freshness_state', 'likely_stale'),
            'after', CASE WHEN v.action = 'requeue'
                          THEN json_build_object('status', 'queued', 'outcome', 'pending',
                                                 'freshness_state', 'fresh')
                          ELSE json_build_object('status', 'completed', 'outcome', 'failed',
                                                 'freshness_state', 'reconciled_failed') END,
            'reason_code', v.reason_code,
            'reason_message', v.reason_message,
            'evidence', v.evidence) ORDER BY v.id) AS text)
        FROM v
        WHERE CAST(:dry_run AS boolean)
           OR v.id IN (SELECT f.id FROM failed AS f UNION ALL SELECT q.id FROM requeued AS q))
           AS changes;

-- name: end_runs
-- The terminal write of a batch of runs: compare-and-set on the status, one audit row for each run won with an audit action; returns the ids won.
-- :payload is a JSON array of TerminalTransition.payload() objects; a key left out is
-- NULL and leaves its column alone (or, for expected_*, checks nothing). The record is
-- stamped (stamp_key) with the database's clock. Rows are locked in id order first, so
-- transactions writing overlapping batches queue on each other instead of deadlocking;
-- the compare-and-set is re-checked in the UPDATE itself: still non-terminal, in the
-- status the caller judged, and -- for a delivery's own write -- still its attempt under
-- its task id.
WITH clock AS (
    SELECT COALESCE(CAST(:now AS timestamptz), now()) AS now
), v AS MATERIALIZED (
    SELECT v.*,
           CASE WHEN v.record IS NOT NULL THEN v.record || jsonb_build_object(v.stamp_key,
                    to_char(clock.now AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'))
           END AS stamped_record
    FROM jsonb_to_recordset(CAST(:payload AS jsonb)) AS v(
        id bigint, outcome text, expected_status text, expected_attempt int,
        expected_task_id text, record_key text, stamp_key text, record jsonb, failure jsonb,
        summary_counts jsonb, source text, audit_action text)
    CROSS JOIN clock
), locked AS MATERIALIZED (
    SELECT r.id FROM operation_runs AS r JOIN v ON r.id = v.id
    WHERE r.status IN ('queued', 'running')
    ORDER BY r.id
    FOR UPDATE OF r
), updated AS (
    UPDATE operation_runs AS r SET
        status = 'completed',
        outcome = v.outcome,
        completed_at = clock.now,
        updated_at = clock.now,
        context = CASE WHEN v.record_key IS NULL THEN r.context
                       ELSE jsonb_set(r.context, ARRAY[v.record_key], v.stamped_record) END,
        failure_summary = CASE WHEN v.failure IS NULL THEN r.failure_summary
                               ELSE r.failure_summary || jsonb_build_array(v.failure) END,
        summary_counts = COALESCE(v.summary_counts, r.summary_counts)
    FROM v JOIN locked ON locked.id = v.id CROSS JOIN clock
    WHERE r.id = v.id
      AND r.status IN ('queued', 'running')
      AND (v.expected_status IS NULL OR r.status = v.expected_status)
      AND (v.expected_attempt IS NULL OR r.attempts = v.expected_attempt)
      AND (v.expected_task_id IS NULL OR r.celery_task_id = v.expected_task_id)
    RETURNING r.id, r.workspace_id, r.tenant_id
), audited AS (
    INSERT INTO audit_logs (workspace_id, tenant_id, actor_type, actor_id, action,
                            resource_type, resource_id, metadata, recorded_at)
    SELECT u.workspace_id, u.tenant_id, 'system', v.source, v.audit_action,
           'operation_run', CAST(u.id AS text),
           jsonb_build_object('reason_code', v.record -> 'reason_code',
                              'reason_message', v.record -> 'reason_message',
                              'source', v.source,
                              'outcome', v.outcome,
                              'evidence', v.record -> 'evidence'),
           clock.now
    FROM updated AS u JOIN v ON v.id = u.id CROSS JOIN clock
    WHERE v.audit_action IS NOT NULL
)
SELECT u.id FROM updated AS u;

-- name: record_retry
-- A retry was scheduled by the delivery that owns the run: it stays running, with the failed attempt's evidence as context.bridge.last_retry.
UPDATE operation_runs SET
    context = jsonb_set(context, '{bridge}',
                        COALESCE(context -> 'bridge', CAST('{}' AS jsonb))
                        || jsonb_build_object('last_retry', CAST(:last_retry AS jsonb)
                           || jsonb_build_object('recorded_at', to_char(
                                  COALESCE(CAST(:now AS timestamptz), now()) AT TIME ZONE 'UTC',
                                  'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')))),
    -- NULL without a countdown: the run is then judged by its last sign of life.
    retry_due_at = COALESCE(CAST(:now AS timestamptz), now())
                   + make_interval(secs => CAST(:retry_in_seconds AS double precision)),
    updated_at = COALESCE(:now, now())
WHERE id = :run_id
  AND status = 'running'
  AND attempts = :attempt
  AND celery_task_id = :celery_task_id;

-- name: requeue_runs
-- Recovery outside the pass (reconcile_run): runs back to queued under the new task ids of :payload (Requeue.payload() objects), compare-and-set on the status, attempts and task id judged, one audit row each; returns the ids won.
-- reconcile_pass does the same for a whole pass in its own statement. A queued run's try
-- was a message that never started: unstarted_attempts counts it (SET expressions read
-- the row as it was).
WITH clock AS (
    SELECT COALESCE(CAST(:now AS timestamptz), now()) AS now
), v AS MATERIALIZED (
    SELECT v.* FROM jsonb_to_recordset(CAST(:payload AS jsonb)) AS v(
        id bigint, expected_status text, expected_attempt int, expected_task_id text,
        celery_task_id text, source text, audit_action text, outcome text, record jsonb)
), requeued AS (
    UPDATE operation_runs AS r SET
        status = 'queued',
        celery_task_id = v.celery_task_id,
        worker_id = NULL,
        retry_due_at = NULL,
        requeued_at = clock.now,
        updated_at = clock.now,
        publish_pending = true,
        unstarted_attempts = r.unstarted_attempts
                             + CASE WHEN r.status = 'queued' THEN 1 ELSE 0 END
    FROM v CROSS JOIN clock
    WHERE r.id = v.id
      AND r.status IN ('queued', 'running')
      AND r.status = v.expected_status
      AND r.attempts = v.expected_attempt
      AND (v.expected_task_id IS NULL OR r.celery_task_id = v.expected_task_id)
    RETURNING r.id, r.workspace_id, r.tenant_id
), audited AS (
    INSERT INTO audit_logs (workspace_id, tenant_id, actor_type, actor_id, action,
                            resource_type, resource_id, metadata, recorded_at)
    SELECT u.workspace_id, u.tenant_id, 'system', v.source, v.audit_action,
           'operation_run', CAST(u.id AS text),
           jsonb_build_object('reason_code', v.record -> 'reason_code',
                              'reason_message', v.record -> 'reason_message',
                              'source', v.source,
                              'outcome', v.outcome,
                              'evidence', v.record -> 'evidence'),
           clock.now
    FROM requeued AS u JOIN v ON v.id = u.id CROSS JOIN clock
)
SELECT u.id FROM requeued AS u;

-- name: claim_publications
-- The outbox: take up to :limit requeued runs whose new message is not yet published, clearing their flag; the caller publishes the queued ones after this commits.
-- SKIP LOCKED: a claimer never waits for, nor takes, a run another transaction holds
-- (a pass requeueing it, another claimer).
UPDATE operation_runs AS r SET publish_pending = false
WHERE r.id IN (SELECT p.id FROM operation_runs AS p WHERE p.publish_pending
               ORDER BY p.id LIMIT :limit FOR UPDATE SKIP LOCKED)
RETURNING r.id, r.type, r.status, r.celery_task_id, r.attempts;

-- name: release_publications
-- The outbox: give back the claims whose publish failed (:payload, a JSON array of {id, celery_task_id}), for a later call to publish; a run requeued again or ended meanwhile is left alone.
UPDATE operation_runs AS r SET publish_pending = true
FROM jsonb_to_recordset(CAST(:payload AS jsonb)) AS p(id bigint, celery_task_id text)
WHERE r.id = p.id AND r.celery_task_id = p.celery_task_id AND r.status = 'queued';

-- name: database_started
-- When the server last started: heartbeats sent before then, while it was down, were never received.
SELECT pg_postmaster_start_time() AS started;
