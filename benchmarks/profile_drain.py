"""Profile ``runwarden reconcile --drain --json`` on the drain benchmark's data with py-spy.

Not part of ``make bench``: ``.venv/bin/pip install py-spy`` first, then
``.venv/bin/python -m benchmarks.profile_drain [--total 450000] [--out DIR]``. Writes a
speedscope profile (open it at https://www.speedscope.app) and prints the functions where
the time goes, idle time (waiting for PostgreSQL) included, next to pg_stat_statements'
account of the same run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import Counter
from pathlib import Path

from benchmarks.common import BIN, WORK, base_env, log, servers
from benchmarks.data import DRAIN_KIND, build_database, write_policy

TEMPLATE = "bench_profile_template"
COPY = "bench_profile_copy"


def _frame(frame: str) -> str:
    name, _, where = frame.partition(" (")
    return f"{name} ({where.split(':')[0].rsplit('/', 1)[-1]}" + ")" if where else name


def top_functions(raw: Path, limit: int = 40) -> list[str]:
    """Inclusive share of samples per function, from py-spy's raw (collapsed) output."""
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        for frame in {_frame(f) for f in stack.split(";")}:
            inclusive[frame] += samples
    return [f"{100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(limit)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--total", type=int, default=450_000)
    parser.add_argument("--out", type=Path, default=WORK / "profile")
    args = parser.parse_args()
    py_spy = BIN / "py-spy"
    if not py_spy.exists():
        log(f"not available: {py_spy} (.venv/bin/pip install py-spy)")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    with servers() as srv:
        build_database(srv, TEMPLATE, total=args.total, kind=DRAIN_KIND)
        policy = write_policy(args.out / "policy.toml")
        url = srv.create_database(COPY, template=TEMPLATE)
        with srv.connect(COPY) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("SELECT pg_stat_statements_reset()")
        env = base_env(
            RUNWARDEN_DATABASE_URL=url,
            RUNWARDEN_POLICY_FILE=str(policy),
            RUNWARDEN_VAR_DIR=str(args.out / "var"),
        )
        drain = [str(BIN / "runwarden"), "reconcile", "--drain", "--json", "--limit", "500"]
        for fmt, suffix in (("raw", "raw"), ("speedscope", "speedscope.json")):
            if fmt == "speedscope":  # a fresh copy: the first run drained this one
                url = srv.create_database(COPY, template=TEMPLATE)
                env["RUNWARDEN_DATABASE_URL"] = url
            with (args.out / "drain.json").open("wb") as out:
                subprocess.run(
                    [str(py_spy), "record", "--idle", "-r", "200", "-f", fmt,
                     "-o", str(args.out / f"drain.{suffix}"), "--", *drain],
                    env=env, stdout=out, stderr=subprocess.DEVNULL, check=True,
                )  # fmt: skip
            if fmt == "raw":
                with srv.connect(COPY) as conn:
                    statements = conn.execute(
                        """SELECT calls, round(total_exec_time)::int,
                                  left(regexp_replace(query, '\\s+', ' ', 'g'), 100)
                           FROM pg_stat_statements
                           WHERE dbid = (SELECT oid FROM pg_database
                                         WHERE datname = current_database())
                           ORDER BY total_exec_time DESC LIMIT 8"""
                    ).fetchall()
        srv.drop_database(COPY)
        srv.drop_database(TEMPLATE)
    log("py-spy, share of wall-clock samples (idle included), inclusive:")
    for line in top_functions(args.out / "drain.raw"):
        log(f"  {line}")
    log("pg_stat_statements (calls, total ms, query) of the first profiled drain:")
    for calls, total_ms, query in statements:
        log(f"  {calls:6d} {total_ms:7d} ms  {query}")
    log(f"speedscope profile: {args.out / 'drain.speedscope.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
