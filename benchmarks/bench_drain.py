"""1. Backlog drain: ``runwarden reconcile --drain --json`` against the bare-psycopg floor.

Each repetition copies the generated database (CREATE DATABASE ... TEMPLATE) once per side,
so both sides start from identical data; the order of the sides alternates. Both sides are
whole processes with stdout redirected to a file, timed from spawn to exit, and their peak
RSS comes from ``wait4``.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BIN,
    REPO,
    WORK,
    ProcessRun,
    Result,
    Scale,
    Servers,
    base_env,
    log,
    median,
    run_process,
)
from benchmarks.data import (
    DRAIN_KIND,
    DRAIN_STALE_SQL,
    HOST_SCHEMA,
    HOST_TENANCY,
    REQUEUE_KIND,
    REQUEUE_SQL,
    RETRY_TYPE,
    RETRY_TYPE_TOML,
    build_database,
    drain_stale_count,
    requeue_count,
    rows_checksum,
    write_policy,
)
from benchmarks.floor_drain import PRIORITY, PRIORITY_LIST, QUEUE, policy_sha256

#: The default queue's Redis lists, one per kombu priority step.
QUEUE_LISTS = (QUEUE, *(f"{QUEUE}\x06\x16{step}" for step in (3, 6, 9)))

TEMPLATE = "bench_drain_template"
COPY = "bench_drain_copy"
GOAL_RATIO = 1.1
EVIDENCE_KEYS = {
    "evaluated_at",
    "freshness_state",
    "threshold_seconds",
    "reference_time",
    "status",
    "execution_legitimacy",
    "terminal_truth_path",
    "policy_sha256",
    "worker",
    "attempt",
    "attempts",
    "max_attempts",
}
CHANGE_KEYS = {
    "applied",
    "operation_run_id",
    "type",
    "action",
    "before",
    "after",
    "reason_code",
    "reason_message",
    "evidence",
}


@dataclass(frozen=True)
class Side:
    name: str
    argv: list[str]


def runwarden_drain_available() -> str | None:
    """None when ``runwarden reconcile --drain --json`` exists, else why not."""
    runwarden = BIN / "runwarden"
    if not runwarden.exists():
        return f"{runwarden} is not installed"
    probe = subprocess.run(
        [str(runwarden), "reconcile", "--help"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env=base_env(),
    )
    if probe.returncode != 0:
        return "the `runwarden reconcile` command does not exist yet"
    missing = [flag for flag in ("--drain", "--json", "--limit") if flag not in probe.stdout]
    if missing:
        return f"`runwarden reconcile` has no {', '.join(missing)} option yet"
    return None


def sides(limit: int) -> list[Side]:
    floor = Side(
        "floor",
        [str(BIN / "python"), str(REPO / "benchmarks" / "floor_drain.py"), "--limit", str(limit)],
    )
    runwarden = Side(
        "runwarden",
        [str(BIN / "runwarden"), "reconcile", "--drain", "--json", "--limit", str(limit)],
    )
    return [floor, runwarden]


@dataclass(frozen=True)
class Expected:
    """What a drain of one variant's data must leave."""

    stale: int
    #: of the stale runs, how many are requeued (REQUEUE_SQL), the rest failed
    requeued: int
    untouched: tuple[int, str]
    policy_sha256: str
    schema: str | None = None


def verify(srv: Servers, database: str, output: Path, want: Expected) -> list[str]:
    """What is wrong after a drain (empty: nothing): every stale run failed or requeued
    once with one audit row and one change in the output, every requeued run's message
    on the broker under its new task id, and no other run changed."""
    problems: list[str] = []
    stale, requeued = want.stale, want.requeued
    failed = stale - requeued
    requeue_sql = REQUEUE_SQL if requeued else "false"
    with srv.connect(database, want.schema) as conn:
        row = conn.execute(
            f"""SELECT count(*) FILTER (WHERE NOT ({requeue_sql})
                                       AND status = 'completed' AND outcome = 'failed'
                                       AND completed_at IS NOT NULL
                                       AND jsonb_array_length(failure_summary) = 1
                                       AND context->'reconciliation'->>'reason_code'
                                           = 'run.stale_running'
                                       AND context->'reconciliation'->'evidence'
                                           ? 'execution_legitimacy'),
                       count(*) FILTER (WHERE {requeue_sql}
                                        AND status = 'queued' AND outcome = 'pending'
                                        AND completed_at IS NULL
                                        AND celery_task_id <> md5(id::text)
                                        AND worker_id IS NULL AND requeued_at IS NOT NULL
                                        AND attempts = 1 AND unstarted_attempts = 0
                                        AND NOT publish_pending
                                        AND jsonb_array_length(failure_summary) = 0
                                        AND NOT context ? 'reconciliation'),
                       count(*)
                FROM operation_runs WHERE {DRAIN_STALE_SQL}"""
        ).fetchone()
        assert row is not None
        if tuple(row) != (failed, requeued, stale):
            problems.append(
                f"of {row[2]} stale runs {row[0]} failed with a record and {row[1]} requeued "
                f"(want {failed} and {requeued} of {stale})"
            )
        audit = conn.execute(
            f"""SELECT count(*), count(DISTINCT resource_id),
                       count(*) FILTER (WHERE action = 'operation_run.force_failed'
                                        AND resource_type = 'operation_run'
                                        AND metadata ? 'evidence'
                                        AND metadata->>'reason_code' = 'run.stale_running'
                                        AND metadata->>'outcome' = 'failed'
                                        AND resource_id IN (SELECT id::text FROM operation_runs
                                                            WHERE {DRAIN_STALE_SQL}
                                                              AND NOT ({requeue_sql}))),
                       count(*) FILTER (WHERE action = 'operation_run.requeued'
                                        AND resource_type = 'operation_run'
                                        AND metadata ? 'evidence'
                                        AND metadata->>'reason_code' = 'run.worker_lost'
                                        AND metadata->>'outcome' = 'pending'
                                        AND resource_id IN (SELECT id::text FROM operation_runs
                                                            WHERE {requeue_sql}))
                FROM audit_logs"""
        ).fetchone()
        assert audit is not None
        if tuple(audit) != (stale, stale, failed, requeued):
            problems.append(
                f"audit rows: {audit[0]} rows for {audit[1]} runs, {audit[2]} force_failed and "
                f"{audit[3]} requeued well-formed (want {stale}, {stale}, {failed}, {requeued})"
            )
        task_ids = {
            str(task_id): int(run_id)
            for run_id, task_id in conn.execute(
                f"SELECT id, celery_task_id FROM operation_runs WHERE {requeue_sql}"
            )
        }
    if rows_checksum(srv, database, f"NOT ({DRAIN_STALE_SQL})", want.schema) != want.untouched:
        problems.append("runs that were not stale changed")
    problems += _verify_messages(srv, task_ids)
    try:
        document: dict[str, Any] = json.loads(output.read_text())
    except (OSError, ValueError) as exc:
        return [*problems, f"output is not one JSON document: {exc}"]
    changes = document.get("changes", [])
    ids = Counter(change.get("operation_run_id") for change in changes)
    if len(ids) != stale or any(n != 1 for n in ids.values()) or any(i % 9 for i in ids):
        problems.append(f"output: {len(changes)} changes for {len(ids)} runs (want {stale})")
    if document.get("reconciled") != stale:
        problems.append(f"output reconciled={document.get('reconciled')} (want {stale})")
    malformed = sum(
        1
        for change in changes
        if not set(change) >= CHANGE_KEYS
        or not change.get("applied")
        or not set(change.get("evidence") or {}) >= EVIDENCE_KEYS
        or change["evidence"].get("policy_sha256") != want.policy_sha256
    )
    if malformed:
        problems.append(f"{malformed} change objects lack keys of the documented shape")
    requeue_changes = sum(
        1
        for change in changes
        if change.get("action") == "requeue"
        and change.get("operation_run_id") in task_ids.values()
        and (change.get("after") or {}).get("status") == "queued"
        and change.get("reason_code") == "run.worker_lost"
        and (change.get("evidence") or {}).get("attempt") == 1
    )
    fail_changes = sum(1 for change in changes if change.get("action") == "force_fail")
    if (requeue_changes, fail_changes) != (requeued, failed):
        problems.append(
            f"output: {requeue_changes} requeue and {fail_changes} force_fail changes "
            f"(want {requeued} and {failed})"
        )
    return problems


def _verify_messages(srv: Servers, task_ids: dict[str, int]) -> list[str]:
    """Every requeued run's Celery message, once, on the default queue at the operations'
    priority (kombu's Redis list for it), and nothing else on the queue's lists."""
    broker = _broker(srv)
    messages = [raw for key in QUEUE_LISTS for raw in broker.lrange(key, 0, -1)]
    found: Counter[tuple[str, str, int, int]] = Counter()
    for raw in messages:
        envelope = json.loads(raw)
        headers = envelope.get("headers", {})
        priority = envelope.get("properties", {}).get("priority")
        found[
            (str(headers.get("id")), str(headers.get("task")), headers.get("retries"), priority)
        ] += 1
    wanted = Counter((task_id, f"operations.{RETRY_TYPE}", 1, PRIORITY) for task_id in task_ids)
    if broker.llen(PRIORITY_LIST) != len(messages):
        return [f"broker: {len(messages)} messages, not all on {PRIORITY_LIST!r}"]
    if found != wanted:
        return [
            f"broker: {len(messages)} messages, {sum((found & wanted).values())} of the "
            f"{len(task_ids)} requeued runs' (want exactly those)"
        ]
    return []


#: The Redis database of the drain's broker (the benchmarks' Redis, a database of its own).
BROKER_DB = 5


def _broker_url(srv: Servers) -> str:
    return f"{srv.redis.url}/{BROKER_DB}"


def _broker(srv: Servers) -> Any:
    import redis

    return redis.Redis.from_url(_broker_url(srv))


def runwarden_policy_sha256(policy: Path) -> str:
    """The hash ``runwarden policy --json`` prints for ``policy``."""
    probe = subprocess.run(
        [str(BIN / "runwarden"), "policy", "--json"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env=base_env(RUNWARDEN_POLICY_FILE=str(policy)),
    )
    return str(json.loads(probe.stdout)["sha256"])


#: ``host``: the ``distinct`` data with runwarden in its own schema and its gate on an
#: application's organizations and people ([tenancy], read through the gate views); the
#: floor drains the same data reading runwarden's own tenants and users. ``requeue``: the
#: ``distinct`` data with every 10th stale run requeued instead of failed
#: (:data:`benchmarks.data.REQUEUE_KIND`), its message published to the broker.
SHAPES = ("distinct", "tied", "host", "requeue")


def run(srv: Servers, scale: Scale) -> Result:
    """Every data shape (:data:`benchmarks.data.STALE_CREATED`, and ``host``); the goal
    holds on each. Figures of the ``distinct`` shape keep their plain names, the others'
    are prefixed by their shape."""
    result = Result(
        "drain",
        f"runwarden reconcile --drain --json time / floor time <= {GOAL_RATIO}, "
        "stale runs with distinct and with tied creation times, with [tenancy] on in a "
        "schema, and with a tenth of them requeued",
    )
    stale = drain_stale_count(scale.drain_total)
    result.figures.update({"runs_total": scale.drain_total, "runs_stale": stale, "repetitions": 0})
    why = runwarden_drain_available()
    if why:
        log(f"  runwarden side: not available: {why}; timing the floor alone")
    ratios: list[float] = []
    for shape in SHAPES:
        why = _run_shape(srv, scale, result, shape, why)
        ratio = result.figures.get(_key(shape, "ratio"))
        if isinstance(ratio, float):
            ratios.append(ratio)
    if why or len(ratios) != len(SHAPES):
        return result.unavailable(why or "no runwarden timing")
    result.goal_met = max(ratios) <= GOAL_RATIO and not result.notes
    return result


def _key(shape: str, name: str) -> str:
    return name if shape == "distinct" else f"{shape}_{name}"


def _run_shape(
    srv: Servers, scale: Scale, result: Result, shape: str, why: str | None
) -> str | None:
    stale = drain_stale_count(scale.drain_total)
    work = WORK / "drain"
    work.mkdir(parents=True, exist_ok=True)
    host, requeue = shape == "host", shape == "requeue"
    policy = write_policy(work / "policy.toml", extra_types=RETRY_TYPE_TOML if requeue else "")
    schema = HOST_SCHEMA if host else None
    if host:
        policy.write_text(policy.read_text() + HOST_TENANCY)
    sha256 = runwarden_policy_sha256(policy)
    if policy_sha256(str(policy)) != sha256:
        raise RuntimeError(
            f"the floor's policy sha256 {policy_sha256(str(policy))} is not runwarden's {sha256}"
        )
    build_database(
        srv,
        TEMPLATE,
        total=scale.drain_total,
        kind=REQUEUE_KIND if requeue else DRAIN_KIND,
        shape=shape if shape in ("distinct", "tied") else "distinct",
        host_policy=policy if host else None,
        lost_worker=requeue,
    )
    want = Expected(
        stale=stale,
        requeued=requeue_count(scale.drain_total) if requeue else 0,
        untouched=rows_checksum(srv, TEMPLATE, f"NOT ({DRAIN_STALE_SQL})", schema),
        policy_sha256=sha256,
        schema=schema,
    )

    timings: dict[str, list[float]] = {"floor": [], "runwarden": []}
    rss: dict[str, list[float]] = {"floor": [], "runwarden": []}
    all_sides = [s for s in sides(500) if not (why and s.name == "runwarden")]
    for repetition in range(scale.drain_repetitions):
        ordered = all_sides if repetition % 2 == 0 else list(reversed(all_sides))
        for side in ordered:
            url = srv.create_database(COPY, template=TEMPLATE)
            with srv.connect(COPY) as conn:
                conn.execute("CHECKPOINT")
            _broker(srv).flushdb()
            env = base_env(
                RUNWARDEN_DATABASE_URL=url,
                RUNWARDEN_BROKER_URL=_broker_url(srv),
                RUNWARDEN_POLICY_FILE=str(policy),
                RUNWARDEN_VAR_DIR=str(work / "var"),
                **({"RUNWARDEN_DB_SCHEMA": schema} if schema else {}),
            )
            output = work / f"{side.name}.json"
            outcome: ProcessRun = run_process(side.argv, env=env, stdout_path=output)
            if outcome.returncode != 0:
                srv.drop_database(COPY)
                message = f"{side.name} exited {outcome.returncode}: {outcome.stderr[-600:]}"
                if side.name == "runwarden":
                    why = message
                    all_sides = [s for s in all_sides if s.name != "runwarden"]
                    log(f"  runwarden side: not available: {message}")
                    continue
                raise RuntimeError(message)
            problems = verify(srv, COPY, output, want)
            srv.drop_database(COPY)
            status = "verified" if not problems else "WRONG: " + "; ".join(problems)
            log(
                f"  {shape} rep {repetition + 1} {side.name:9s} {outcome.seconds:7.3f} s "
                f"{stale / outcome.seconds:9,.0f} runs/s  peak RSS {outcome.max_rss_mb:6.1f} MB"
                f"  {status}"
            )
            if problems:
                result.notes.append(f"{shape} {side.name} rep {repetition + 1}: {status}")
            timings[side.name].append(outcome.seconds)
            rss[side.name].append(outcome.max_rss_mb)
        result.figures["repetitions"] = repetition + 1
    srv.drop_database(TEMPLATE)

    floor_s = median(timings["floor"])
    result.figures.update(
        {
            _key(shape, "floor_seconds"): timings["floor"],
            _key(shape, "floor_median_seconds"): round(floor_s, 3),
            _key(shape, "floor_runs_per_second"): round(stale / floor_s),
            _key(shape, "floor_peak_rss_mb"): round(max(rss["floor"]), 1),
        }
    )
    if why or not timings["runwarden"]:
        return why or "no runwarden timing"
    runwarden_s = median(timings["runwarden"])
    result.figures.update(
        {
            _key(shape, "runwarden_seconds"): timings["runwarden"],
            _key(shape, "runwarden_median_seconds"): round(runwarden_s, 3),
            _key(shape, "runwarden_runs_per_second"): round(stale / runwarden_s),
            _key(shape, "runwarden_peak_rss_mb"): round(max(rss["runwarden"]), 1),
            _key(shape, "ratio"): round(runwarden_s / floor_s, 3),
        }
    )
    return None


def summary(result: Result) -> list[str]:
    f = result.figures
    lines: list[str] = []
    for shape in SHAPES:
        floor = f.get(_key(shape, "floor_median_seconds"))
        if floor is None:
            continue
        label = {
            "host": "host tenancy in a schema:",
            "requeue": "a tenth requeued:",
        }.get(shape, f"{shape} creation times:")
        lines.append(
            f"{label} floor median {floor} s "
            f"({f.get(_key(shape, 'floor_runs_per_second')):,} runs/s) over "
            f"{f.get('repetitions')} runs"
        )
        if _key(shape, "runwarden_median_seconds") in f:
            lines.append(
                f"  runwarden median {f[_key(shape, 'runwarden_median_seconds')]} s "
                f"({f[_key(shape, 'runwarden_runs_per_second')]:,} runs/s); "
                f"ratio {f[_key(shape, 'ratio')]} (goal <= {GOAL_RATIO})"
            )
    return lines
