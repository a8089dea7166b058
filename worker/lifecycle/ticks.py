"""When the periodic tasks last ran: one row per task in ``runwarden_ticks``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from models import Tick
from worker.lifecycle.evidence import iso
from worker.lifecycle.sql import statement
from worker.lifecycle.transitions import dialect_of

#: The scheduled reconciliation's row.
RECONCILE_TICK = "reconcile"


@dataclass(frozen=True, slots=True)
class TickRecord:
    name: str
    ticked_at: datetime
    passes: int
    candidates: int
    reconciled: int
    skipped: int
    duration_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ticked_at": iso(self.ticked_at),
            "passes": self.passes,
            "candidates": self.candidates,
            "reconciled": self.reconciled,
            "skipped": self.skipped,
            "duration_ms": self.duration_ms,
        }


def record_tick(
    session: Session,
    name: str,
    *,
    passes: int,
    candidates: int,
    reconciled: int,
    skipped: int,
    duration_ms: int,
    now: datetime | None = None,
) -> None:
    """Record that ``name`` finished now (the database's clock; ``now`` pins it in tests)."""
    session.execute(
        statement(dialect_of(session), "record_tick"),
        {
            "name": name,
            "now": now,
            "passes": passes,
            "candidates": candidates,
            "reconciled": reconciled,
            "skipped": skipped,
            "duration_ms": duration_ms,
        },
    )


def last_tick(session: Session, name: str = RECONCILE_TICK) -> TickRecord | None:
    row = session.get(Tick, name)
    if row is None:
        return None
    return TickRecord(
        name=row.name,
        ticked_at=row.ticked_at,
        passes=row.passes,
        candidates=row.candidates,
        reconciled=row.reconciled,
        skipped=row.skipped,
        duration_ms=row.duration_ms,
    )


__all__ = ["RECONCILE_TICK", "TickRecord", "last_tick", "record_tick"]
