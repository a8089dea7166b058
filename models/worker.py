from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base
from models.types import BigId, UtcDateTime


class RunwardenWorker(Base):
    """A Celery worker's main process, registered when it is ready. Its heartbeats, on the
    database's clock, tell the reconciler whether the runs it started can still end."""

    __tablename__ = "runwarden_workers"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    #: Celery's node name (``celery@web-1``)
    nodename: Mapped[str] = mapped_column(String(255))
    #: the machine's
    hostname: Mapped[str] = mapped_column(String(255))
    #: the main process's
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_heartbeat_at: Mapped[datetime] = mapped_column(UtcDateTime)
    stopped_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    def __repr__(self) -> str:
        return f"RunwardenWorker(id={self.id!r}, nodename={self.nodename!r}, pid={self.pid!r})"
