"""``make bench`` = ``python -m benchmarks [--quick] [--only NAME ...]``.

Starts its own PostgreSQL and Redis on loopback, runs every benchmark of issue 5 against a
baseline measured in the same run, prints medians, ratios and goal met/missed, and writes
``benchmarks/results.json`` and ``benchmarks/RESULTS.md``. ``--quick`` (or
``RUNWARDEN_BENCH_QUICK=1``) uses smaller data and fewer repetitions for development and
writes to ``benchmarks/work/`` instead, leaving the committed figures alone.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from benchmarks import (
    bench_bridge,
    bench_console,
    bench_drain,
    bench_idle,
    bench_latency,
    bench_liveness,
)
from benchmarks.common import (
    REPO,
    WORK,
    Result,
    Scale,
    Servers,
    compile_project,
    log,
    machine,
    servers,
    versions,
)

NAMES = ("idle", "drain", "bridge", "latency", "liveness", "console")
GOAL_RSS_MB = 150.0
HERE = REPO / "benchmarks"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get("RUNWARDEN_BENCH_QUICK", "") not in ("", "0"),
        help="smaller data, fewer repetitions; results go to benchmarks/work/",
    )
    parser.add_argument("--only", nargs="+", choices=NAMES, help="run only these benchmarks")
    args = parser.parse_args(argv)
    scale = Scale.for_mode(args.quick)
    selected = args.only or list(NAMES)
    WORK.mkdir(parents=True, exist_ok=True)
    # Every runwarden process below starts as an installed one does: from bytecode.
    compile_project()

    started = time.monotonic()
    results: list[Result] = []
    memory: dict[str, Any] = {}
    with servers() as srv:
        info = {"machine": machine(), "versions": versions(srv)}
        log(_banner(info, scale))
        for name in selected:
            log(f"\n== {name} ==")
            result = _guarded(name, functools.partial(_run_one, name, srv, scale, memory))
            results.append(result)
            _print(result)
    if "drain" in selected or "bridge" in selected or "latency" in selected:
        results.append(_memory(results, memory))
        log("\n== memory ==")
        _print(results[-1])

    elapsed = time.monotonic() - started
    info["machine"]["load_average_at_end"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    log(f"\nsuite finished in {elapsed:.0f} s")
    for result in results:
        log(f"  {result.name:8s} {result.verdict()}")
    document = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": scale.quick,
        "command": _command(args),
        "elapsed_seconds": round(elapsed, 1),
        **info,
        "results": [r.to_dict() for r in results],
    }
    target = WORK if scale.quick else HERE
    (target / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    (target / "RESULTS.md").write_text(_markdown(document, results))
    log(f"wrote {target / 'results.json'} and {target / 'RESULTS.md'}")
    return 0


def _run_one(name: str, srv: Servers, scale: Scale, memory: dict[str, Any]) -> Result:
    if name == "idle":
        return bench_idle.run(srv, scale)
    if name == "drain":
        return bench_drain.run(srv, scale)
    if name == "bridge":
        result, memory["bridge_worker"] = bench_bridge.run(srv, scale)
        return result
    if name == "liveness":
        return bench_liveness.run(srv, scale)
    if name == "console":
        return bench_console.run(srv, scale)
    result, memory["service_worker"], memory["service"] = bench_latency.run(srv, scale)
    return result


def _guarded(name: str, body: Callable[[], Result]) -> Result:
    """A benchmark that crashes is reported as such; the others still run."""
    try:
        return body()
    except Exception as exc:
        traceback.print_exc()
        return Result(name, "-").unavailable(f"crashed: {type(exc).__name__}: {exc}")


SUMMARIES: dict[str, Callable[[Result], list[str]]] = {
    "idle": bench_idle.summary,
    "drain": bench_drain.summary,
    "bridge": bench_bridge.summary,
    "latency": bench_latency.summary,
    "liveness": bench_liveness.summary,
    "console": bench_console.summary,
}


def _lines(result: Result) -> list[str]:
    lines: list[str] = []
    summarise = SUMMARIES.get(result.name)
    if summarise and result.figures:
        try:
            lines = summarise(result)
        except (KeyError, TypeError, ValueError):
            lines = []
    if result.name == "memory":
        lines = [f"{k}: {v}" for k, v in result.figures.items()]
    return [*lines, *result.notes]


def _print(result: Result) -> None:
    for line in _lines(result):
        log(f"  {line}")
    log(f"  goal: {result.goal} -> {result.verdict()}")


def _memory(results: list[Result], memory: dict[str, Any]) -> Result:
    result = Result("memory", f"peak RSS <= {GOAL_RSS_MB:.0f} MB for the drain and an idle worker")
    figures: dict[str, float] = {}
    drain = next((r for r in results if r.name == "drain"), None)
    if drain and "runwarden_peak_rss_mb" in drain.figures:
        f = drain.figures
        # Every variant's: the requeue variant's runwarden loads Celery to publish.
        for side in ("runwarden", "floor"):
            figures[f"drain_{side}_peak_rss_mb"] = max(
                float(value)
                for key, value in f.items()
                if key.endswith(f"{side}_peak_rss_mb") and isinstance(value, (int, float))
            )
    elif drain:
        result.notes.append("not available: the runwarden drain did not run")
    for key, label in (("bridge_worker", "celery worker"), ("service_worker", "service")):
        found = memory.get(key) or {}
        if "VmHWM" in found:
            name = memory.get("service", label) if key == "service_worker" else label
            slug = name.replace(" ", "_")
            figures[f"idle_{slug}_main_rss_mb"] = round(found["VmRSS"], 1)
            figures[f"idle_{slug}_main_peak_rss_mb"] = round(found["VmHWM"], 1)
    result.figures = figures
    peaks = [v for k, v in figures.items() if "peak" in k and "floor" not in k]
    if not peaks:
        return result.unavailable("no runwarden process was measured")
    result.goal_met = max(peaks) <= GOAL_RSS_MB and not result.notes
    return result


def _command(args: argparse.Namespace) -> str:
    parts = [".venv/bin/python", "-m", "benchmarks"]
    if args.quick:
        parts.append("--quick")
    if args.only:
        parts += ["--only", *args.only]
    return shlex.join(parts)


def _banner(info: dict[str, Any], scale: Scale) -> str:
    m, v = info["machine"], info["versions"]
    return (
        f"runwarden benchmarks ({'quick' if scale.quick else 'full'}): {m['nproc']} CPUs "
        f"({m['cpu']}), {m['memory_mb']:,} MB; PostgreSQL {v['postgresql']}, Redis {v['redis']}, "
        f"Python {v['python']}"
    )


def _markdown(document: dict[str, Any], results: list[Result]) -> str:
    m, v = document["machine"], document["versions"]
    out = [
        "# runwarden benchmark results",
        "",
        f"Generated {document['generated_at']} by `{document['command']}` "
        f"({'quick mode, not for the record' if document['quick'] else 'full run'}) "
        f"in {document['elapsed_seconds']:.0f} s. Raw figures: `results.json`.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['nproc']} x {m['cpu']}",
        f"- memory: {m['memory_mb']:,} MB",
        f"- load average (1, 5, 15 min) at start: {m.get('load_average')}; at end: "
        f"{m.get('load_average_at_end')} (the 2 cores were shared with other work)",
        f"- PostgreSQL {v['postgresql']} (started by the suite on loopback: fsync off, "
        "shared_buffers 256MB, pg_stat_statements preloaded)",
        f"- Redis {v['redis']}, Python {v['python']}, psycopg {v['psycopg']}",
        "",
        "## How to run",
        "",
        "```sh",
        "make bench                                   # = .venv/bin/python -m benchmarks",
        ".venv/bin/python -m benchmarks --quick       # small data, for development",
        ".venv/bin/python -m benchmarks --only drain  # one benchmark",
        "# (names: idle drain bridge latency liveness console)",
        "```",
        "",
        "The suite starts its own PostgreSQL (Debian `postgresql`) and Redis (`redis-server`)",
        "and stops them when it ends; nothing else needs to be running.",
        "",
        "## Method",
        "",
        "- **drain**: 50,000 stale running runs among 450,000 (generated with",
        "  `generate_series`, copied per side with `CREATE DATABASE ... TEMPLATE`), in four",
        "  variants: each stale run with its own creation time; all of them sharing one (as",
        "  runs bulk-created in one transaction do); runwarden in a schema with `[tenancy]`;",
        '  and a tenth of the stale runs of a `recovery = "retry"` type on a lost worker, to',
        "  be requeued. Each side is a whole process with stdout to a file, sides alternate,",
        "  5 repetitions; after each side every stale run must have failed (or been requeued",
        "  under a new task id, its Celery message on the Redis broker) once, with one audit",
        "  row and one change in the output carrying the policy's `runwarden policy` sha256,",
        "  and an md5 over every other run must be unchanged. The floor is",
        "  `benchmarks/floor_drain.py` (bare psycopg, one statement per 500-run pass, the",
        "  outbox claim and one Redis LPUSH per requeued run's message).",
        "- **idle**: in-process `OperationLifecycleReconciler.reconcile(engine)` passes that find",
        "  nothing, alternating between 10,000 and 1,000,000 terminal runs (200 fresh",
        "  non-terminal runs and 100 registered workers in both); EXPLAIN (ANALYZE) of the",
        "  captured scan, and auto_explain",
        "  of a prepared execution under `plan_cache_mode = force_generic_plan`.",
        "- **bridge**: one `celery worker -P prefork -c 2`; each batch is queued while the",
        "  worker's main process is SIGSTOPped, timed from SIGCONT to the last body end / last",
        "  terminal write; sides alternate. Statements per task from pg_stat_statements (the",
        "  benchmark's own queries run as another role).",
        "- **latency**: `runwarden up` (worker + embedded beat, interval 5 s); runs inserted",
        "  running whose thresholds pass at staggered moments; latency = `completed_at -",
        "  (started_at + threshold)` from each row.",
        "- **liveness**: a beat worker and, per round, a victim worker (`-c 2`) with two runs",
        "  in flight that never heartbeat; the victim's whole process group is SIGKILLed;",
        "  latency = `completed_at` - the database's `now()` read right after the kill;",
        "  heartbeat writes from pg_stat_statements over 30 idle seconds.",
        "- **console**: in-process requests to the console's ASGI app (FastAPI's test",
        "  client) for `/metrics` and the overview page, alternating between 10,000 and",
        "  1,000,000 terminal runs (200 fresh non-terminal runs in both, one audit row per",
        "  failed terminal run); p50 of each side after a warm-up.",
        "- **memory**: `ru_maxrss` of the drain process (spawned through",
        "  `benchmarks/launcher.py` so the benchmark's own RSS is not inherited) and VmRSS /",
        "  VmHWM of the idle worker main processes.",
        "",
        "## Goals",
        "",
        "| benchmark | goal | result |",
        "|---|---|---|",
    ]
    for result in results:
        out.append(f"| {result.name} | {result.goal} | {result.verdict()} |")
    for result in results:
        out += ["", f"## {result.name}", "", "```", *_lines(result), "```"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
