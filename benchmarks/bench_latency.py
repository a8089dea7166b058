"""4. Detection latency: with ``interval_seconds = 5``, the time from the moment a run passes
its threshold to its terminal write, over many runs whose thresholds pass at staggered
moments; the service is ``runwarden up`` (worker + embedded beat) on the suite's Redis and
PostgreSQL. Also 5c: the memory of the service's idle worker main process.

The runs are inserted running, with ``started_at`` set so each one crosses its
``running_stale_after_seconds`` at a chosen moment spread over the measuring window; the
latency of a run is ``completed_at - (started_at + threshold)``, both read from its row.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks.common import (
    BIN,
    REPO,
    WORK,
    Result,
    Scale,
    Servers,
    log,
    median,
    missing_attribute,
    percentile,
    proc_status_mb,
)
from benchmarks.data import IDLE_KIND, build_database, write_policy

DATABASE = "bench_latency"
INTERVAL_SECONDS = 5
THRESHOLD_SECONDS = 30
RUN_TYPE = "bench.latency"
GOAL_P99_SECONDS = INTERVAL_SECONDS + 1.0
POLICY = f"""
[types."{RUN_TYPE}"]
queued_stale_after_seconds = 3600
running_stale_after_seconds = {THRESHOLD_SECONDS}
"""


def service_argv() -> tuple[list[str], str]:
    """The command that runs worker + beat, and what it is called in the report."""
    if missing_attribute("worker.cli", "up") is None:
        return [str(BIN / "runwarden"), "up", "-c", "2", "--loglevel", "WARNING"], "runwarden up"
    argv = [str(BIN / "celery"), "-A", "worker.celery_app", "worker", "-B", "-c", "2"]
    return argv, "celery worker -B"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(entry.name))
    return found


def _worker_main_pid(service_pid: int, via_up: bool) -> int:
    if not via_up:
        return service_pid
    for child in _children(service_pid):
        with contextlib.suppress(OSError):
            if b"celery" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
    return service_pid


@contextlib.contextmanager
def service(argv: list[str], env: dict[str, str], log_path: Path) -> Iterator[int]:
    with log_path.open("wb") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        yield process.pid
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


_INSERT = f"""
INSERT INTO operation_runs (workspace_id, tenant_id, user_id, type, status, outcome,
                            attempts, created_at, updated_at, started_at)
SELECT 1, 1, 1, '{RUN_TYPE}', 'running', 'pending', 1, s.started, s.started, s.started
FROM (SELECT to_timestamp(%(first)s + (i - 1) * %(step)s) - make_interval(secs => %(threshold)s)
             AS started
      FROM generate_series(1, %(runs)s) AS i) AS s
RETURNING id
"""

_LATENCIES = f"""
SELECT extract(epoch FROM completed_at - (started_at + make_interval(secs => {THRESHOLD_SECONDS}))),
       context->'reconciliation'->>'source'
FROM operation_runs WHERE id = ANY(%(ids)s) AND status = 'completed'
"""


def run(srv: Servers, scale: Scale) -> tuple[Result, dict[str, float], str]:
    """The latency result, the idle service worker's memory, and what the service was."""
    result = Result(
        "latency",
        f"p99 from threshold to terminal write <= interval + 1 s = {GOAL_P99_SECONDS:.0f} s",
    )
    why = missing_attribute("worker.tasks", "reconcile_scheduled") or missing_attribute(
        "worker.celery_app", "app"
    )
    if why:
        return result.unavailable(why), {}, ""
    from benchmarks.bench_bridge import service_env

    work = WORK / "latency"
    work.mkdir(parents=True, exist_ok=True)
    policy = write_policy(
        work / "policy.toml", interval_seconds=INTERVAL_SECONDS, extra_types=POLICY
    )
    url = build_database(srv, DATABASE, total=0, kind=IDLE_KIND)
    env = service_env(srv, url, policy, work)
    shutil.rmtree(work / "var", ignore_errors=True)  # no beat schedule from an earlier run
    argv, what = service_argv()
    memory: dict[str, float] = {}
    try:
        with service(argv, env, work / "service.log") as pid, srv.connect(DATABASE) as conn:
            # A canary already stale: once it is failed, beat and worker are both live.
            canary = conn.execute(
                _INSERT,
                {"first": time.time() - 1, "step": 0, "threshold": THRESHOLD_SECONDS, "runs": 1},
            ).fetchall()
            deadline = time.monotonic() + 90
            while not conn.execute(_LATENCIES, {"ids": [canary[0][0]]}).fetchall():
                if time.monotonic() > deadline:
                    tail = (work / "service.log").read_text(errors="replace")[-1500:]
                    return result.unavailable(f"{what} never reconciled: {tail}"), memory, what
                time.sleep(0.2)
            time.sleep(1)
            memory = proc_status_mb(_worker_main_pid(pid, what == "runwarden up"))
            log(
                f"  {what}: idle worker main process RSS {memory.get('VmRSS', 0):.1f} MB, "
                f"peak {memory.get('VmHWM', 0):.1f} MB"
            )
            runs = scale.latency_runs
            spread = scale.latency_spread_seconds
            first = time.time() + 3
            ids = [
                row[0]
                for row in conn.execute(
                    _INSERT,
                    {
                        "first": first,
                        "step": spread / max(runs - 1, 1),
                        "threshold": THRESHOLD_SECONDS,
                        "runs": runs,
                    },
                ).fetchall()
            ]
            log(f"  {runs} runs pass their threshold over {spread:.0f} s; waiting for them")
            deadline = time.monotonic() + 3 + spread + 60
            while True:
                rows = conn.execute(_LATENCIES, {"ids": ids}).fetchall()
                if len(rows) == runs or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
    finally:
        srv.drop_database(DATABASE)

    latencies = [float(row[0]) for row in rows]
    sources = {row[1] for row in rows}
    if len(rows) < runs:
        result.notes.append(f"only {len(rows)} of {runs} runs were reconciled")
    if sources != {"scheduled_reconciler"}:
        result.notes.append(f"reconciled by {sorted(map(str, sources))}")
    if not latencies:
        return result.unavailable("no run was reconciled"), memory, what
    p99 = percentile(latencies, 99)
    result.figures.update(
        {
            "service": what,
            "interval_seconds": INTERVAL_SECONDS,
            "runs": runs,
            "spread_seconds": spread,
            "p50_seconds": round(median(latencies), 3),
            "p99_seconds": round(p99, 3),
            "max_seconds": round(max(latencies), 3),
            "min_seconds": round(min(latencies), 3),
        }
    )
    result.goal_met = p99 <= GOAL_P99_SECONDS and not result.notes
    return result, memory, what


def summary(result: Result) -> list[str]:
    f = result.figures
    return [
        f"{f['runs']} runs crossing their threshold over {f['spread_seconds']:.0f} s, "
        f"{f['service']}, interval {f['interval_seconds']} s",
        f"threshold -> terminal write: p50 {f['p50_seconds']} s, p99 {f['p99_seconds']} s, "
        f"max {f['max_seconds']} s, min {f['min_seconds']} s (goal p99 <= {GOAL_P99_SECONDS} s)",
    ]
