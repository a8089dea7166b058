"""start_operation against a real Redis broker, and against one that is down."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import Engine, func, select

from models import AuditLog, OperationRun
from tests.factories import seed_tenancy
from tests.servers import RedisServer, free_port
from worker.db import read_session
from worker.dispatch import DispatchFailedError, run_identity_hash, start_operation
from worker.errors import BrokerUnavailableError, InvalidInputError, UnknownReferenceError

pytestmark = [pytest.mark.redis]


def _app(broker_url: str) -> Celery:
    app = Celery("dispatch-test", broker=broker_url, set_as_current=False)
    app.conf.update(
        broker_connection_timeout=1,
        broker_connection_retry=False,
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2},
    )
    return app


@pytest.fixture
def broker_app(redis_server: RedisServer) -> Iterator[Celery]:
    app = _app(f"{redis_server.url}/13")
    yield app
    app.close()


def _run(engine: Engine, run_id: int) -> OperationRun:
    with read_session(engine) as session:
        run = session.get(OperationRun, run_id)
        assert run is not None
        return run


def test_start_operation__broker_down__run_dispatch_failed(engine: Engine) -> None:
    tenancy = seed_tenancy(engine)
    dead = _app(f"redis://127.0.0.1:{free_port()}/0")

    with pytest.raises(DispatchFailedError) as raised:
        start_operation(
            "inventory.sync",
            workspace_id=tenancy["workspace_id"],
            tenant_id=tenancy["tenant_id"],
            app=dead,
        )

    assert isinstance(raised.value, BrokerUnavailableError)
    run = _run(engine, raised.value.operation_run_id)
    assert (run.status, run.outcome) == ("completed", "failed")
    assert [f["reason_code"] for f in run.failure_summary] == ["run.dispatch_failed"]
    assert run.context["dispatch"]["evidence"]["task_name"] == "operations.inventory.sync"
    assert run.celery_task_id == run.context["dispatch"]["evidence"]["celery_task_id"]
    assert str(raised.value.operation_run_id) in raised.value.message
    dead.close()


def test_start_operation__queues_run_with_task_id_and_inputs(
    engine: Engine, broker_app: Celery
) -> None:
    tenancy = seed_tenancy(engine)

    run_id = start_operation(
        "inventory.sync",
        workspace_id=tenancy["workspace_id"],
        user_id=tenancy["user_id"],
        inputs={"full": True},
        app=broker_app,
    )

    run = _run(engine, run_id)
    assert (run.status, run.outcome, run.attempts) == ("queued", "pending", 0)
    assert run.celery_task_id
    assert run.context == {"inputs": {"full": True}}
    assert run.run_identity_hash is None


def test_start_operation__same_identity_while_active__returns_existing_run(
    engine: Engine, broker_app: Celery
) -> None:
    tenancy = seed_tenancy(engine)
    kwargs = {"workspace_id": tenancy["workspace_id"], "tenant_id": tenancy["tenant_id"]}

    first = start_operation("inventory.sync", identity={"scope": "all"}, app=broker_app, **kwargs)
    again = start_operation("inventory.sync", identity={"scope": "all"}, app=broker_app, **kwargs)
    other = start_operation("inventory.sync", identity={"scope": "one"}, app=broker_app, **kwargs)

    assert again == first
    assert other != first
    assert _run(engine, first).run_identity_hash == run_identity_hash({"scope": "all"})


def test_run_identity_hash__canonical_json() -> None:
    assert run_identity_hash({"a": 1, "b": [1, 2]}) == run_identity_hash({"b": [1, 2], "a": 1})
    assert len(run_identity_hash("x")) == 64


def _row_counts(engine: Engine) -> tuple[int, int]:
    with read_session(engine) as session:
        runs = session.scalar(select(func.count()).select_from(OperationRun)) or 0
        audits = session.scalar(select(func.count()).select_from(AuditLog)) or 0
        return runs, audits


# Refused before anything is written or published: the broker here is never reachable, so
# a call that got as far as publishing would raise DispatchFailedError and leave a run.


@pytest.mark.parametrize(
    ("unknown", "named"),
    [
        ({"workspace_id": 999_999}, ["workspace_id 999999"]),
        ({"tenant_id": 999_999}, ["tenant_id 999999"]),
        ({"user_id": 999_999}, ["user_id 999999"]),
        ({"tenant_id": 999_998, "user_id": 999_999}, ["tenant_id 999998", "user_id 999999"]),
    ],
)
def test_start_operation__unknown_workspace_tenant_or_user_is_refused_naming_it(
    engine: Engine, unknown: dict[str, int], named: list[str]
) -> None:
    tenancy = seed_tenancy(engine)
    ids = {k: tenancy[k] for k in ("workspace_id", "tenant_id", "user_id")} | unknown
    dead = _app(f"redis://127.0.0.1:{free_port()}/0")

    with pytest.raises(UnknownReferenceError) as raised:
        start_operation("inventory.sync", app=dead, **ids)

    assert isinstance(raised.value, InvalidInputError)
    assert raised.value.exit_code == 2
    for name in named:
        assert name in raised.value.message
    assert _row_counts(engine) == (0, 0)
    dead.close()


@pytest.mark.parametrize("identity", [None, {"scope": "all"}])
def test_start_operation__input_named_like_the_bodys_run_argument_is_refused(
    engine: Engine, identity: Any
) -> None:
    tenancy = seed_tenancy(engine)
    dead = _app(f"redis://127.0.0.1:{free_port()}/0")

    # The body is called as body(run, **inputs): an input "run" would fail every execution
    # with "got multiple values for argument 'run'".
    with pytest.raises(InvalidInputError, match="'run'"):
        start_operation(
            "inventory.sync",
            workspace_id=tenancy["workspace_id"],
            inputs={"full": True, "run": 1},
            identity=identity,
            app=dead,
        )

    assert _row_counts(engine) == (0, 0)
    dead.close()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("workspace_id", True),
        ("workspace_id", 0),
        ("workspace_id", None),
        ("workspace_id", "1"),
        ("workspace_id", 2**63),
        ("tenant_id", False),
        ("tenant_id", -1),
        ("user_id", 1.0),
        ("user_id", 2**63),
    ],
)
def test_start_operation__id_that_is_not_a_positive_integer_is_refused_naming_it(
    engine: Engine, key: str, value: Any
) -> None:
    tenancy = seed_tenancy(engine)
    ids = {k: tenancy[k] for k in ("workspace_id", "tenant_id", "user_id")} | {key: value}
    dead = _app(f"redis://127.0.0.1:{free_port()}/0")

    with pytest.raises(InvalidInputError) as raised:
        start_operation("inventory.sync", app=dead, **ids)

    assert isinstance(raised.value, ValueError)
    assert key in raised.value.message
    assert _row_counts(engine) == (0, 0)
    dead.close()


@pytest.mark.parametrize("type_name", ["", "  ", None])
def test_start_operation__blank_type_is_refused(engine: Engine, type_name: Any) -> None:
    tenancy = seed_tenancy(engine)
    with pytest.raises(InvalidInputError, match="run type"):
        start_operation(type_name, workspace_id=tenancy["workspace_id"])
    assert _row_counts(engine) == (0, 0)
