from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, inspect, select

from migrations import VERSION_TABLE
from models import Base, OperationRun, Workspace
from worker.db import build_engine
from worker.migrate import downgrade, upgrade


def _diff(url: str) -> list[object]:
    engine = build_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "version_table": VERSION_TABLE}
            )
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_migrations__upgrade_head_matches_models(db_url: str) -> None:
    # db_url is already at head (copied from a migrated template); upgrading again is a no-op.
    upgrade(db_url)
    assert _diff(db_url) == []


def test_migrations__version_table_is_runwardens_own(db_url: str) -> None:
    engine = build_engine(db_url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert VERSION_TABLE in tables
    assert "alembic_version" not in tables


def test_migrations__downgrade_base_then_upgrade_again(db_url: str) -> None:
    downgrade(db_url, "base")
    engine = build_engine(db_url)
    try:
        assert set(inspect(engine).get_table_names()) <= {VERSION_TABLE}
    finally:
        engine.dispose()
    upgrade(db_url)
    assert _diff(db_url) == []


def test_migrations__upgrade_from_each_revision_keeps_the_runs(db_url: str) -> None:
    downgrade(db_url, "0001")
    engine = build_engine(db_url)
    try:
        # Revision 0001 has every column the models write here.
        with engine.begin() as conn:
            conn.execute(insert(Workspace), {"id": 1, "name": "w"})
            conn.execute(
                insert(OperationRun),
                {"workspace_id": 1, "type": "inventory.sync", "status": "queued"},
            )
        upgrade(db_url)
        with engine.connect() as conn:
            rows = conn.execute(select(OperationRun.type, OperationRun.status)).all()
        assert [tuple(row) for row in rows] == [("inventory.sync", "queued")]
    finally:
        engine.dispose()
    assert _diff(db_url) == []
