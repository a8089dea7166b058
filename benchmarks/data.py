"""Benchmark data, generated in SQL (INSERT ... SELECT generate_series) on migrated databases.

Run ids encode what a run is, so every check can say which rows must have changed:

* drain data: ``id % 9 = 0`` is a stale running run of a scheduled, covered type (so 50,000
  of 450,000); ``id % 90`` in 1..4 are runs that must survive a drain untouched (fresh
  running, fresh queued, an old running run of an uncovered type, one of a covered type
  with ``scheduled_reconciliation = false``); every other run is terminal.
* idle data: ids 1..200 are fresh non-terminal runs, the rest are terminal.

100 workers are registered (heartbeat at generation time) and every run past queued names
one: the pass's worker join is always measured. The benchmark policy's
``lost_after_seconds`` is a day, so no worker is lost during a benchmark and every verdict
stays the window's -- except in the ``requeue`` data.

The ``requeue`` data (:data:`REQUEUE_KIND`) makes every 10th stale run (``id % 90 = 0``)
one of the retry type :data:`RETRY_TYPE` (``recovery = "retry"``, ``max_attempts = 2``,
:data:`RETRY_TYPE_TOML`) on its first attempt, running on the one lost worker
(:data:`LOST_WORKER_ID`, stopped two days ago): the drain requeues it, as
``run.worker_lost``, instead of failing it.

Stale runs come in two shapes (:data:`STALE_CREATED`): each with its own creation time, or
all sharing one.

Tenants, users and workspaces vary so that the legitimacy evidence varies too: every 10th
tenant and every 7th user is inactive, every 11th run has no tenant, every 3rd no user,
and every 13th run's tenant belongs to another workspace.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import Servers, log

#: Thresholds: queued runs get two hours, so fresh queued runs stay fresh all benchmark long.
QUEUED_STALE_AFTER_SECONDS = 7200
RUNNING_STALE_AFTER_SECONDS = 3600

#: The generated workers heartbeat once, at generation: they must stay alive all run long.
WORKERS_LOST_AFTER_SECONDS = 86_400
WORKERS = 100

STALE_TYPES = ("inventory.sync", "backup.create", "report.export")
TERMINAL_TYPES = ("inventory.sync", "backup.create", "report.export", "restore.run")

#: The ``requeue`` data's retry type, its policy entry and its lost worker.
RETRY_TYPE = "sync.retry"
RETRY_MAX_ATTEMPTS = 2
RETRY_TYPE_TOML = f"""
[types."{RETRY_TYPE}"]
queued_stale_after_seconds = {QUEUED_STALE_AFTER_SECONDS}
running_stale_after_seconds = {RUNNING_STALE_AFTER_SECONDS}
recovery = "retry"
max_attempts = {RETRY_MAX_ATTEMPTS}
"""
LOST_WORKER_ID = WORKERS + 1


def policy_toml(
    *,
    batch_limit: int = 500,
    interval_seconds: int = 60,
    running_stale_after_seconds: int = RUNNING_STALE_AFTER_SECONDS,
    extra_types: str = "",
) -> str:
    """The benchmark policy: three scheduled types (one bridge-less), one unscheduled."""
    queued = QUEUED_STALE_AFTER_SECONDS
    running = running_stale_after_seconds
    return f"""\
[reconciliation]
batch_limit = {batch_limit}
interval_seconds = {interval_seconds}

[workers]
heartbeat_interval_seconds = 60
lost_after_seconds = {WORKERS_LOST_AFTER_SECONDS}

[types."inventory.sync"]
queued_stale_after_seconds = {queued}
running_stale_after_seconds = {running}

[types."backup.create"]
queued_stale_after_seconds = {queued}
running_stale_after_seconds = {running}

[types."report.export"]
queued_stale_after_seconds = {queued}
running_stale_after_seconds = {running}
direct_failed_bridge = false

[types."restore.run"]
queued_stale_after_seconds = {queued}
running_stale_after_seconds = {running}

[types."legacy.import"]
queued_stale_after_seconds = {queued}
running_stale_after_seconds = {running}
scheduled_reconciliation = false
{extra_types}"""


def write_policy(path: Path, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(policy_toml(**kwargs))  # type: ignore[arg-type]
    return path


_PARTIES = """
INSERT INTO workspaces (id, name, created_at)
SELECT i, 'workspace ' || i, now() - interval '30 days' FROM generate_series(1, 20) AS i;
INSERT INTO tenants (id, workspace_id, name, is_active, created_at)
SELECT i, 1 + (i - 1) % 20, 'tenant ' || i, i % 10 <> 0, now() - interval '30 days'
FROM generate_series(1, 200) AS i;
INSERT INTO users (id, email, is_active, created_at)
SELECT i, 'user' || i || '@example.test', i % 7 <> 0, now() - interval '30 days'
FROM generate_series(1, 500) AS i;
INSERT INTO runwarden_workers (nodename, hostname, pid, started_at, last_heartbeat_at)
SELECT 'celery@bench-' || i, 'bench-' || i, 1000 + i, now() - interval '1 hour', now()
FROM generate_series(1, {workers}) AS i;
"""
# Stopped, and silent since, twice the policy's lost_after_seconds ago. Stopped rather than
# only silent: a worker's silence counts from the database server's start at the earliest
# (a restart is no worker's death), and the benchmark's server is minutes old.
_LOST_WORKER = f"""
INSERT INTO runwarden_workers (id, nodename, hostname, pid, started_at, last_heartbeat_at,
                               stopped_at)
VALUES ({LOST_WORKER_ID}, 'celery@bench-lost', 'bench-lost', 999, now() - interval '3 days',
        now() - make_interval(secs => {2 * WORKERS_LOST_AFTER_SECONDS}),
        now() - make_interval(secs => {2 * WORKERS_LOST_AFTER_SECONDS}));
"""

# {kind} is an SQL expression of i naming the kind of run i is.
_RUNS = """
INSERT INTO operation_runs (
    id, workspace_id, tenant_id, user_id, type, status, outcome, celery_task_id, attempts,
    context, summary_counts, failure_summary,
    created_at, updated_at, started_at, completed_at, last_heartbeat_at, worker_id)
SELECT i,
    CASE WHEN p.tenant IS NULL THEN 1 + i % 20
         WHEN i % 13 = 0 THEN 1 + p.tenant % 20          -- tenant of another workspace
         ELSE 1 + (p.tenant - 1) % 20 END,
    p.tenant, p.usr,
    CASE k.kind
        WHEN 'stale' THEN (ARRAY['inventory.sync', 'backup.create',
                                 'report.export'])[1 + (i / 9) % 3]
        WHEN 'requeue' THEN '{retry_type}'
        WHEN 'uncovered' THEN 'adhoc.script'
        WHEN 'unscheduled' THEN 'legacy.import'
        WHEN 'done' THEN (ARRAY['inventory.sync', 'backup.create', 'report.export',
                                'restore.run'])[1 + i % 4]
        ELSE 'inventory.sync' END,
    CASE k.kind WHEN 'done' THEN 'completed' WHEN 'fresh_queued' THEN 'queued'
                ELSE 'running' END,
    CASE k.kind WHEN 'done' THEN (CASE WHEN i % 17 = 0 THEN 'failed' ELSE 'succeeded' END)
                ELSE 'pending' END,
    md5(i::text),
    CASE k.kind WHEN 'fresh_queued' THEN 0 ELSE 1 END,
    jsonb_build_object('inputs', jsonb_build_object('full', i % 2 = 0, 'page_size', 100)),
    CASE k.kind WHEN 'done' THEN jsonb_build_object('items', i % 50) ELSE '{{}}'::jsonb END,
    '[]'::jsonb,
    t.created, t.created,
    CASE k.kind WHEN 'fresh_queued' THEN NULL ELSE t.created + interval '5 seconds' END,
    CASE k.kind WHEN 'done' THEN t.created + interval '90 seconds' ELSE NULL END,
    CASE WHEN k.kind = 'fresh_running' THEN now()
         WHEN k.kind = 'stale' AND i % 2 = 0 THEN t.created + interval '1 hour'
         WHEN k.kind = 'done' THEN t.created + interval '60 seconds'
         ELSE NULL END,
    CASE k.kind WHEN 'fresh_queued' THEN NULL WHEN 'requeue' THEN {lost_worker}
                ELSE 1 + i % {workers} END
FROM generate_series(1, {total}) AS i
CROSS JOIN LATERAL (SELECT {kind} AS kind) AS k
CROSS JOIN LATERAL (
    SELECT CASE WHEN i % 11 = 0 THEN NULL ELSE 1 + i % 200 END AS tenant,
           CASE WHEN i % 3 = 0 THEN NULL ELSE 1 + i % 500 END AS usr) AS p
CROSS JOIN LATERAL (
    SELECT CASE WHEN k.kind IN ('fresh_running', 'fresh_queued')
                    THEN now() - i * interval '1 millisecond'
                WHEN k.kind = 'done' THEN now() - interval '30 days' + i * interval '1 second'
                ELSE {stale_created} END
           AS created) AS t;
SELECT setval(pg_get_serial_sequence('operation_runs', 'id'), {total} + 1, false);
"""

DRAIN_KIND = """CASE WHEN i % 9 = 0 THEN 'stale'
                     WHEN i % 90 = 1 THEN 'fresh_running'
                     WHEN i % 90 = 2 THEN 'fresh_queued'
                     WHEN i % 90 = 3 THEN 'uncovered'
                     WHEN i % 90 = 4 THEN 'unscheduled'
                     ELSE 'done' END"""

#: The drain data with every 10th stale run one to requeue (:data:`REQUEUE_SQL`).
REQUEUE_KIND = (
    "CASE WHEN i % 90 = 0 THEN 'requeue'\n                     ELSE " + DRAIN_KIND + " END"
)

IDLE_ACTIVE_RUNS = 200
IDLE_KIND = f"""CASE WHEN i > {IDLE_ACTIVE_RUNS} THEN 'done'
                    WHEN i % 2 = 0 THEN 'fresh_running'
                    ELSE 'fresh_queued' END"""

#: Creation times of the stale runs, by data shape. ``distinct``: each its own, as runs
#: created one by one are. ``tied``: one for all, as runs bulk-created in one transaction
#: are (``now()`` is constant inside a transaction) -- a scan whose order the index cannot
#: give then sorts every stale run left on every pass.
STALE_CREATED = {
    "distinct": "now() - interval '5 hours' - i * interval '10 milliseconds'",
    "tied": "now() - interval '5 hours'",
}

#: Stale runs of the drain data, as an SQL predicate over operation_runs.
DRAIN_STALE_SQL = "id % 9 = 0"


def drain_stale_count(total: int) -> int:
    return total // 9


#: The stale runs of the ``requeue`` data that are requeued, as an SQL predicate.
REQUEUE_SQL = "id % 90 = 0"


def requeue_count(total: int) -> int:
    return total // 90


#: The drain's "host" shape: runwarden in this schema of an application's database, its
#: gate on the application's organizations and people ([tenancy]).
HOST_SCHEMA = "runwarden"
HOST_TENANCY = """
[tenancy]
tenants = { table = "public.organizations", id = "id", workspace_id = "account_id", \
active = { column = "deleted_at", is_null = true } }
users = { table = "public.people", id = "id", active = "is_active" }
"""
_HOST_TABLES = """
CREATE TABLE public.organizations (id bigint PRIMARY KEY, account_id bigint NOT NULL,
                                   name text NOT NULL, deleted_at timestamptz);
CREATE TABLE public.people (id bigint PRIMARY KEY, email text NOT NULL,
                            is_active boolean NOT NULL);
"""
# The application's rows are runwarden's own, copied: the same verdicts either way.
_HOST_PARTIES = """
INSERT INTO public.organizations
SELECT id, workspace_id, name, CASE WHEN is_active THEN NULL ELSE created_at END
FROM tenants;
INSERT INTO public.people SELECT id, email, is_active FROM users;
"""


def _migrate(url: str, *, policy: Path | None = None, schema: str | None = None) -> None:
    from worker.lifecycle.policy import load_policy
    from worker.migrate import upgrade

    upgrade(url, schema=schema, policy=load_policy(policy) if policy else None)


def build_database(
    srv: Servers,
    name: str,
    *,
    total: int,
    kind: str,
    shape: str = "distinct",
    host_policy: Path | None = None,
    lost_worker: bool = False,
) -> str:
    """A migrated database ``name`` holding ``total`` generated runs; returns its URL.
    ``shape`` names the stale runs' creation times (:data:`STALE_CREATED`). With
    ``host_policy`` (a policy with :data:`HOST_TENANCY`), runwarden lives in
    :data:`HOST_SCHEMA` beside the application's organizations and people. With
    ``lost_worker``, the lost worker :data:`LOST_WORKER_ID` is registered too."""
    url = srv.create_database(name)
    schema = HOST_SCHEMA if host_policy else None
    if host_policy:
        with srv.connect(name) as conn:
            conn.execute(_HOST_TABLES)
    _migrate(url, policy=host_policy, schema=schema)
    with srv.connect(name, schema) as conn:
        conn.execute(_PARTIES.format(workers=WORKERS))
        if lost_worker:
            conn.execute(_LOST_WORKER)
        conn.execute(
            _RUNS.format(
                total=total,
                kind=kind,
                stale_created=STALE_CREATED[shape],
                workers=WORKERS,
                retry_type=RETRY_TYPE,
                lost_worker=LOST_WORKER_ID,
            )
        )
        if host_policy:
            conn.execute(_HOST_PARTIES)
        conn.execute("VACUUM (ANALYZE)")
    log(f"  generated {total:,} runs in database {name} ({shape} stale creation times)")
    return url


def rows_checksum(
    srv: Servers, database: str, predicate: str, schema: str | None = None
) -> tuple[int, str]:
    """Row count and md5 of every column of every run matching ``predicate``."""
    with srv.connect(database, schema) as conn:
        row = conn.execute(
            "SELECT count(*), md5(string_agg(r::text, ',' ORDER BY r.id)) "
            f"FROM operation_runs AS r WHERE {predicate}"
        ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])
