"""The legitimacy gate's views (worker/lifecycle/tenancy.py), built and rebuilt here.

Revision 0005 builds them over runwarden's own tables; ``migrate`` rebuilds them when the
policy's ``[tenancy]`` mapping is another (their ``runwarden_gate_mapping`` record says
which), in the migration's transaction. Every statement is a SQLAlchemy DDL construct:
identifiers quoted by the dialect, never text pasted from the policy.
"""

from __future__ import annotations

from sqlalchemy import MetaData, Table, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.schema import AddConstraint, CreateView, DropConstraint, DropView

from models import Base
from worker.lifecycle.tenancy import GATE_MAPPING_VIEW, Tenancy, installed_mapping

_VIEWS = ("runwarden_gate_mapping", "runwarden_gate_users", "runwarden_gate_tenants")


def drop_views(connection: Connection) -> None:
    for name in _VIEWS:
        connection.execute(DropView(Table(name, MetaData()), if_exists=True))


def build_views(connection: Connection, tenancy: Tenancy) -> None:
    """(Re)build the gate views for ``tenancy``: dropped and created, not replaced, so a
    mapped column of another type than the last one's is no error."""
    drop_views(connection)
    for name, query in tenancy.views():
        connection.execute(CreateView(query, name))


#: runwarden's own tables that a [tenancy] mapping stands in for.
GATE_TABLES = frozenset({"workspaces", "tenants", "users"})


def sync_foreign_keys(connection: Connection, tenancy: Tenancy) -> None:
    """With an application's tables, a run's workspace, tenant and user ids are the
    application's: ``operation_runs`` keeps no foreign keys to runwarden's own tables.
    Without, the keys the models declare are there (added back if a mapping dropped them)."""
    if connection.dialect.name != "postgresql":
        return
    present = {fk["name"] for fk in inspect(connection).get_foreign_keys("operation_runs")}
    for constraint in Base.metadata.tables["operation_runs"].foreign_key_constraints:
        # Only the keys to the tables a mapping replaces; runwarden_workers stays runwarden's.
        if constraint.referred_table.name not in GATE_TABLES:
            continue
        if tenancy.host and constraint.name in present:
            connection.execute(DropConstraint(constraint))
        elif not tenancy.host and constraint.name not in present:
            connection.execute(AddConstraint(constraint))


def sync(connection: Connection, tenancy: Tenancy) -> bool:
    """Make the database's gate what ``tenancy`` says; True when anything was rebuilt."""
    if installed_mapping(connection) == tenancy.sha256:
        return False
    build_views(connection, tenancy)
    sync_foreign_keys(connection, tenancy)
    return True


__all__ = ["GATE_MAPPING_VIEW", "build_views", "drop_views", "sync", "sync_foreign_keys"]
