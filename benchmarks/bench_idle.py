"""2. Idle pass: one reconciliation pass that finds nothing stale, over 10,000 vs 1,000,000
terminal runs (and the same 200 fresh non-terminal runs in both).

Timed in-process through the reconciler API with an engine, alternating the two databases,
many passes each; psycopg prepares a statement after five executions, so most timed passes
run PostgreSQL's generic plan -- the one that misses the partial index when the status list
is bound. The scan's plan is shown twice: EXPLAIN (ANALYZE, BUFFERS) of the statement as
runwarden sent it, and the plan auto_explain logged for a prepared execution.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from benchmarks.common import WORK, Result, Scale, Servers, median, missing_attribute
from benchmarks.data import IDLE_KIND, build_database, write_policy

SMALL = "bench_idle_small"
LARGE = "bench_idle_large"
GOAL_RATIO = 1.2
INDEX = "ix_operation_runs_active_scan"


def _is_scan(statement: str) -> bool:
    # The scan is a SELECT, or the first part of a pass written as one statement.
    flat = " ".join(statement.split()).lower()
    return "from operation_runs" in flat and "limit" in flat


def _auto_explain_plan(log_path: Path, since: int) -> str | None:
    """The last scan plan auto_explain wrote to the server log after offset ``since``."""
    text = log_path.read_text(errors="replace")[since:]
    entries = re.split(r"\n(?=\S)", text)  # continuation lines start with a tab
    found = [e for e in entries if "plan:" in e and "FROM operation_runs" in e]
    return found[-1].strip() if found else None


def run(srv: Servers, scale: Scale) -> Result:
    result = Result(
        "idle",
        f"idle pass time over {scale.idle_large:,} / {scale.idle_small:,} "
        f"terminal runs <= {GOAL_RATIO}",
    )
    why = missing_attribute("worker.lifecycle.reconciler", "OperationLifecycleReconciler")
    if why:
        return result.unavailable(why)

    from sqlalchemy import Engine, event

    from worker.db import build_engine
    from worker.lifecycle.policy import load_policy
    from worker.lifecycle.reconciler import OperationLifecycleReconciler

    policy = load_policy(write_policy(WORK / "idle" / "policy.toml"))
    reconciler = OperationLifecycleReconciler(policy)
    urls = {
        "small": build_database(srv, SMALL, total=scale.idle_small, kind=IDLE_KIND),
        "large": build_database(srv, LARGE, total=scale.idle_large, kind=IDLE_KIND),
    }
    engines: dict[str, Engine] = {side: build_engine(url) for side, url in urls.items()}
    captured: dict[str, Any] = {}

    @event.listens_for(engines["large"], "before_cursor_execute")
    def _capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if _is_scan(statement) and "statement" not in captured:
            captured["statement"], captured["parameters"] = statement, parameters

    options = {"limit": 500}
    try:
        for engine in engines.values():  # warm up: connection, compiled cache, prepared plan
            for _ in range(10):
                reconciler.reconcile(engine, options)
        samples: dict[str, list[float]] = {"small": [], "large": []}
        for index in range(scale.idle_passes):
            order = ("small", "large") if index % 2 == 0 else ("large", "small")
            for side in order:
                started = time.perf_counter()
                outcome = reconciler.reconcile(engines[side], options)
                samples[side].append(time.perf_counter() - started)
                if outcome.candidates:
                    result.notes.append(f"{side}: a pass found {outcome.candidates} candidates")
        small_ms, large_ms = (median(samples[s]) * 1000 for s in ("small", "large"))
        ratio = large_ms / small_ms
        explain = _explain(engines["large"], captured)
        generic = _generic_plan(srv, urls["large"], reconciler, options)
    finally:
        for engine in engines.values():
            engine.dispose()
        srv.drop_database(SMALL)
        srv.drop_database(LARGE)

    result.figures.update(
        {
            "passes_per_side": scale.idle_passes,
            "small_runs": scale.idle_small,
            "large_runs": scale.idle_large,
            "small_median_ms": round(small_ms, 3),
            "large_median_ms": round(large_ms, 3),
            "ratio": round(ratio, 3),
            "scan_uses_partial_index": INDEX in explain and (generic is None or INDEX in generic),
            "explain_analyze": explain,
            "generic_plan": generic,
        }
    )
    result.goal_met = ratio <= GOAL_RATIO and not result.notes
    return result


def _explain(engine: Any, captured: dict[str, Any]) -> str:
    if "statement" not in captured:
        return "the scan statement was not captured"
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "EXPLAIN (ANALYZE, BUFFERS) " + captured["statement"], captured["parameters"]
        ).fetchall()
        conn.rollback()
    return "\n".join(str(row[0]) for row in rows)


def _generic_plan(srv: Servers, url: str, reconciler: Any, options: dict[str, Any]) -> str | None:
    """The generic plan of a prepared execution (psycopg prepares from the sixth), as
    auto_explain logs it, with ``plan_cache_mode = force_generic_plan``."""
    from sqlalchemy import event

    from worker.db import build_engine

    engine = build_engine(url)

    @event.listens_for(engine, "connect")
    def _auto_explain(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("LOAD 'auto_explain'")
            cursor.execute("SET auto_explain.log_min_duration = 0")
            cursor.execute("SET auto_explain.log_analyze = on")
            cursor.execute("SET auto_explain.log_buffers = on")
            # Show the plan a prepared statement may settle on: the generic one.
            cursor.execute("SET plan_cache_mode = force_generic_plan")
        dbapi_connection.commit()

    log_path = srv.server_log()
    since = log_path.stat().st_size
    try:
        for _ in range(8):
            reconciler.reconcile(engine, options)
    finally:
        engine.dispose()
    time.sleep(0.2)  # let the server flush its log
    return _auto_explain_plan(log_path, since)


def summary(result: Result) -> list[str]:
    f = result.figures
    lines = [
        f"{f['small_runs']:,} terminal runs: median pass {f['small_median_ms']} ms",
        f"{f['large_runs']:,} terminal runs: median pass {f['large_median_ms']} ms",
        f"ratio large/small: {f['ratio']} (goal <= {GOAL_RATIO}); "
        f"scan uses {INDEX}: {f['scan_uses_partial_index']}",
        "EXPLAIN (ANALYZE, BUFFERS) of runwarden's scan (the whole pass statement if it is "
        "one) on the large database:",
        *("    " + line for line in str(f["explain_analyze"]).splitlines()),
        "auto_explain of a prepared execution under plan_cache_mode = force_generic_plan:",
        *("    " + line for line in _plan_only(str(f["generic_plan"]))),
    ]
    return lines


def _plan_only(entry: str) -> list[str]:
    """The plan of an auto_explain log entry, without the log prefix and query text."""
    lines = entry.splitlines()
    start = next((i for i, line in enumerate(lines) if "(cost=" in line), 0)
    return [line.removeprefix("\t") for line in lines[start:]]
