-- Statements both backends run as written. Bind parameters are :name (SQLAlchemy's
-- text()); casts are written CAST(x AS t), never x::t. A statement runs in psql as it
-- stands once its parameters are set (\set run_id 1 ... and :'name' for text).
--
-- Whose clock: every timestamp is the database's, now() (on SQLite, runwarden registers
-- now() on each connection: SQLite's own clock is the executing process's). :now is NULL
-- in production; a test may pin the clock with it.

-- name: clock
-- The database's time, for the decisions made in Python (explain, listings, SQLite passes).
SELECT now() AS now;

-- name: start_run
-- Start attempt :retries + 1 of a run for the delivery that owns it, where the legitimacy gate allows it, returning what the body needs (no row: not started).
-- The delivery owns the run when the row carries its task id and its attempt is the next
-- one: a first delivery (retries 0) starts a queued run that no attempt has started; a
-- retry published by retry() starts a running run whose attempts equal its retries (the
-- attempt that asked for the retry is over). A duplicate delivery of an attempt already
-- started, or a message under another task id, matches neither branch. The gate's checks
-- are QueuedExecutionLegitimacyGate's (a test holds the two to the same verdicts); the
-- run must be of a covered type (:covered_types is a JSON object keyed by type name).
UPDATE operation_runs SET
    status = 'running',
    attempts = :retries + 1,
    retry_due_at = NULL,
    -- NULL when the process is not a registered worker's: then only the type's running
    -- window judges the run.
    worker_id = :worker_id,
    started_at = COALESCE(started_at, COALESCE(:now, now())),
    last_heartbeat_at = COALESCE(:now, now()),
    updated_at = COALESCE(:now, now())
WHERE id = :run_id
  AND celery_task_id = :celery_task_id
  AND attempts = :retries
  AND (status = 'queued' OR (:retries > 0 AND status = 'running'))
  AND type IN (SELECT key FROM json_each(:covered_types))
  AND (tenant_id IS NULL OR EXISTS (
        SELECT 1 FROM runwarden_gate_tenants AS t
        WHERE t.id = operation_runs.tenant_id
          AND t.is_active
          AND t.workspace_id = operation_runs.workspace_id))
  AND (user_id IS NULL OR EXISTS (
        SELECT 1 FROM runwarden_gate_users AS u WHERE u.id = operation_runs.user_id AND u.is_active))
RETURNING id, type, workspace_id, tenant_id, user_id, context;

-- name: heartbeat
-- Record that a running run is alive, for the delivery running its current attempt; a run that ended, or that another delivery owns, is not touched.
UPDATE operation_runs SET last_heartbeat_at = COALESCE(:now, now()), updated_at = COALESCE(:now, now())
WHERE id = :run_id
  AND status = 'running'
  AND attempts = :attempt
  AND celery_task_id = :celery_task_id;

-- name: complete_run
-- A task's own end, recording nothing beside the row: a running run completes with the outcome its body reported, if that body's delivery still owns it (compare-and-set on running, the attempt and the task id).
UPDATE operation_runs SET
    status = 'completed',
    outcome = :outcome,
    completed_at = COALESCE(:now, now()),
    updated_at = COALESCE(:now, now()),
    summary_counts = COALESCE(:summary_counts, summary_counts)
WHERE id = :run_id
  AND status = 'running'
  AND attempts = :attempt
  AND celery_task_id = :celery_task_id;

-- name: register_worker
-- A worker's main process, ready to take tasks, registers on the database's clock and gets its id.
INSERT INTO runwarden_workers (nodename, hostname, pid, started_at, last_heartbeat_at)
VALUES (:nodename, :hostname, :pid, now(), now())
RETURNING id;

-- name: worker_heartbeat
-- A worker's main process is alive: one write, on the database's clock; a worker that stopped stays stopped (no row returned).
UPDATE runwarden_workers SET last_heartbeat_at = now()
WHERE id = :worker_id AND stopped_at IS NULL
RETURNING id;

-- name: stop_worker
-- A worker's main process stopped: its pool is drained (warm) or its tasks were terminated (cold), so a run it still holds will never end by its hand.
UPDATE runwarden_workers SET stopped_at = now(), last_heartbeat_at = now()
WHERE id = :worker_id AND stopped_at IS NULL;

-- name: record_tick
-- A periodic task (:name) finished: its row in runwarden_ticks says when, on the database's clock, and what it did.
INSERT INTO runwarden_ticks (name, ticked_at, passes, candidates, reconciled, skipped,
                             duration_ms)
VALUES (:name, COALESCE(:now, now()), :passes, :candidates, :reconciled, :skipped,
        :duration_ms)
ON CONFLICT (name) DO UPDATE SET
    ticked_at = excluded.ticked_at,
    passes = excluded.passes,
    candidates = excluded.candidates,
    reconciled = excluded.reconciled,
    skipped = excluded.skipped,
    duration_ms = excluded.duration_ms;
