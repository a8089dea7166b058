"""Engines that only read (``create=False``): they make nothing, and are cached apart from
the engines that write."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from models import OperationRun
from worker import db
from worker.errors import DatabaseMissingError
from worker.migrate import upgrade


def test_get_engine__cached_per_url_and_per_create(sqlite_url: str) -> None:
    reader = db.get_engine(sqlite_url, create=False)
    writer = db.get_engine(sqlite_url)

    assert db.get_engine(sqlite_url, create=False) is reader
    assert db.get_engine(sqlite_url, create=True) is writer
    assert reader is not writer
    with db.read_session(reader) as session:
        assert session.scalar(select(func.count()).select_from(OperationRun)) == 0


def test_build_engine__reader_of_a_missing_sqlite_file__refused_creating_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "no" / "such" / "runwarden.db"

    with pytest.raises(DatabaseMissingError, match="runwarden migrate"):
        db.build_engine(f"sqlite:///{path}", create=False)

    assert list(tmp_path.iterdir()) == []


def test_build_engine__reader_of_a_file_removed_after_the_check__does_not_create_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runwarden.db"
    upgrade(f"sqlite:///{path}")
    engine = db.build_engine(f"sqlite:///{path}", create=False)
    try:
        path.unlink()
        with pytest.raises(OperationalError, match="unable to open"):
            engine.connect().close()
        assert not path.exists()
    finally:
        engine.dispose()
