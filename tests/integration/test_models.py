from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError, StatementError

from models import OperationRun, RunOutcome, RunStatus
from tests.factories import make_run, seed_tenancy
from worker.db import read_session, write_session


def test_timestamps__round_trip_as_aware_utc(engine: Engine) -> None:
    ids = seed_tenancy(engine)
    plus_two = timezone(timedelta(hours=2))
    moment = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=plus_two)
    run_id = make_run(engine, workspace_id=ids["workspace_id"], started_at=moment)
    with read_session(engine) as session:
        run = session.get(OperationRun, run_id)
        assert run is not None
        assert run.started_at == moment
        assert run.started_at.tzinfo is not None
        assert run.started_at.utcoffset() == timedelta(0)


def test_timestamps__sql_ordering_follows_time_across_offsets(engine: Engine) -> None:
    ids = seed_tenancy(engine)
    base = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    # Written in different offsets; in SQL the earlier instant must still sort first.
    late = make_run(engine, workspace_id=ids["workspace_id"], now=base, age_seconds=0)
    early = make_run(
        engine,
        workspace_id=ids["workspace_id"],
        now=(base - timedelta(seconds=1)).astimezone(timezone(timedelta(hours=5))),
    )
    with read_session(engine) as session:
        ordered = session.scalars(select(OperationRun.id).order_by(OperationRun.created_at)).all()
        assert ordered == [early, late]
        before_cutoff = session.scalars(
            select(OperationRun.id).where(OperationRun.created_at < base)
        ).all()
        assert before_cutoff == [early]


def test_timestamps__naive_datetime_is_refused(engine: Engine) -> None:
    ids = seed_tenancy(engine)
    with pytest.raises(StatementError, match="naive datetime"), write_session(engine) as s:
        s.add(
            OperationRun(
                workspace_id=ids["workspace_id"], type="x", created_at=datetime(2026, 1, 1)
            )
        )


def test_operation_run__status_check_constraint(engine: Engine) -> None:
    ids = seed_tenancy(engine)
    with pytest.raises(IntegrityError):
        make_run(engine, workspace_id=ids["workspace_id"], status="exploded")


def test_operation_run__completed_iff_outcome_decided(engine: Engine) -> None:
    ids = seed_tenancy(engine)
    with pytest.raises(IntegrityError):
        make_run(engine, workspace_id=ids["workspace_id"], status="completed", outcome="pending")
    with pytest.raises(IntegrityError):
        make_run(engine, workspace_id=ids["workspace_id"], status="running", outcome="failed")


def test_operation_run__one_active_run_per_identity(engine: Engine) -> None:
    ids = seed_tenancy(engine)
    common = {"workspace_id": ids["workspace_id"], "tenant_id": ids["tenant_id"]}
    make_run(engine, **common, run_identity_hash="h1")
    with pytest.raises(IntegrityError):
        make_run(engine, **common, run_identity_hash="h1")
    # Terminal runs and runs without identity are not de-duplicated.
    make_run(engine, **common, run_identity_hash="h2", status="completed", outcome="failed")
    make_run(engine, **common, run_identity_hash="h2")
    make_run(engine, **common)
    make_run(engine, **common)


def test_operation_run__defaults(engine: Engine) -> None:
    ids = seed_tenancy(engine)
    run_id = make_run(engine, workspace_id=ids["workspace_id"])
    with read_session(engine) as session:
        run = session.get(OperationRun, run_id)
        assert run is not None
        assert (run.status, run.outcome) == (RunStatus.QUEUED, RunOutcome.PENDING)
        assert run.context == {} and run.summary_counts == {} and run.failure_summary == []
        assert run.attempts == 0
