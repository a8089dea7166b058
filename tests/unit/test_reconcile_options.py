from __future__ import annotations

from typing import Any

import pytest

from worker.errors import InvalidOptionsError
from worker.lifecycle.gate import LegitimacyResult
from worker.lifecycle.reasons import ReasonCode
from worker.lifecycle.reconciler import ReconcileOptions


def test_options__defaults() -> None:
    options = ReconcileOptions()
    assert options.types is None
    assert options.tenant_ids == options.workspace_ids == []
    assert options.limit is None
    assert options.dry_run is False
    assert options.source == "scheduled_reconciler"


def test_options__limit_above_500_is_capped() -> None:
    assert ReconcileOptions(limit=10_000).limit == 500
    assert ReconcileOptions(limit=1).limit == 1


def test_options__repeated_types_are_kept_once_in_order() -> None:
    assert ReconcileOptions(types=["b", "a", "b"]).types == ["b", "a"]


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": -3}, "limit"),
        ({"limit": "10"}, "limit"),
        ({"limit": True}, "limit"),
        ({"tenant_ids": [0]}, "tenant_ids[0]"),
        ({"tenant_ids": [1, -2]}, "tenant_ids[1]"),
        ({"tenant_ids": ["1"]}, "tenant_ids[0]"),
        ({"tenant_ids": 1}, "tenant_ids"),
        ({"workspace_ids": [-1]}, "workspace_ids[0]"),
        ({"types": []}, "types"),
        ({"types": [""]}, "types"),
        ({"types": ["  "]}, "types"),
        ({"types": [3]}, "types[0]"),
        ({"types": "inventory.sync"}, "types"),
        ({"dry_run": "yes"}, "dry_run"),
        ({"dry_run": 1}, "dry_run"),
        ({"source": ""}, "source"),
        ({"tenants": [1]}, "tenants"),
    ],
)
def test_options__invalid_value_is_an_error_naming_the_option(
    options: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidOptionsError) as raised:
        ReconcileOptions.coerce(options)
    assert f"option {named}:" in raised.value.message
    assert raised.value.exit_code == 2


def test_options__coerce_accepts_options_mapping_or_none() -> None:
    options = ReconcileOptions(dry_run=True)
    assert ReconcileOptions.coerce(options) is options
    assert ReconcileOptions.coerce({"dry_run": True}) == options
    assert ReconcileOptions.coerce(None) == ReconcileOptions()


def test_legitimacy__first_failing_check_names_the_reason() -> None:
    checks = {
        "run_non_terminal": True,
        "tenant_exists": True,
        "tenant_active": False,
        "tenant_in_workspace": False,
        "user_active": False,
        "type_covered": True,
    }
    result = LegitimacyResult.from_checks(checks)
    assert result.allowed is False
    assert result.reason_code == ReasonCode.EXECUTION_TENANT_INACTIVE == "execution.tenant_inactive"
    assert result.to_dict() == {
        "allowed": False,
        "reason_code": "execution.tenant_inactive",
        "checks": checks,
    }


def test_legitimacy__all_checks_passing_is_allowed() -> None:
    result = LegitimacyResult.from_checks(
        dict.fromkeys(
            (
                "run_non_terminal",
                "tenant_exists",
                "tenant_active",
                "tenant_in_workspace",
                "user_active",
                "type_covered",
            ),
            True,
        )
    )
    assert (result.allowed, result.reason_code) == (True, None)
