"""The checker: compares the rows and the audit log with what the bodies' own journal
says happened, and with what the harness did (its faults and tamperings).

It trusts nothing runwarden wrote about itself: a run's outcome and reason are read from
the raw row, and each is held against the journal.

- (a) every run is terminal;
- (b) its outcome is the journal's: a body that returned is recorded as such, a run
  recorded succeeded had a body that returned succeeded at the run's final attempt, and
  a failure's reason is of the family the journal supports (the body raised; the body
  started and was killed -- by the harness, its time limit or a revoke; the body never
  started);
- (c) no two executions of one run overlap, no attempt runs twice, no body starts after
  its run ended, and no body is fenced while alive (a heartbeat refused: its run was
  ended or requeued while it was working);
- (d) exactly one audit row per forced ending, none for a body's own completion;
- (e) the workload's secret appears in no row, audit row, log line or result;
- (f) time to terminal, from the run's last sign of life, within its bound.

A body that returned and was then killed before its completion could be written (its
process SIGKILLed between its last journal line and the commit, or while a database
fault kept the completion retrying) is *indeterminate*: the outcome lived only in the
killed process's memory, the recorded ``run.worker_lost`` is accepted, and the run is
counted apart.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chaos.operations import TIME_LIMIT_SECONDS

SUCCESS = ("succeeded", "partially_succeeded")
FORCED_ACTIONS = (
    "operation_run.force_failed",
    "operation_run.blocked",
    "operation_run.cancelled",
)
RECORD_KEYS = ("reconciliation", "bridge", "legitimacy", "dispatch")
#: Most severe first: a run's fault class is the first that touched it.
FAULT_ORDER = (
    "worker_kill",
    "worker_crash",
    "child_kill",
    "pg_outage",
    "pg_restart",
    "redis_restart",
    "cli_reconcile",
)
#: Faults that kill processes: a run is touched only if one of its bodies was among them.
#: A crash is a worker that exited by itself (its supervisor, the harness, restarts it).
KILLS = frozenset({"child_kill", "worker_kill", "worker_crash"})
#: What the machine's load may add to any bound (two cores, everything on them).
SLACK_SECONDS = 10.0
#: A kill this soon after a body's last line may have beaten its completion's commit.
INDETERMINATE_SECONDS = 2.0


@dataclass(frozen=True)
class Bounds:
    interval: float
    lost_after: float
    queued: dict[str, float]
    running: dict[str, float]


@dataclass
class Execution:
    run: int
    attempt: int
    task_id: str
    pid: int
    start: float
    end: dict[str, Any] | None = None
    #: when the harness killed its process (None: not killed)
    killed_at: float | None = None

    @property
    def returned(self) -> str | None:
        if self.end is None or self.end.get("fenced"):
            return None
        value = self.end.get("returned")
        return str(value) if value else None


@dataclass
class Violation:
    run: int | None
    rule: str
    message: str
    journal: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run, "rule": self.rule, "message": self.message}


@dataclass
class Verdict:
    run: int
    fate: str
    type: str
    fault_class: str
    outcome: str
    reason: str | None
    seconds_to_terminal: float | None
    bound: float | None
    indeterminate: bool = False


@dataclass
class Report:
    verdicts: list[Verdict]
    violations: list[Violation]
    counts: dict[str, Any]

    @property
    def ok(self) -> bool:
        return not self.violations

    def by(self, key: str) -> dict[str, dict[str, Any]]:
        groups: dict[str, list[Verdict]] = defaultdict(list)
        for verdict in self.verdicts:
            groups[getattr(verdict, key)].append(verdict)
        bad: dict[str, set[int]] = defaultdict(set)
        index = {v.run: v for v in self.verdicts}
        for violation in self.violations:
            if violation.run in index:
                bad[getattr(index[violation.run], key)].add(violation.run)
        table = {}
        for name, verdicts in sorted(groups.items()):
            seconds = [v.seconds_to_terminal for v in verdicts if v.seconds_to_terminal is not None]
            table[name] = {
                "runs": len(verdicts),
                "violations": len(bad[name]),
                "indeterminate": sum(1 for v in verdicts if v.indeterminate),
                "p50_seconds": _percentile(seconds, 50),
                "p99_seconds": _percentile(seconds, 99),
                "max_seconds": max(seconds) if seconds else None,
                "max_bound_seconds": max((v.bound or 0) for v in verdicts),
                "outcomes": dict(sorted(_count(_label(v) for v in verdicts).items())),
            }
        return table


def _label(verdict: Verdict) -> str:
    return f"{verdict.outcome}:{verdict.reason}" if verdict.reason else verdict.outcome


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for value in values:
        counts[value] += 1
    return dict(counts)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return round(ordered[rank - 1], 2)


def _ts(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value)).timestamp()


def reason_of(run: dict[str, Any]) -> str | None:
    context = run.get("context") or {}
    for key in RECORD_KEYS:
        record = context.get(key)
        if isinstance(record, dict) and record.get("reason_code"):
            return str(record["reason_code"])
    return None


def executions_of(journal: list[dict[str, Any]]) -> dict[int, list[Execution]]:
    found: dict[int, list[Execution]] = defaultdict(list)
    open_: dict[tuple[int, int, str, int], Execution] = {}
    for line in sorted(journal, key=lambda item: item["t"]):
        key = (line["run"], line["attempt"], line["task_id"], line["pid"])
        if line["event"] == "start":
            execution = Execution(
                line["run"], line["attempt"], line["task_id"], line["pid"], line["t"]
            )
            found[line["run"]].append(execution)
            open_[key] = execution
        elif line["event"] == "end" and key in open_:
            open_.pop(key).end = line
    return found


@dataclass
class Checker:
    runs: list[dict[str, Any]]
    audit: list[dict[str, Any]]
    journal: list[dict[str, Any]]
    events: list[dict[str, Any]]
    dispatched: dict[int, dict[str, Any]]
    bounds: Bounds
    secret: str
    texts: dict[str, str]
    violations: list[Violation] = field(default_factory=list)

    def check(self) -> Report:
        executions = executions_of(self.journal)
        kills = self._kills()
        for items in executions.values():
            for execution in items:
                later = [t for pid, t in kills if pid == execution.pid and t >= execution.start]
                execution.killed_at = min(later) if later else None
        audit_by_run: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for row in self.audit:
            audit_by_run[int(row["resource_id"])].append(row)
        verdicts = []
        journal_by_run: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for line in self.journal:
            journal_by_run[line["run"]].append(line)
        for run in self.runs:
            verdict = self._run(
                run, executions.get(run["id"], []), audit_by_run.get(run["id"], []), journal_by_run
            )
            verdicts.append(verdict)
        known = {run["id"] for run in self.runs}
        for run_id in sorted(set(executions) - known):
            self._violate(
                run_id, "b", "the journal names a run the database does not have", journal_by_run
            )
        self._secrets()
        counts = {
            "runs": len(self.runs),
            "executions": sum(len(v) for v in executions.values()),
            "audit_rows": len(self.audit),
            "faults": _count(e["fault"] for e in self.events if e["kind"] == "fault"),
            "indeterminate": sum(1 for v in verdicts if v.indeterminate),
        }
        return Report(verdicts, self.violations, counts)

    # -- one run ---------------------------------------------------------------------------

    def _run(
        self,
        run: dict[str, Any],
        executions: list[Execution],
        audit: list[dict[str, Any]],
        journal_by_run: dict[int, list[dict[str, Any]]],
    ) -> Verdict:
        run_id = run["id"]
        meta = self.dispatched.get(run_id, {})
        fate = meta.get("fate", "?")
        outcome = str(run["outcome"])
        reason = reason_of(run)
        completed = _ts(run["completed_at"])
        created = _ts(run["created_at"]) or 0.0

        def violate(rule: str, message: str) -> None:
            self._violate(run_id, rule, message, journal_by_run)

        # (a)
        if run["status"] != "completed":
            violate("a", f"not terminal: {run['status']}")
        # The execution the run's row names: its attempt and its task id.
        final = [
            e
            for e in executions
            if e.attempt == run["attempts"] and e.task_id == run["celery_task_id"]
        ]
        last = final[-1] if final else None
        indeterminate = False
        # (b)
        if outcome in SUCCESS:
            if last is None or last.returned != outcome:
                violate("b", f"recorded {outcome}, but no body of its final attempt returned it")
        elif last is not None and last.returned in SUCCESS:
            if reason == "run.worker_lost" and self._lost_before_written(last):
                indeterminate = True
            else:
                violate("b", f"its body returned {last.returned}, recorded {outcome} ({reason})")
        elif not self._family_ok(run, fate, reason, last):
            violate("b", f"reason {reason} ({outcome}) is not what the journal supports")
        # (c)
        by_attempt: dict[tuple[int, str], int] = defaultdict(int)
        for execution in executions:
            by_attempt[(execution.attempt, execution.task_id)] += 1
            if completed is not None and execution.start > completed:
                violate("c", f"attempt {execution.attempt} started after the run ended")
            if execution.end is not None and execution.end.get("fenced"):
                violate("c", f"attempt {execution.attempt} was fenced while its body was alive")
        for (attempt, _), count in by_attempt.items():
            if count > 1:
                violate("c", f"attempt {attempt} executed {count} times")
        ordered = sorted(executions, key=lambda e: e.start)
        for before, after in itertools.pairwise(ordered):
            if after.start < self._end_of(before, completed):
                violate("c", f"attempts {before.attempt} and {after.attempt} overlap")
        # (d)
        forced = [row for row in audit if row["action"] in FORCED_ACTIONS]
        expected = 0 if outcome in SUCCESS else 1
        if len(forced) != expected:
            violate("d", f"{len(forced)} forced-transition audit rows, expected {expected}")
        requeued = [row for row in audit if row["action"] == "operation_run.requeued"]
        if requeued and run["type"] != "chaos.recover":
            violate("d", "requeued, but its type does not recover")
        # (f)
        sign = self._last_sign(run, created, executions, completed)
        seconds = None if completed is None else max(0.0, completed - sign)
        bound = self._bound(run["type"], reason, outcome)
        if seconds is not None and seconds > bound:
            violate(
                "f", f"terminal {seconds:.1f} s after its last sign of life (bound {bound:.0f} s)"
            )
        return Verdict(
            run=run_id,
            fate=fate,
            type=run["type"],
            fault_class=self._fault_class(created, completed, executions),
            outcome=outcome,
            reason=reason,
            seconds_to_terminal=None if seconds is None else round(seconds, 3),
            bound=bound,
            indeterminate=indeterminate,
        )

    def _family_ok(
        self, run: dict[str, Any], fate: str, reason: str | None, last: Execution | None
    ) -> bool:
        if last is None:
            # Never started (this attempt): its message was lost, refused or never sent.
            unstarted = {"run.stale_queued", "run.dispatch_failed"}
            unstarted |= {
                "expired": {"run.expired"},
                "unknown_task": {"run.task_unknown"},
                "tenant_deactivated": {"execution.tenant_inactive"},
                "revoke_queued": {"run.cancelled"},
                "revoke_running": {"run.cancelled"},
            }.get(fate, set())
            return reason in unstarted
        if last.end is not None:
            raised = last.end.get("raised")
            if raised == "Retry":
                # It asked for a retry: the retry could not be published (its failure),
                # or its message died with its worker and its window passed.
                return reason in {"run.job_failed", "run.stale_running"}
            # The body ended by raising: its failure.
            return reason == "run.job_failed" and raised is not None
        # Started and never ended: what ended it must have happened.
        possible: set[str] = set()
        if last.killed_at is not None:
            possible |= {"run.worker_lost", "run.stale_running"}
        if run["type"] == "chaos.time_limit":
            possible |= {"run.time_limit_exceeded"}
        if self._revoked_running(run["id"]):
            possible |= {"run.cancelled"}
        return reason in possible

    def _lost_before_written(self, execution: Execution) -> bool:
        """Killed after its body returned, before its completion could be written: within
        moments of the end, or while a database fault kept the completion retrying --
        the outcome lived only in the killed process's memory."""
        if execution.killed_at is None or execution.end is None:
            return False
        ended, killed = float(execution.end["t"]), execution.killed_at
        if killed - ended < INDETERMINATE_SECONDS:
            return True
        return any(
            float(e.get("started", e["t"])) <= killed and float(e["t"]) >= ended
            for e in self.events
            if e["kind"] == "fault" and e["fault"] in {"pg_outage", "pg_restart"}
        )

    def _revoked_running(self, run_id: int) -> bool:
        return any(
            e["kind"] == "tamper" and e.get("run") == run_id and e["action"] == "revoked_terminate"
            for e in self.events
        )

    def _end_of(self, execution: Execution, completed: float | None) -> float:
        if execution.end is not None:
            return float(execution.end["t"])
        if execution.killed_at is not None:
            return execution.killed_at
        # Killed by its time limit or a revoke, or still running: it lasted until the run
        # ended at least (a later attempt starting before then overlaps it).
        return completed if completed is not None else float("inf")

    def _kills(self) -> list[tuple[int, float]]:
        return [
            (pid, e["t"])
            for e in self.events
            if e["kind"] == "fault" and e["fault"] in KILLS
            for pid in e.get("pids", [])
        ]

    def _database_faults(self) -> list[tuple[float, float]]:
        return [
            (float(e.get("started", e["t"])), float(e["t"]))
            for e in self.events
            if e["kind"] == "fault" and e["fault"] in {"pg_outage", "pg_restart", "redis_restart"}
        ]

    def _last_sign(
        self,
        run: dict[str, Any],
        created: float,
        executions: list[Execution],
        completed: float | None,
    ) -> float:
        """The last moment the run did something, or something was done to it."""
        signs = [created]
        for execution in executions:
            signs.append(execution.start)
            if execution.end is not None:
                signs.append(float(execution.end["t"]))
            if execution.killed_at is not None:
                signs.append(execution.killed_at)
            if execution.end is None and run["type"] == "chaos.time_limit":
                signs.append(execution.start + TIME_LIMIT_SECONDS)
        for event in self.events:
            if event["kind"] == "tamper" and event.get("run") == run["id"]:
                signs.append(float(event["t"]))
            restarted = event["kind"] == "restarted" and completed is not None
            if restarted and created <= float(event["t"]) <= (completed or 0):
                signs.append(float(event["t"]))
        for started, ended in self._database_faults():
            if completed is not None and started <= completed and ended >= created:
                # Nothing could be written while a server was down.
                signs.append(min(ended, completed))
        return max(signs)

    def _bound(self, type_: str, reason: str | None, outcome: str) -> float:
        b = self.bounds
        if reason == "run.worker_lost":
            window = b.lost_after + 2 * b.interval
        elif reason == "run.stale_running":
            window = b.running.get(type_, 0) + 2 * b.interval
        elif reason in {"run.stale_queued", "run.expired", "run.task_unknown", "run.cancelled"}:
            # Decided when the message is read, or by the queued window: never later.
            window = b.queued.get(type_, 0) + 2 * b.interval
        elif reason is not None and reason.startswith("execution."):
            window = b.queued.get(type_, 0) + 2 * b.interval
        else:
            window = 0.0
        if type_ == "chaos.recover":
            # A requeued try waits in the queue again before it starts.
            window += b.queued.get(type_, 0)
        return window + SLACK_SECONDS

    def _fault_class(
        self, created: float, completed: float | None, executions: list[Execution]
    ) -> str:
        """The most severe fault that happened while the run was alive (a kill only if
        it hit one of the run's bodies)."""
        end = completed if completed is not None else float("inf")
        pids = {e.pid for e in executions}
        touched = set()
        for event in self.events:
            if event["kind"] != "fault":
                continue
            began, ended = float(event.get("started", event["t"])), float(event["t"])
            if began > end or ended < created:
                continue
            fault = event["fault"]
            if fault in KILLS and not pids & set(event.get("pids", [])):
                continue
            touched.add(fault)
        return next((fault for fault in FAULT_ORDER if fault in touched), "none")

    # -- secrets ---------------------------------------------------------------------------

    def _secrets(self) -> None:
        for run in self.runs:
            if self.secret in json.dumps(run, default=str):
                self._violate(run["id"], "e", "the secret is in its row", {})
        for row in self.audit:
            if self.secret in json.dumps(row, default=str):
                self._violate(int(row["resource_id"]), "e", "the secret is in its audit row", {})
        for name, text in self.texts.items():
            for number, line in enumerate(text.splitlines(), 1):
                if self.secret in line:
                    self._violate(
                        None, "e", f"the secret is in {name} line {number}: {line[:200]}", {}
                    )

    def _violate(
        self,
        run_id: int | None,
        rule: str,
        message: str,
        journal_by_run: dict[int, list[dict[str, Any]]],
    ) -> None:
        lines = journal_by_run.get(run_id, []) if run_id is not None else []
        self.violations.append(
            Violation(run_id, rule, message, sorted(lines, key=lambda line: line["t"]))
        )
