"""The embedded default: several processes writing one SQLite file at once."""

from __future__ import annotations

import multiprocessing

from sqlalchemy import func, select

from models import OperationRun
from tests.factories import seed_tenancy
from worker.db import build_engine, read_session, write_session

PROCESSES = 4
TRANSACTIONS = 60


def _writer(url: str, workspace_id: int, worker: int) -> None:
    engine = build_engine(url)
    try:
        for i in range(TRANSACTIONS):
            # Read, then write, in one transaction: without BEGIN IMMEDIATE this fails with
            # "database is locked" as soon as another process commits in between.
            with write_session(engine) as session:
                count = session.scalar(select(func.count()).select_from(OperationRun)) or 0
                session.add(
                    OperationRun(
                        workspace_id=workspace_id,
                        type="inventory.sync",
                        run_identity_hash=f"{worker}-{i}-{count}",
                    )
                )
    finally:
        engine.dispose()


def test_sqlite__concurrent_read_then_write_transactions_all_commit(sqlite_url: str) -> None:
    engine = build_engine(sqlite_url)
    ids = seed_tenancy(engine)
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_writer, args=(sqlite_url, ids["workspace_id"], w))
        for w in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(90)
    assert [p.exitcode for p in procs] == [0] * PROCESSES
    with read_session(engine) as session:
        total = session.scalar(select(func.count()).select_from(OperationRun))
    assert total == PROCESSES * TRANSACTIONS
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()
