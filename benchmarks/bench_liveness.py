"""5. Lost-worker detection: runs in flight on a worker whose whole process group is
SIGKILLed (main process and pool at once, as the OOM killer or a lost node leaves them),
timed from the kill to each run's terminal write, both on the database's clock; beat runs
on a second worker. Settings: ``[workers] heartbeat_interval_seconds = 1``,
``lost_after_seconds = 5``, ``interval_seconds = 2``. Without worker liveness the same
fault is found only when the type's running window passes (``running_stale_after_seconds``:
3600 s for ``inventory.sync`` on the packaged policy).

Also the cost of the worker's heartbeat: its writes per worker per minute, from
pg_stat_statements over an idle stretch of the beat worker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import BIN, REPO, WORK, Result, Scale, Servers, median, percentile
from benchmarks.data import IDLE_KIND, build_database

DATABASE = "bench_liveness"
HEARTBEAT_S = 1
LOST_AFTER_S = 5
INTERVAL_S = 2
GOAL_P99_SECONDS = LOST_AFTER_S + INTERVAL_S + 1.0
QUEUE = "bench-victims"
POLICY = f"""
[reconciliation]
batch_limit = 100
interval_seconds = {INTERVAL_S}

[workers]
heartbeat_interval_seconds = {HEARTBEAT_S}
lost_after_seconds = {LOST_AFTER_S}

[types."bench.hold"]
queued_stale_after_seconds = 3600
running_stale_after_seconds = 3600
"""
IDLE_STRETCH_SECONDS = 30


@contextlib.contextmanager
def _worker(
    env: dict[str, str], log_path: Path, *, name: str, beat: bool, queue: str
) -> Iterator[subprocess.Popen[bytes]]:
    argv = [
        str(BIN / "celery"),
        "-A",
        "worker.celery_app",
        "worker",
        "-c",
        "2",
        "-Q",
        queue,
        "-n",
        f"{name}@%h",
        "-I",
        "benchmarks.bench_tasks",
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        "INFO",
        *(["-B", "-s", str(log_path.with_suffix(".schedule"))] if beat else []),
    ]
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        while b" ready." not in log_path.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {name} did not start: {log_path.read_text()[-1500:]}")
            time.sleep(0.1)
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def _heartbeat_calls(conn: Any) -> int:
    row = conn.execute(
        """SELECT COALESCE(sum(calls), 0) FROM pg_stat_statements
           WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
             AND query LIKE 'UPDATE runwarden_workers SET last_heartbeat_at%%'"""
    ).fetchone()
    return int(row[0])


def run(srv: Servers, scale: Scale) -> Result:
    result = Result(
        "liveness",
        f"lost worker: p99 from SIGKILL to terminal write <= lost_after_seconds + "
        f"interval + 1 s = {GOAL_P99_SECONDS:.0f} s",
    )
    from benchmarks.bench_bridge import configured_producer, service_env

    work = WORK / "liveness"
    work.mkdir(parents=True, exist_ok=True)
    policy = work / "policy.toml"
    policy.write_text(POLICY)
    url = build_database(srv, DATABASE, total=0, kind=IDLE_KIND)
    env = service_env(srv, url, policy, work)
    rounds = 2 if scale.quick else 6
    runs_per_round = 2
    latencies: list[float] = []
    silent: list[float] = []
    reasons: set[str] = set()
    try:
        with (
            srv.connect(DATABASE) as conn,
            configured_producer(env),
            _worker(env, work / "beat.log", name="bench-beat", beat=True, queue="celery"),
        ):
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            from worker.celery_app import app
            from worker.dispatch import start_operation

            app.conf.task_routes = {"operations.bench.hold": {"queue": QUEUE}}
            # The app builds its router once (an earlier benchmark may have published).
            app.amqp.flush_routes()
            app.amqp.__dict__.pop("router", None)
            # The heartbeat's cost: the beat worker alone, idle.
            before = _heartbeat_calls(conn)
            time.sleep(IDLE_STRETCH_SECONDS)
            per_minute = (_heartbeat_calls(conn) - before) * 60 / IDLE_STRETCH_SECONDS
            for number in range(rounds):
                with _worker(
                    env,
                    work / f"victim-{number}.log",
                    name=f"bench-victim-{number}",
                    beat=False,
                    queue=QUEUE,
                ) as victim:
                    ids = [
                        start_operation("bench.hold", workspace_id=1, inputs={"seconds": 300})
                        for _ in range(runs_per_round)
                    ]
                    deadline = time.monotonic() + 60
                    while conn.execute(
                        "SELECT count(*) FROM operation_runs WHERE id = ANY(%s)"
                        " AND status = 'running' AND worker_id IS NOT NULL",
                        [ids],
                    ).fetchone()[0] < len(ids):  # type: ignore[index]
                        if time.monotonic() > deadline:
                            raise RuntimeError("the victim never started its runs")
                        time.sleep(0.1)
                    time.sleep(number * 0.37 % HEARTBEAT_S)  # kill at varied beat phases
                    os.killpg(victim.pid, signal.SIGKILL)
                    victim.wait(10)
                    (killed_at,) = conn.execute("SELECT now()").fetchone()  # type: ignore[misc]
                deadline = time.monotonic() + LOST_AFTER_S + 60
                while True:
                    rows = conn.execute(
                        """SELECT extract(epoch FROM r.completed_at - %s),
                                  extract(epoch FROM r.completed_at - w.last_heartbeat_at),
                                  r.context->'reconciliation'->>'reason_code'
                           FROM operation_runs AS r JOIN runwarden_workers AS w
                             ON w.id = r.worker_id
                           WHERE r.id = ANY(%s) AND r.status = 'completed'""",
                        [killed_at, ids],
                    ).fetchall()
                    if len(rows) == len(ids) or time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
                if len(rows) < len(ids):
                    result.notes.append(f"round {number}: {len(ids) - len(rows)} runs never ended")
                latencies += [float(r[0]) for r in rows]
                silent += [float(r[1]) for r in rows]
                reasons |= {str(r[2]) for r in rows}
    finally:
        srv.drop_database(DATABASE)
    if not latencies:
        return result.unavailable("no run ended")
    if reasons != {"run.worker_lost"}:
        result.notes.append(f"reasons: {sorted(reasons)}")
    p99 = percentile(latencies, 99)
    result.figures.update(
        {
            "heartbeat_interval_seconds": HEARTBEAT_S,
            "lost_after_seconds": LOST_AFTER_S,
            "interval_seconds": INTERVAL_S,
            "kills": rounds,
            "runs": len(latencies),
            "p50_seconds": round(median(latencies), 3),
            "p99_seconds": round(p99, 3),
            "max_seconds": round(max(latencies), 3),
            "min_seconds": round(min(latencies), 3),
            "min_silence_before_failure_seconds": round(min(silent), 3),
            "heartbeat_writes_per_worker_minute": round(per_minute, 1),
            "without_liveness_seconds": 3600,
        }
    )
    if min(silent) < LOST_AFTER_S:
        result.notes.append("a run was failed before its worker was silent for lost_after")
    result.goal_met = p99 <= GOAL_P99_SECONDS and not result.notes
    return result


def summary(result: Result) -> list[str]:
    f = result.figures
    return [
        f"{f['kills']} whole-worker SIGKILLs with {f['runs']} runs in flight; heartbeat "
        f"{f['heartbeat_interval_seconds']} s, lost after {f['lost_after_seconds']} s, "
        f"reconcile interval {f['interval_seconds']} s",
        f"kill -> terminal write (run.worker_lost): p50 {f['p50_seconds']} s, p99 "
        f"{f['p99_seconds']} s, max {f['max_seconds']} s, min {f['min_seconds']} s (goal p99 "
        f"<= {GOAL_P99_SECONDS:.0f} s); before: the type's running window, "
        f"{f['without_liveness_seconds']} s on the packaged policy",
        "never failed early: shortest silence before a failure "
        f"{f['min_silence_before_failure_seconds']} s (lost_after {f['lost_after_seconds']} s)",
        f"heartbeat cost: {f['heartbeat_writes_per_worker_minute']} writes per worker per "
        f"minute at a {f['heartbeat_interval_seconds']} s interval (60 / interval: 6 at the "
        "packaged 10 s), one UPDATE each",
    ]
