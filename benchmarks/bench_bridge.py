"""3. Bridge overhead: N operation tasks against N plain Celery tasks, same 5 ms body, on the
same prefork worker (concurrency 2) on Redis with PostgreSQL. Also 5b: the idle worker main
process's memory.

Each batch is queued while the worker's main process is stopped (SIGSTOP), so publishing
-- ``start_operation`` inserts the run row, a plain task does not -- is not timed; the clock
starts at SIGCONT and stops at the last body's end (plain) or the last run's terminal
write (operations), whichever is later. Sides alternate. SQL statements per tracked task
come from pg_stat_statements, reset after the batch was queued and read after it finished;
the benchmark's own queries run as another role and are left out.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis

from benchmarks.common import (
    BIN,
    REPO,
    WORK,
    Result,
    Scale,
    Servers,
    base_env,
    log,
    median,
    missing_attribute,
    plain_url,
    proc_status_mb,
)
from benchmarks.data import IDLE_KIND, build_database, write_policy

DATABASE = "bench_bridge"
OBSERVER = "bench_observer"
GOAL_RATIO = 0.8
GOAL_STATEMENTS = 3
TRANSACTION_CONTROL = ("begin", "commit", "rollback", "start transaction")
OPERATION_POLICY = """
[types."bench.op"]
queued_stale_after_seconds = 3600
running_stale_after_seconds = 3600
"""


def bridge_unavailable() -> str | None:
    for module, attribute in (
        ("worker.celery_app", "app"),
        ("worker.tasks", "operation"),
        ("worker.dispatch", "start_operation"),
    ):
        why = missing_attribute(module, attribute)
        if why:
            return why
    return None


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def celery_worker(env: dict[str, str], log_path: Path, *extra: str) -> Iterator[Worker]:
    """``celery -A worker.celery_app worker -c 2`` with the benchmark tasks; stopped after."""
    argv = [
        str(BIN / "celery"),
        "-A",
        "worker.celery_app",
        "worker",
        "-P",
        "prefork",
        "-c",
        "2",
        "-I",
        "benchmarks.bench_tasks",
        "-n",
        f"bench-{os.getpid()}@localhost",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-l",
        "WARNING",
        *extra,
    ]
    with log_path.open("wb") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    worker = Worker(process, log_path)
    try:
        yield worker
    finally:
        worker.stop()


def service_env(srv: Servers, url: str, policy: Path, work: Path) -> dict[str, str]:
    return base_env(
        RUNWARDEN_DATABASE_URL=url,
        RUNWARDEN_BROKER_URL=f"{srv.redis.url}/0",
        RUNWARDEN_RESULT_BACKEND=f"{srv.redis.url}/1",
        RUNWARDEN_POLICY_FILE=str(policy),
        RUNWARDEN_VAR_DIR=str(work / "var"),
        BENCH_REDIS_URL=f"{srv.redis.url}/2",
    )


@contextmanager
def configured_producer(env: dict[str, str]) -> Iterator[None]:
    """Point this process's runwarden settings (dispatch, the Celery app) at ``env``."""
    saved = {k: os.environ.get(k) for k in env if k.startswith(("RUNWARDEN_", "BENCH_"))}
    for key in saved:
        os.environ[key] = env[key]
    from worker.settings import current_policy, get_settings

    get_settings.cache_clear()
    current_policy.cache_clear()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()
        current_policy.cache_clear()


class Observer:
    """The benchmark's own PostgreSQL connection, as a role pg_stat_statements tells apart."""

    def __init__(self, srv: Servers) -> None:
        with srv.admin() as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [OBSERVER])
            if not exists.fetchone():
                conn.execute(f"CREATE ROLE {OBSERVER} LOGIN SUPERUSER")
        url = plain_url(srv.postgres.url(DATABASE)).replace("postgres@", f"{OBSERVER}@", 1)
        self.conn: psycopg.Connection[Any] = psycopg.connect(url, autocommit=True)
        self.conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def reset_statements(self) -> None:
        self.conn.execute("SELECT pg_stat_statements_reset()")

    def statements(self) -> list[tuple[int, str]]:
        """(calls, query) of every statement runwarden's role ran in the database."""
        rows = self.conn.execute(
            """SELECT s.calls, s.query FROM pg_stat_statements AS s
               WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                 AND s.userid = (SELECT oid FROM pg_roles WHERE rolname = 'postgres')
               ORDER BY s.calls DESC"""
        ).fetchall()
        return [(int(calls), str(query)) for calls, query in rows]

    def finished(self, run_ids: list[int]) -> tuple[int, int, float | None]:
        row = self.conn.execute(
            """SELECT count(*) FILTER (WHERE status = 'completed'),
                      count(*) FILTER (WHERE outcome = 'succeeded'),
                      extract(epoch FROM max(completed_at))
               FROM operation_runs WHERE id = ANY(%s)""",
            [run_ids],
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), float(row[2]) if row[2] is not None else None

    def close(self) -> None:
        self.conn.close()


@dataclass(frozen=True)
class Batch:
    seconds: float
    statements: list[tuple[int, str]]


def _wait_for(predicate: Any, timeout_seconds: float, what: str, worker: Worker) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not predicate():
        if worker.process.poll() is not None:
            raise RuntimeError(f"the worker exited while waiting for {what}: {worker.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}: {worker.log_tail()}")
        time.sleep(0.003)


def run_batch(
    side: str,
    tasks: int,
    key: str,
    *,
    worker: Worker,
    counter: redis.Redis,
    observer: Observer,
    paused: bool = True,
) -> Batch:
    from benchmarks.bench_tasks import OPERATION_TYPE, plain
    from worker.dispatch import start_operation

    run_ids: list[int] = []
    counter.delete(key)
    if paused:
        os.kill(worker.pid, signal.SIGSTOP)
    try:
        for _ in range(tasks):
            if side == "plain":
                plain.apply_async(kwargs={"batch": key})
            else:
                run_ids.append(
                    start_operation(
                        OPERATION_TYPE,
                        workspace_id=1,
                        tenant_id=1,
                        user_id=1,
                        inputs={"batch": key},
                    )
                )
        observer.reset_statements()
    finally:
        started = time.time()
        if paused:
            os.kill(worker.pid, signal.SIGCONT)
    _wait_for(lambda: counter.llen(key) >= tasks, 300, f"{tasks} {side} bodies", worker)
    ended = max(float(value) for value in counter.lrange(key, 0, -1))
    statements: list[tuple[int, str]] = []
    if side == "tracked":
        _wait_for(lambda: observer.finished(run_ids)[0] >= tasks, 120, "runs to complete", worker)
        statements = observer.statements()
        _completed, succeeded, last_write = observer.finished(run_ids)
        if succeeded != tasks:
            raise RuntimeError(f"{succeeded} of {tasks} tracked runs succeeded")
        ended = max(ended, last_write or ended)
    return Batch(ended - started, statements)


def _per_task(statements: list[tuple[int, str]], tasks: int) -> tuple[float, float]:
    total = sum(calls for calls, _ in statements)
    data = sum(
        calls
        for calls, query in statements
        if not query.strip().lower().startswith(TRANSACTION_CONTROL)
    )
    return total / tasks, data / tasks


def run(srv: Servers, scale: Scale) -> tuple[Result, dict[str, float]]:
    """The bridge result, and the idle worker main process's memory (empty if none ran)."""
    result = Result(
        "bridge",
        f"tracked/plain throughput >= {GOAL_RATIO}; SQL statements per tracked task "
        f"<= {GOAL_STATEMENTS}",
    )
    why = bridge_unavailable()
    if why:
        return result.unavailable(why), {}
    work = WORK / "bridge"
    work.mkdir(parents=True, exist_ok=True)
    policy = write_policy(work / "policy.toml", extra_types=OPERATION_POLICY)
    url = build_database(srv, DATABASE, total=0, kind=IDLE_KIND)
    env = service_env(srv, url, policy, work)
    counter = redis.Redis.from_url(env["BENCH_REDIS_URL"])
    observer = Observer(srv)
    memory: dict[str, float] = {}
    samples: dict[str, list[float]] = {"plain": [], "tracked": []}
    statements_per_task: list[tuple[float, float]] = []
    last_statements: list[tuple[int, str]] = []
    try:
        with configured_producer(env), celery_worker(env, work / "worker.log") as worker:
            # Warm-up, unpaused: proves the worker is consuming and warms both children.
            for side in ("plain", "tracked"):
                run_batch(
                    side,
                    20,
                    f"warm:{side}",
                    worker=worker,
                    counter=counter,
                    observer=observer,
                    paused=False,
                )
            time.sleep(2)
            memory = proc_status_mb(worker.pid)
            log(
                f"  idle worker main process: RSS {memory.get('VmRSS', 0):.1f} MB, "
                f"peak {memory.get('VmHWM', 0):.1f} MB"
            )
            for repetition in range(scale.bridge_repetitions):
                order = ("plain", "tracked") if repetition % 2 == 0 else ("tracked", "plain")
                for side in order:
                    batch = run_batch(
                        side,
                        scale.bridge_tasks,
                        f"bench:{side}:{repetition}",
                        worker=worker,
                        counter=counter,
                        observer=observer,
                    )
                    samples[side].append(batch.seconds)
                    line = (
                        f"  rep {repetition + 1} {side:7s} {batch.seconds:6.3f} s "
                        f"{scale.bridge_tasks / batch.seconds:7.1f} tasks/s"
                    )
                    if side == "tracked":
                        per_task = _per_task(batch.statements, scale.bridge_tasks)
                        statements_per_task.append(per_task)
                        last_statements = batch.statements
                        line += (
                            f"  {per_task[1]:.2f} SQL statements/task "
                            f"({per_task[0]:.2f} with BEGIN/COMMIT)"
                        )
                    log(line)
    except RuntimeError as exc:
        return result.unavailable(f"the worker did not run the tasks: {exc}"), memory
    finally:
        observer.close()
        srv.drop_database(DATABASE)

    plain_s, tracked_s = median(samples["plain"]), median(samples["tracked"])
    ratio = plain_s / tracked_s  # throughput ratio tracked/plain
    statements = median([data for _total, data in statements_per_task])
    with_tx = median([total for total, _data in statements_per_task])
    result.figures.update(
        {
            "tasks_per_batch": scale.bridge_tasks,
            "repetitions": scale.bridge_repetitions,
            "plain_seconds": samples["plain"],
            "tracked_seconds": samples["tracked"],
            "plain_tasks_per_second": round(scale.bridge_tasks / plain_s, 1),
            "tracked_tasks_per_second": round(scale.bridge_tasks / tracked_s, 1),
            "throughput_ratio": round(ratio, 3),
            "statements_per_tracked_task": round(statements, 2),
            "statements_per_tracked_task_with_transaction_control": round(with_tx, 2),
            "statement_breakdown": [
                {"per_task": round(calls / scale.bridge_tasks, 3), "query": " ".join(q.split())}
                for calls, q in last_statements
            ],
        }
    )
    result.goal_met = ratio >= GOAL_RATIO and statements <= GOAL_STATEMENTS
    return result, memory


def summary(result: Result) -> list[str]:
    f = result.figures
    lines = [
        f"plain:   median {median(f['plain_seconds']):.3f} s for {f['tasks_per_batch']} tasks "
        f"({f['plain_tasks_per_second']} tasks/s)",
        f"tracked: median {median(f['tracked_seconds']):.3f} s "
        f"({f['tracked_tasks_per_second']} tasks/s)",
        f"throughput ratio tracked/plain: {f['throughput_ratio']} (goal >= {GOAL_RATIO})",
        f"SQL statements per tracked task: {f['statements_per_tracked_task']} "
        f"(goal <= {GOAL_STATEMENTS}; "
        f"{f['statements_per_tracked_task_with_transaction_control']} counting BEGIN/COMMIT)",
        "statements per tracked task, by query (last repetition):",
    ]
    lines += [f"    {s['per_task']:6.3f}  {s['query'][:150]}" for s in f["statement_breakdown"]]
    return lines
