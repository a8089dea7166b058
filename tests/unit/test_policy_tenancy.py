"""[tenancy] at load: every mapping that is not identifiers in the restricted forms is
refused naming its key, before anything connects."""

from __future__ import annotations

import pytest

from tests.hostdb import ACTIVE_FORMS, tenancy_toml
from worker.errors import PolicyError
from worker.lifecycle.policy import parse_policy
from worker.lifecycle.tenancy import OWN_TENANCY, ActiveRule

USERS = 'users = { table = "public.people", id = "id", active = "is_active" }\n'


def _tenants(entry: str) -> str:
    return f"[tenancy]\ntenants = {entry}\n{USERS}"


GOOD_TENANTS = '{ table = "public.organizations", id = "id", workspace_id = "account_id", '


@pytest.mark.parametrize(
    ("toml", "key", "problem"),
    [
        ("[tenancy]\n" + USERS, "tenancy.tenants", "missing"),
        ('[tenancy]\ntenants = "organizations"\n' + USERS, "tenancy.tenants", "must be a table"),
        (_tenants(GOOD_TENANTS + 'active = "is_active", x = 1 }'), "tenancy.tenants.x", "unknown"),
        (
            _tenants('{ table = "organizations", id = "id", workspace_id = "a", active = "b" }'),
            "tenancy.tenants.table",
            "schema.table",
        ),
        (
            _tenants('{ table = "public.org;drop", id = "id", workspace_id = "a", active = "b" }'),
            "tenancy.tenants.table",
            "not an identifier",
        ),
        (
            _tenants('{ table = "a.b.c", id = "id", workspace_id = "a", active = "b" }'),
            "tenancy.tenants.table",
            "schema.table",
        ),
        (
            _tenants('{ table = "public.o", id = 5, workspace_id = "a", active = "b" }'),
            "tenancy.tenants.id",
            "must be a string",
        ),
        (
            _tenants('{ table = "public.o", id = "id", active = "b" }'),
            "tenancy.tenants.workspace_id",
            "missing",
        ),
        (
            _tenants('{ table = "public.o", id = "id", workspace_id = "x\\"y", active = "b" }'),
            "tenancy.tenants.workspace_id",
            "not an identifier",
        ),
        (
            _tenants(GOOD_TENANTS + 'active = "deleted_at IS NULL" }'),
            "tenancy.tenants.active",
            "not an identifier",
        ),
        (_tenants(GOOD_TENANTS + "active = true }"), "tenancy.tenants.active", "must be a"),
        (
            _tenants(GOOD_TENANTS + 'active = { column = "d" } }'),
            "tenancy.tenants.active",
            "exactly one of is_null and equals",
        ),
        (
            _tenants(GOOD_TENANTS + 'active = { column = "d", is_null = "yes" } }'),
            "tenancy.tenants.active.is_null",
            "true or false",
        ),
        (
            _tenants(GOOD_TENANTS + 'active = { column = "s", equals = true } }'),
            "tenancy.tenants.active.equals",
            "string or an integer",
        ),
        (
            _tenants(GOOD_TENANTS + 'active = { column = "s", equals = "a\\u0000" } }'),
            "tenancy.tenants.active.equals",
            "printable",
        ),
        (
            _tenants(GOOD_TENANTS + 'active = { column = "s", is_null = true, equals = 1 } }'),
            "tenancy.tenants.active",
            "exactly one",
        ),
        (
            _tenants(GOOD_TENANTS + 'active = { col = "s" } }'),
            "tenancy.tenants.active.col",
            "unknown key",
        ),
        (
            "[tenancy]\n"
            + _tenants(GOOD_TENANTS + 'active = "a" }').removeprefix("[tenancy]\n")
            + "groups = {}\n",
            "tenancy.groups",
            "unknown key",
        ),
        ('tenancy = "public.organizations"\n', "tenancy", "must be a table"),
    ],
)
def test_tenancy__bad_mapping__refused_at_load_naming_the_key(
    toml: str, key: str, problem: str
) -> None:
    with pytest.raises(PolicyError) as raised:
        parse_policy(toml, source="policy.toml")
    assert raised.value.message.startswith(f"policy.toml: {key}: "), raised.value.message
    assert problem in raised.value.message
    assert raised.value.exit_code == 2


@pytest.mark.parametrize(
    ("form", "rule"),
    [
        ("flag", ActiveRule("is_active")),
        ("soft_delete", ActiveRule("deleted_at", is_null=True)),
        ("status", ActiveRule("status", equals="active")),
    ],
)
def test_tenancy__each_form_of_active__loads_and_round_trips(form: str, rule: ActiveRule) -> None:
    policy = parse_policy(tenancy_toml(ACTIVE_FORMS[form]), source="p.toml")
    assert policy.tenancy is not None
    assert policy.gate_tenancy is policy.tenancy
    assert policy.tenancy.tenants.active == policy.tenancy.users.active == rule
    assert (policy.tenancy.tenants.schema, policy.tenancy.tenants.table) == (
        "public",
        "organizations",
    )
    again = parse_policy(policy.to_toml(), source="again.toml")
    assert again.tenancy == policy.tenancy
    assert again.sha256 == policy.sha256


def test_tenancy__is_a_rule__changes_the_policy_hash_but_absent_keeps_it() -> None:
    plain = parse_policy("", source="p.toml")
    assert plain.tenancy is None and plain.gate_tenancy is OWN_TENANCY
    assert "tenancy" not in plain.to_dict()
    hashes = {parse_policy(tenancy_toml(a), source="p").sha256 for a in ACTIVE_FORMS.values()}
    assert len(hashes | {plain.sha256}) == 4
