"""chaos/results.json (every recorded run, by seed and size) and chaos/RESULTS.md from it."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chaos.run import Outcome

#: Recorded runs kept per size (the newest first).
KEEP_PER_SIZE = 5


def write_results(outcome: Outcome, directory: Path) -> None:
    path = directory / "results.json"
    recorded: list[dict[str, Any]] = []
    if path.exists():
        recorded = json.loads(path.read_text()).get("runs", [])
    entry = {
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version()},
        **outcome.to_dict(),
    }
    same = [r for r in recorded if (r["seed"], r["runs"]) != (entry["seed"], entry["runs"])]
    kept: list[dict[str, Any]] = []
    for item in [entry, *same]:
        if sum(1 for k in kept if k["runs"] == item["runs"]) < KEEP_PER_SIZE:
            kept.append(item)
    path.write_text(json.dumps({"runs": kept}, indent=2) + "\n")
    (directory / "RESULTS.md").write_text(render(kept))


def render(recorded: list[dict[str, Any]]) -> str:
    lines = [
        "# Chaos results",
        "",
        "Written by `make chaos` (`python -m chaos [--runs N | --quick] [--seed S]`) from",
        "`chaos/results.json`: each recorded run, newest first. Time to terminal is from the",
        "run's last sign of life (its dispatch, its body's last journal line, the kill or the",
        "server restart that hit it) to its terminal row; the bound is its path's window",
        "(`lost_after_seconds`, the type's queued or running window) plus two reconcile",
        "intervals and 10 s of slack for the shared machine. See chaos/checker.py for the",
        "rules.",
        "",
    ]
    for entry in recorded:
        verdict = "no violations" if entry["ok"] else f"{entry['violations']} VIOLATIONS"
        lines += [
            f"## {entry['runs']} runs, seed {entry['seed']}: {verdict}",
            "",
            f"Recorded {entry['recorded_at']} on {entry['machine']['nproc']} cores; "
            f"workload {entry['seconds'].get('workload')} s, settled in "
            f"{entry['seconds'].get('settle')} s, {entry['counts']['executions']} body "
            f"executions, {entry['counts']['audit_rows']} audit rows, "
            f"{entry['counts']['indeterminate']} indeterminate.",
            "",
            "Faults: "
            + ", ".join(f"{k} x{v}" for k, v in sorted(entry["counts"]["faults"].items())),
            "",
            "| fault class | runs | violations | p50 s | p99 s | max s | bound s |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, row in entry["by_fault"].items():
            lines.append(
                f"| {name} | {row['runs']} | {row['violations']} | {_n(row['p50_seconds'])} "
                f"| {_n(row['p99_seconds'])} | {_n(row['max_seconds'])} "
                f"| {_n(row['max_bound_seconds'])} |"
            )
        lines += ["", "| fate | runs | violations | outcomes |", "|---|---|---|---|"]
        for name, row in entry["by_fate"].items():
            outcomes = ", ".join(f"{k} {v}" for k, v in row["outcomes"].items())
            lines.append(f"| {name} | {row['runs']} | {row['violations']} | {outcomes} |")
        if entry["violation_list"]:
            lines += ["", "Violations (first 200):", ""]
            lines += [
                f"- ({v['rule']}) run {v['run']}: {v['message']}" for v in entry["violation_list"]
            ]
        lines.append("")
    return "\n".join(lines)


def _n(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)
