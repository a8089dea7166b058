"""The two writes of a tracked task (start, completion), in process, on a real PostgreSQL.

Not part of ``make bench`` (the bridge benchmark measures them inside Celery, where the
noise of two pool processes sharing two cores with PostgreSQL is larger than a change to
one statement). Run it on two checkouts to compare them:
``.venv/bin/python -m benchmarks.task_writes [--tasks 3000]``; prints the milliseconds per
task of each block of 500 and their median (the first block, warm-up, left out).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from sqlalchemy import insert

from benchmarks.common import log, servers
from models import OperationRun, Tenant, User, Workspace, utcnow
from worker.db import build_engine, statement_session
from worker.lifecycle.execution import start_execution
from worker.lifecycle.gate import QueuedExecutionLegitimacyGate
from worker.lifecycle.policy import LifecyclePolicy, TypePolicy
from worker.lifecycle.transitions import complete
from worker.migrate import upgrade

BLOCK = 500
POLICY = LifecyclePolicy(
    batch_limit=100,
    types=tuple(
        TypePolicy(f"type{i}.run", queued_stale_after_seconds=60, running_stale_after_seconds=60)
        for i in range(5)
    ),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=3000)
    args = parser.parse_args()
    blocks = max(2, args.tasks // BLOCK)
    with servers() as srv:
        url = srv.create_database("bench_task_writes")
        upgrade(url)
        engine = build_engine(url)
        with engine.begin() as conn:
            conn.execute(insert(Workspace), {"id": 1, "name": "w"})
            conn.execute(insert(Tenant), {"id": 1, "workspace_id": 1, "name": "t"})
            conn.execute(insert(User), {"id": 1, "email": "u@example.test"})
            run = {"workspace_id": 1, "tenant_id": 1, "user_id": 1, "type": "type2.run"}
            conn.execute(
                insert(OperationRun),
                [{**run, "celery_task_id": f"task-{i}"} for i in range(1, blocks * BLOCK + 1)],
            )
        gate = QueuedExecutionLegitimacyGate(POLICY)
        per_task_ms = []
        for block in range(blocks):
            started = time.perf_counter()
            for run_id in range(block * BLOCK + 1, (block + 1) * BLOCK + 1):
                with statement_session(engine) as session:
                    start = start_execution(
                        session,
                        run_id,
                        gate=gate,
                        celery_task_id=f"task-{run_id}",
                        retries=0,
                        now=utcnow(),
                    )
                    assert start.started, start
                with statement_session(engine) as session:
                    counts = {"items": 1}
                    assert complete(
                        session,
                        run_id,
                        outcome="succeeded",
                        summary_counts=counts,
                        attempt=1,
                        celery_task_id=f"task-{run_id}",
                        now=utcnow(),
                    )
            per_task_ms.append((time.perf_counter() - started) / BLOCK * 1000)
        engine.dispose()
    shown = ", ".join(f"{ms:.3f}" for ms in per_task_ms)
    log(f"ms per task (start + completion), blocks of {BLOCK}: {shown}")
    log(f"median (first block left out): {statistics.median(per_task_ms[1:]):.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
