"""The ``runwarden`` command: thin click shells over worker/lifecycle and the service."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click
from sqlalchemy.exc import DBAPIError

from models.types import MAX_ID
from worker.errors import RunwardenError
from worker.settings import get_settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from worker.lifecycle.policy import LifecyclePolicy
    from worker.lifecycle.reconciler import OperationLifecycleReconciler, ReconcileOptions


#: An id the id columns hold: a larger one is refused at the option, not passed on to
#: overflow in the driver (a traceback, or exit 1 on PostgreSQL).
ID = click.IntRange(1, MAX_ID)
#: ``runs`` lists at most this many runs: the listing is built in memory.
MAX_RUNS_LIMIT = 10_000


class Utf8Text(click.types.StringParamType):
    """Text that can be encoded as UTF-8.

    Python hands argv bytes that are not UTF-8 to click surrogate-escaped ("\\udcff");
    such a string cannot be bound to a statement or written to a JSON column.
    """

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = super().convert(value, param, ctx)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            self.fail(f"{text!a} is not valid UTF-8", param, ctx)
        return text


class RunwardenGroup(click.Group):
    """Turns runwarden's errors into one line on stderr and an exit code (no traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            # A command's bad option or argument: one line like every other bad input,
            # not click's usage block (the command's --help has that).
            if ctx.find_root().params.get("debug"):
                raise
            command = exc.ctx.command_path if exc.ctx else ctx.command_path
            click.echo(
                f"runwarden: error: {exc.format_message()} (see '{command} --help')", err=True
            )
            sys.exit(exc.exit_code)
        except RunwardenError as exc:
            if ctx.find_root().params.get("debug"):
                raise
            click.echo(f"runwarden: error: {exc.message}", err=True)
            sys.exit(exc.exit_code)
        except DBAPIError as exc:
            if ctx.find_root().params.get("debug"):
                raise
            from worker.db import unavailable

            click.echo(f"runwarden: error: {unavailable(exc).message}", err=True)
            sys.exit(1)


@click.group(cls=RunwardenGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def main(debug: bool) -> None:
    """runwarden keeps operation runs truthful: every run ends in a terminal state
    with an evidenced reason."""


@main.command()
def migrate() -> None:
    """Apply the database migrations (alembic upgrade head)."""
    from worker.db import describe_url
    from worker.migrate import upgrade

    url = get_settings().resolved_database_url
    upgrade(url)
    click.echo(f"database {describe_url(url)} is at the latest schema")


# -- lifecycle commands: click in, lifecycle call, text or JSON out -----------------------


def _database(*, create: bool, policy: LifecyclePolicy) -> Engine:
    """The configured database, checked to have runwarden's tables and the gate views of
    ``policy``'s tenancy. ``create=False`` for the commands that only read: a missing
    SQLite file is an error, not made on the way."""
    from worker.db import check_gate, check_migrated, get_engine

    url = get_settings().resolved_database_url
    engine = get_engine(url, create=create)
    check_migrated(engine, url)
    check_gate(engine, url, policy)
    return engine


def _reconciler(*, publishing: bool = False) -> OperationLifecycleReconciler:
    from worker.lifecycle.policy import load_policy
    from worker.lifecycle.reconciler import OperationLifecycleReconciler

    # The policy is loaded before the database is touched: a bad file is exit 2, nothing read.
    policy = load_policy()
    if not publishing:
        return OperationLifecycleReconciler(policy)
    from worker.publishing import command_publisher

    # A requeued run's message goes out through the configured broker (Celery is imported
    # on the first publication only: a pass that requeues nothing never loads it).
    return OperationLifecycleReconciler(policy, publisher=command_publisher(policy))


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def _stream_drain_json(
    reconciler: OperationLifecycleReconciler, engine: Engine, options: ReconcileOptions
) -> None:
    """``reconcile --drain --json``: one JSON object, written pass by pass -- the changes
    first, the sums and ``passes`` after them -- so a backlog of any size drains in
    constant memory. Each pass is committed before its changes are written."""
    out = sys.stdout
    candidates = reconciled = skipped = passes = 0
    out.write('{"changes": [')
    for result in reconciler.iter_passes(engine, options):
        passes += 1
        candidates += result.candidates
        skipped += result.skipped
        items = result.changes_json_items()
        if items:
            out.write(("," if reconciled else "") + items)
        reconciled += result.reconciled
    out.write(
        f'], "candidates": {candidates}, "reconciled": {reconciled}, '
        f'"skipped": {skipped}, "passes": {passes}}}\n'
    )
    out.flush()


class _DrainProgress:
    """``reconcile --drain`` on a terminal: one line on stderr, rewritten after each pass."""

    def __init__(self) -> None:
        import time

        self._clock = time.monotonic
        self._started = self._clock()
        self._shown = False

    def __call__(self, passes: int, reconciled: int) -> None:
        elapsed = max(self._clock() - self._started, 1e-6)
        rate = reconciled / elapsed
        line = f"draining: {passes} passes, {reconciled} runs failed, {rate:.0f} runs/s"
        click.echo(f"\r{line}\x1b[K", err=True, nl=False)
        self._shown = True

    def done(self) -> None:
        if self._shown:
            click.echo("", err=True)


def _table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for line in (headers, *rows):
        click.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())


@main.command()
@click.option(
    "--type", "types", multiple=True, type=Utf8Text(), metavar="TYPE", help="Only this run type."
)
@click.option("--tenant", "tenant_ids", multiple=True, type=ID, metavar="ID")
@click.option("--workspace", "workspace_ids", multiple=True, type=ID, metavar="ID")
# Not an IntRange: below 1 is refused by ReconcileOptions, above 500 is capped there.
@click.option("--limit", type=int, help="Runs per pass (default: the policy's batch_limit).")
@click.option("--dry-run", is_flag=True, help="Show what would be failed; write nothing.")
@click.option("--drain", is_flag=True, help="Repeat passes until one reconciles nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result object as JSON.")
def reconcile(
    *,
    types: tuple[str, ...],
    tenant_ids: tuple[int, ...],
    workspace_ids: tuple[int, ...],
    limit: int | None,
    dry_run: bool,
    drain: bool,
    as_json: bool,
) -> None:
    """Force-fail stale queued/running runs now, with evidence."""
    from worker.lifecycle.reconciler import (
        ON_DEMAND_SOURCE,
        DrainResult,
        ReconcileOptions,
        ReconcileResult,
    )

    if drain and dry_run:
        raise click.UsageError("--drain cannot be combined with --dry-run")
    options = ReconcileOptions(
        types=list(types) or None,
        tenant_ids=list(tenant_ids),
        workspace_ids=list(workspace_ids),
        limit=limit,
        dry_run=dry_run,
        source=ON_DEMAND_SOURCE,
    )
    reconciler = _reconciler(publishing=not dry_run)
    engine = _database(create=not dry_run, policy=reconciler.policy)
    if drain and as_json:
        _stream_drain_json(reconciler, engine, options)
        return
    result: ReconcileResult
    if drain:
        # A progress line only for a person watching: never in a pipe, a log or --json.
        progress = _DrainProgress() if sys.stdout.isatty() and sys.stderr.isatty() else None
        result = reconciler.drain(engine, options, on_pass=progress)
        if progress is not None:
            progress.done()
    else:
        result = reconciler.reconcile(engine, options)
    if as_json:
        _print_json(result.to_dict())
        return
    passes = f" in {result.passes} passes" if isinstance(result, DrainResult) else ""
    if dry_run:
        requeues = sum(1 for c in result.changes if c.action == "requeue")
        also = f", {requeues} would be requeued" if requeues else ""
        click.echo(
            f"dry run: {result.candidates} candidates, {len(result.changes) - requeues} would "
            f"be force-failed{also}, {result.skipped} skipped; nothing was written"
        )
    else:
        also = f" ({result.requeued} requeued)" if result.requeued else ""
        click.echo(
            f"{result.candidates} candidates, {result.reconciled} reconciled{also}, "
            f"{result.skipped} skipped{passes}"
        )
    if result.changes:
        _table(
            ("RUN", "TYPE", "WAS", "REASON", "THRESHOLD", "SINCE", "ACTION", "APPLIED"),
            [
                (
                    str(c.operation_run_id),
                    c.type,
                    c.before["status"],
                    c.reason_code,
                    f"{c.evidence['threshold_seconds']}s",
                    str(c.evidence["reference_time"]),
                    c.action,
                    "yes" if c.applied else "no",
                )
                for c in result.changes
            ],
        )


_FRESHNESS = ("terminal_normal", "reconciled_failed", "unknown", "likely_stale", "fresh")
_STATUSES = ("queued", "running", "completed")
_OUTCOMES = ("pending", "succeeded", "partially_succeeded", "blocked", "failed", "cancelled")


@main.command()
@click.option("--status", type=click.Choice(_STATUSES))
@click.option("--outcome", type=click.Choice(_OUTCOMES))
@click.option("--freshness", type=click.Choice(_FRESHNESS))
@click.option("--type", "types", multiple=True, type=Utf8Text(), metavar="TYPE")
@click.option("--tenant", "tenant_ids", multiple=True, type=ID, metavar="ID")
@click.option(
    "--reason", type=Utf8Text(), metavar="CODE", help="Only runs ended with this reason code."
)
@click.option("--limit", type=click.IntRange(1, MAX_RUNS_LIMIT), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def runs(
    *,
    status: str | None,
    outcome: str | None,
    freshness: str | None,
    types: tuple[str, ...],
    tenant_ids: tuple[int, ...],
    reason: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List the newest runs with their freshness state and terminal reason."""
    from worker.db import read_session
    from worker.lifecycle.clock import database_now
    from worker.lifecycle.freshness import OperationRunFreshnessState
    from worker.lifecycle.listing import list_runs
    from worker.lifecycle.policy import load_policy

    policy = load_policy()
    with read_session(_database(create=False, policy=policy)) as session:
        listed = list_runs(
            session,
            policy,
            now=database_now(session),
            status=status,
            outcome=outcome,
            freshness=OperationRunFreshnessState(freshness) if freshness else None,
            types=types,
            tenant_ids=tenant_ids,
            reason=reason,
            limit=limit,
        )
    if as_json:
        _print_json(listed)
        return
    if not listed:
        click.echo("no runs match")
        return
    _table(
        (
            "ID",
            "TYPE",
            "STATUS",
            "OUTCOME",
            "FRESHNESS",
            "REASON",
            "WORKSPACE",
            "TENANT",
            "CREATED",
        ),
        [
            (
                str(r["id"]),
                r["type"],
                r["status"],
                r["outcome"],
                r["freshness_state"],
                r["reason_code"] or "-",
                str(r["workspace_id"]),
                "-" if r["tenant_id"] is None else str(r["tenant_id"]),
                str(r["created_at"])[:19],
            )
            for r in listed
        ],
    )


@main.command()
@click.argument("run_id", type=ID)
@click.option("--json", "as_json", is_flag=True, help="Print the explanation as JSON.")
def explain(run_id: int, as_json: bool) -> None:
    """Why a run would (or would not) be force-failed, with its evidence."""
    from models import OperationRun
    from worker.db import read_session
    from worker.errors import RunNotFoundError

    reconciler = _reconciler()
    with read_session(_database(create=False, policy=reconciler.policy)) as session:
        run = session.get(OperationRun, run_id)
        if run is None:
            raise RunNotFoundError(f"no operation run has id {run_id}")
        explanation = reconciler.explain(session, run)
    data = explanation.to_dict()
    if as_json:
        _print_json(data)
        return
    summary = data["run"]
    click.echo(
        f"run {summary['id']} {summary['type']}: {summary['status']}/{summary['outcome']}, "
        f"{data['freshness_state']}"
    )
    click.echo(f"why: {data['why']}")
    legitimacy = data["execution_legitimacy"]
    failed = [name for name, ok in legitimacy["checks"].items() if not ok]
    click.echo(
        "execution legitimacy: "
        + ("allowed" if legitimacy["allowed"] else f"refused ({legitimacy['reason_code']})")
        + (f"; failing checks: {', '.join(failed)}" if failed else "")
    )
    worker = data.get("worker")
    if worker:
        click.echo(
            f"worker: {worker['nodename']} (id {worker['id']}, pid {worker['pid']} on "
            f"{worker['hostname']}), {worker['state']}, last heartbeat "
            f"{worker['last_heartbeat_at']}"
            + (f", stopped {worker['stopped_at']}" if worker["stopped_at"] else "")
        )
    if data["assessment"]:
        click.echo("evidence the next pass would record:")
        click.echo(json.dumps(data["assessment"]["evidence"], indent=2))
    if data["reconciliation"]:
        click.echo("reconciliation record:")
        click.echo(json.dumps(data["reconciliation"], indent=2))
    terminal = data["terminal"]
    if terminal:
        click.echo(
            f"ended: {terminal['reason_code']} by {terminal['source']} at "
            f"{terminal['recorded_at']} (context.{terminal['record_key']})"
        )
        click.echo(f"message: {terminal['reason_message']}")
        for key, value in terminal["key_evidence"].items():
            shown = value if isinstance(value, str) else json.dumps(value)
            click.echo(f"  {key}: {shown}")
    if data["audit"]:
        click.echo("audit:")
        _table(
            ("ID", "RECORDED", "ACTION", "REASON", "ACTOR"),
            [
                (
                    str(a["id"]),
                    str(a["recorded_at"]),
                    a["action"],
                    a["reason_code"] or "-",
                    f"{a['actor_type']}:{a['actor_id']}",
                )
                for a in data["audit"]
            ],
        )


@main.command()
@click.option("--limit", type=click.IntRange(1, MAX_RUNS_LIMIT), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def workers(limit: int, as_json: bool) -> None:
    """The registered workers, newest first: state (alive, lost, stopped) on the database's
    clock and how many running runs each holds."""
    from worker.db import read_session
    from worker.lifecycle.clock import database_now
    from worker.lifecycle.liveness import list_workers
    from worker.lifecycle.policy import load_policy

    effective = load_policy()
    with read_session(_database(create=False, policy=effective)) as session:
        now = database_now(session)
        listed = [
            worker.to_dict(effective.workers, now, running)
            for worker, running in list_workers(session, limit=limit)
        ]
    if as_json:
        _print_json(listed)
        return
    if not listed:
        click.echo("no workers registered")
        return
    _table(
        ("ID", "NODENAME", "HOSTNAME", "PID", "STATE", "RUNNING", "STARTED", "LAST HEARTBEAT"),
        [
            (
                str(w["id"]),
                w["nodename"],
                w["hostname"],
                str(w["pid"]),
                w["state"],
                str(w["running_runs"]),
                str(w["started_at"])[:19],
                str(w["last_heartbeat_at"])[:19],
            )
            for w in listed
        ],
    )


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print source, sha256 and policy as JSON.")
def policy(as_json: bool) -> None:
    """The effective lifecycle policy (defaults filled in) and its sha256, the hash every
    forced transition's evidence carries as policy_sha256."""
    from worker.lifecycle.policy import load_policy

    effective = load_policy()
    if as_json:
        _print_json(
            {"source": effective.source, "sha256": effective.sha256, "policy": effective.to_dict()}
        )
        return
    click.echo(f"# policy {effective.source}, sha256 {effective.sha256}")
    click.echo(effective.to_toml(), nl=False)


@main.command()
@click.option(
    "-c", "--concurrency", type=click.IntRange(min=1), help="Pool processes (default: CPUs)."
)
@click.option(
    "--loglevel",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Worker log level (default: RUNWARDEN_LOG_LEVEL).",
)
@click.option("--no-web", is_flag=True, help="Do not start the web console.")
@click.option("--web-host", default="127.0.0.1", show_default=True, help="The console's address.")
@click.option(
    "--web-port", type=click.IntRange(1, 65535), default=5580, show_default=True, help="Its port."
)
def up(
    concurrency: int | None, loglevel: str | None, no_web: bool, web_host: str, web_port: int
) -> None:
    """Run the service: migrate, embedded Redis if no broker is set, worker + beat, and
    the web console (on 127.0.0.1:5580 unless told otherwise).

    Stops everything it started on Ctrl-C or SIGTERM.
    """
    from worker.logs import configure_root
    from worker.service import run_up

    settings = get_settings()
    configure_root(log_format=settings.log_format, level=settings.log_level)
    sys.exit(
        run_up(
            settings,
            concurrency=concurrency,
            loglevel=loglevel,
            web=not no_web,
            web_host=web_host,
            web_port=web_port,
        )
    )


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=5580, show_default=True, help="TCP port."
)
def web(host: str, port: int) -> None:
    """The web console, JSON API and /metrics. Beyond loopback it needs
    RUNWARDEN_WEB_TOKEN, which every page, API call and /metrics then requires."""
    from worker.logs import configure_root
    from worker.web.server import serve

    settings = get_settings()
    configure_root(log_format=settings.log_format, level=settings.log_level)
    serve(settings, host=host, port=port)


@main.command()
@click.option("--keep", is_flag=True, help="Keep the demo's var dir (database, logs).")
def demo(keep: bool) -> None:
    """The whole lifecycle end to end on the embedded default, in under a minute."""
    from worker.demo import run_demo

    sys.exit(run_demo(keep=keep, echo=click.echo))


if __name__ == "__main__":  # pragma: no cover
    main()
