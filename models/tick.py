from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base
from models.types import UtcDateTime


class Tick(Base):
    """The last run of each periodic task (one row per task, ``name``): when it last
    finished, on the database's clock, and what it did. The console and ``/metrics`` read
    the scheduled reconciliation's (``runwarden_reconcile_last_tick_timestamp_seconds``)."""

    __tablename__ = "runwarden_ticks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    ticked_at: Mapped[datetime] = mapped_column(UtcDateTime)
    passes: Mapped[int] = mapped_column(Integer)
    candidates: Mapped[int] = mapped_column(Integer)
    reconciled: Mapped[int] = mapped_column(Integer)
    skipped: Mapped[int] = mapped_column(Integer)
    duration_ms: Mapped[int] = mapped_column(Integer)
