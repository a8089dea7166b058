"""[tenancy] as a user writes it: a mapping that does not fit the database is one line
naming the key, exit 2, whenever runwarden connects -- and migrate creates nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.acceptance.cli import one_line_error, run_cli, tree
from tests.hostdb import ORGANIZATIONS_DDL, empty_database, schema_checksum, schemas, tenancy_toml
from tests.servers import PostgresServer

GOOD = tenancy_toml()
ORGS = 'tenants = { table = "public.organizations", id = "id", workspace_id = "account_id", '
PEOPLE = 'users = { table = "public.people", id = "id", active = "is_active" }\n'


def _mapping(tenants_rest: str) -> str:
    return f"[tenancy]\n{ORGS}{tenants_rest}\n{PEOPLE}"


BAD = [
    (
        GOOD.replace("public.people", "public.persons"),
        "tenancy.users.table",
        "no table or view public.persons",
    ),
    (_mapping('active = "enabled" }'), "tenancy.tenants.active", "no column 'enabled'"),
    (
        GOOD.replace('workspace_id = "account_id"', 'workspace_id = "name"'),
        "tenancy.tenants.workspace_id",
        "not an integer type",
    ),
    (_mapping('active = "status" }'), "tenancy.tenants.active", "not boolean"),
    (
        _mapping('active = { column = "status", equals = 1 } }'),
        "tenancy.tenants.active.equals",
        "not an integer",
    ),
    (
        _mapping('active = { column = "is_active", equals = "yes" } }'),
        "tenancy.tenants.active.equals",
        "not text",
    ),
    (GOOD.replace('id = "id"', 'id = "id; drop table x"', 1), "tenancy.tenants.id", "identifier"),
]


@pytest.mark.postgres
@pytest.mark.parametrize(("mapping", "key", "problem"), BAD)
def test_tenancy__mapping_that_does_not_fit__migrate_and_reconcile_exit_2_naming_the_key(
    postgres_server: PostgresServer, tmp_path: Path, mapping: str, key: str, problem: str
) -> None:
    with empty_database(postgres_server, *ORGANIZATIONS_DDL) as url:
        policy = tmp_path / "policy.toml"
        policy.write_text(mapping)
        env = {
            "RUNWARDEN_DATABASE_URL": url,
            "RUNWARDEN_DB_SCHEMA": "runwarden",
            "RUNWARDEN_POLICY_FILE": str(policy),
        }
        before, known = schema_checksum(url), schemas(url)
        line = one_line_error(run_cli("migrate", env=env, cwd=tmp_path), 2)
        assert line.startswith(f"runwarden: error: {policy}: {key}: "), line
        assert problem in line
        assert schemas(url) == known  # nothing created, not even the schema
        assert schema_checksum(url) == before

        # Migrated with a good mapping, then pointed at the bad one: refused at connect.
        policy.write_text(GOOD)
        assert run_cli("migrate", env=env, cwd=tmp_path).returncode == 0
        policy.write_text(mapping)
        for command in (("reconcile",), ("runs",), ("migrate",)):
            line = one_line_error(run_cli(*command, env=env, cwd=tmp_path), 2)
            assert line.startswith(f"runwarden: error: {policy}: {key}: "), (command, line)


@pytest.mark.postgres
def test_tenancy__policy_changed_since_migrate__commands_say_to_migrate(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    with empty_database(postgres_server, *ORGANIZATIONS_DDL) as url:
        policy = tmp_path / "policy.toml"
        policy.write_text(GOOD)
        env = {"RUNWARDEN_DATABASE_URL": url, "RUNWARDEN_POLICY_FILE": str(policy)}
        assert run_cli("migrate", env=env, cwd=tmp_path).returncode == 0
        assert run_cli("reconcile", env=env, cwd=tmp_path).returncode == 0
        policy.write_text(tenancy_toml('{ column = "deleted_at", is_null = true }'))
        line = one_line_error(run_cli("reconcile", env=env, cwd=tmp_path), 2)
        assert line == (
            f"runwarden: error: {policy}: tenancy: the database's gate views were made for "
            "another mapping than this policy's ([tenancy]): run `runwarden migrate`"
        )
        assert run_cli("migrate", env=env, cwd=tmp_path).returncode == 0
        assert run_cli("reconcile", env=env, cwd=tmp_path).returncode == 0


def test_tenancy__on_sqlite__refused_creating_nothing(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(GOOD)
    env = {"RUNWARDEN_VAR_DIR": str(tmp_path / "var"), "RUNWARDEN_POLICY_FILE": str(policy)}
    line = one_line_error(run_cli("migrate", env=env, cwd=tmp_path), 2)
    assert line == (
        f"runwarden: error: {policy}: tenancy: an application's tables need PostgreSQL "
        "(this is SQLite)"
    )
    assert tree(tmp_path) == {Path("policy.toml")}
