"""Alembic environment and revisions for runwarden's tables."""

from __future__ import annotations

from pathlib import Path

#: runwarden's own version table, so it can share a database with an application that
#: runs alembic itself.
VERSION_TABLE = "runwarden_alembic_version"
SCRIPT_LOCATION = str(Path(__file__).resolve().parent)
