"""One chaos run: the cluster, the workload and its faults, the settling, the checker."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from chaos.checker import Bounds, Checker, Report
from chaos.cluster import POLICY, Cluster, Events, cluster
from chaos.harness import Harness
from chaos.plan import Plan, make_plan

DEFAULT_RUNS = 1000
QUICK_RUNS = 100
#: How long the harness waits, after the workload and its faults, for every run to end:
#: the longest queued window, a requeued try's second window, and margin.
SETTLE_SECONDS = 240.0
#: Half the two workers' four slots, on average: room for the faults to build a backlog
#: and for the cluster to work it off (at 4 a second a seed's backlog outgrew the 45 s
#: queued window, and a tenth of the runs ended run.stale_queued, truthfully but unrun).
RUNS_PER_SECOND = 3.0


@dataclass
class Outcome:
    plan: Plan
    report: Report
    seconds: dict[str, float]
    workdir: Path | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.plan.seed,
            "runs": len(self.plan.runs),
            "ok": self.report.ok,
            "violations": len(self.report.violations),
            "seconds": self.seconds,
            "counts": self.report.counts,
            "by_fault": self.report.by("fault_class"),
            "by_fate": self.report.by("fate"),
            "violation_list": [v.to_dict() for v in self.report.violations[:200]],
        }

    def table(self) -> str:
        lines = [
            f"{'fault class':<14} {'runs':>5} {'viol.':>5} {'indet.':>6} "
            f"{'p50 s':>7} {'p99 s':>7} {'max s':>7} {'bound s':>7}"
        ]
        for name, row in self.report.by("fault_class").items():
            lines.append(
                f"{name:<14} {row['runs']:>5} {row['violations']:>5} {row['indeterminate']:>6} "
                f"{_fmt(row['p50_seconds'])} {_fmt(row['p99_seconds'])} "
                f"{_fmt(row['max_seconds'])} {_fmt(row['max_bound_seconds'])}"
            )
        lines.append("")
        lines.append(f"{'fate':<20} {'runs':>5} {'viol.':>5}  outcomes")
        for name, row in self.report.by("fate").items():
            outcomes = ", ".join(f"{k} {v}" for k, v in row["outcomes"].items())
            lines.append(f"{name:<20} {row['runs']:>5} {row['violations']:>5}  {outcomes}")
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.report.counts["faults"].items()))
        lines.append("")
        lines.append(f"faults: {faults}")
        return "\n".join(lines)

    def violations_text(self, limit: int = 40) -> str:
        out = []
        for violation in self.report.violations[:limit]:
            out.append(f"VIOLATION ({violation.rule}) run {violation.run}: {violation.message}")
            out.extend(f"    journal: {json.dumps(line)}" for line in violation.journal)
        if len(self.report.violations) > limit:
            out.append(f"... and {len(self.report.violations) - limit} more")
        return "\n".join(out)


def _fmt(value: float | None) -> str:
    return f"{value:>7.2f}" if isinstance(value, int | float) else f"{'-':>7}"


def bounds_of(policy_text: str) -> Bounds:
    policy = tomllib.loads(policy_text)
    types = policy["types"]
    return Bounds(
        interval=float(policy["reconciliation"]["interval_seconds"]),
        lost_after=float(policy["workers"]["lost_after_seconds"]),
        queued={name: float(t["queued_stale_after_seconds"]) for name, t in types.items()},
        running={name: float(t["running_stale_after_seconds"]) for name, t in types.items()},
    )


def run_chaos(*, runs: int, seed: int, keep: bool = False, rate: float | None = None) -> Outcome:
    workdir = Path(tempfile.mkdtemp(prefix="runwarden-chaos-"))
    secret = f"chaos-secret-{seed}-Zq81"
    plan = make_plan(seed, runs, runs_per_second=rate or RUNS_PER_SECOND)
    seconds: dict[str, float] = {}
    _log_to(workdir / "harness.log")
    try:
        started = time.monotonic()
        with cluster(workdir, secret) as running:
            seconds["start"] = round(time.monotonic() - started, 1)
            events = Events(workdir / "events.jsonl")
            harness = Harness(running, plan, events)
            harness.configure()
            harness.supervise()
            mark = time.monotonic()
            harness.run()
            seconds["workload"] = round(time.monotonic() - mark, 1)
            seconds["settle"] = round(harness.settle(SETTLE_SECONDS), 1)
            # Stop everything that writes, then read what it left.
            harness.stop_supervising()
            running.stop()
            report = _check(running, harness, events, secret)
        seconds["total"] = round(time.monotonic() - started, 1)
    finally:
        root = logging.getLogger()
        for handler in root.handlers:
            handler.close()
        root.handlers.clear()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return Outcome(plan, report, seconds, workdir if keep else None)


def _log_to(path: Path) -> None:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers.clear()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _check(running: Cluster, harness: Harness, events: Events, secret: str) -> Report:
    from psycopg.rows import dict_row

    with running.connect() as conn:
        conn.row_factory = dict_row
        runs = conn.execute("SELECT * FROM operation_runs ORDER BY id").fetchall()
        audit = conn.execute(
            "SELECT * FROM audit_logs WHERE resource_type = 'operation_run' ORDER BY id"
        ).fetchall()
    journal = []
    if running.journal.exists():
        journal = [json.loads(line) for line in running.journal.read_text().splitlines() if line]
    dispatched = {
        item.run_id: {"fate": item.planned.fate, "dispatch": item.dispatch}
        for item in harness.dispatched
        if item.run_id is not None
    }
    texts = {path.name: path.read_text(errors="replace") for path in running.logs()}
    texts["result backend"] = _backend_text(running)
    checker = Checker(
        runs=runs,
        audit=audit,
        journal=journal,
        events=events.items,
        dispatched=dispatched,
        bounds=bounds_of(POLICY),
        secret=secret,
        texts=texts,
    )
    return checker.check()


def _backend_text(running: Cluster) -> str:
    """Every value the result backend holds, as text."""
    values = []
    with contextlib.suppress(Exception):
        client = redis.Redis.from_url(f"{running.redis.url}/1")
        for key in client.scan_iter():
            with contextlib.suppress(Exception):
                values.append(repr(client.dump(key)))
    return "\n".join(values)
