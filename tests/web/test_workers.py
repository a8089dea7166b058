"""Workers in the console: the workers page, ``GET /api/workers`` (the objects of
``runwarden workers --json``), a run's worker on its detail page, workers alive on the
overview and ``runwarden_workers_alive``."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.acceptance.cli import run_cli
from tests.factories import make_worker
from tests.web.conftest import POLICY, Seeded, Workers, seed_workers
from worker.db import read_session
from worker.lifecycle.clock import database_now
from worker.lifecycle.liveness import WorkerState, count_alive, list_workers
from worker.lifecycle.policy import WorkerPolicy


@pytest.fixture
def workers(seeded: Seeded) -> Workers:
    return seed_workers(seeded)


def _expected_states(w: Workers) -> dict[int, str]:
    return {
        w.alive_too: "alive",
        w.just_stopped: "stopped",
        w.stopped: "stopped",
        w.lost: "lost",
        w.alive: "alive",
    }


def _scraped_alive(client: TestClient) -> str:
    lines = [
        line
        for line in client.get("/metrics").text.splitlines()
        if line.startswith("runwarden_workers_alive")
    ]
    assert len(lines) == 1, lines
    return lines[0]


def test_workers_page__lists_the_workers_newest_first_with_their_states(
    client: TestClient, workers: Workers
) -> None:
    assert 'href="/workers"' in client.get("/").text  # in the navigation
    page = client.get("/workers")
    assert page.status_code == 200
    html = page.text
    rows = re.findall(r'<tr class="worker-(\w+)" id="worker-(\d+)">', html)
    assert [(int(i), state) for state, i in rows] == list(_expected_states(workers).items())
    cells = re.findall(r'<td class="state">(\w+)</td>', html)
    assert cells == list(_expected_states(workers).values())
    alive_row = html.split(f'id="worker-{workers.alive}">', 1)[1].split("</tr>", 1)[0]
    assert "celery@alive-1" in alive_row and "test-host" in alive_row
    assert re.findall(r'<td class="num">(\d+)</td>', alive_row) == ["101", "1"]
    lost_row = html.split(f'id="worker-{workers.lost}">', 1)[1].split("</tr>", 1)[0]
    assert re.findall(r'<td class="num">(\d+)</td>', lost_row) == ["102", "1"]
    assert 'aria-current="page">Workers</a>' in html


def test_workers_page__with_no_worker_registered_says_so(client: TestClient) -> None:
    html = client.get("/workers").text
    assert 'id="no-workers"' in html
    assert 'id="workers-alive">0</a>' in client.get("/").text


def test_api_workers__are_the_objects_of_runwarden_workers_json(
    client: TestClient, workers: Workers, db_url: str, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    env = {"RUNWARDEN_DATABASE_URL": db_url, "RUNWARDEN_POLICY_FILE": str(policy)}
    cli = run_cli("workers", "--json", env=env)
    assert cli.returncode == 0, cli.stderr
    response = client.get("/api/workers")
    assert response.status_code == 200
    assert response.json() == json.loads(cli.stdout)
    assert {w["id"]: w["state"] for w in response.json()} == _expected_states(workers)

    newest = run_cli("workers", "--json", "--limit", "2", env=env)
    assert client.get("/api/workers", params={"limit": 2}).json() == json.loads(newest.stdout)


def test_api_workers__bad_limit_is_422_with_the_message(client: TestClient) -> None:
    for value, message in (
        ("0", "invalid value for limit: 0 is not in the range 1<=x<=500"),
        ("x", "invalid value for limit: 'x' is not an integer"),
    ):
        response = client.get("/api/workers", params={"limit": value})
        assert response.status_code == 422
        assert response.json() == {"detail": message}


def test_metrics__workers_alive_is_the_count_of_alive_workers(
    client: TestClient, seeded: Seeded
) -> None:
    assert _scraped_alive(client) == "runwarden_workers_alive 0.0"
    seed_workers(seeded)
    with read_session(seeded.engine) as session:
        now = database_now(session)
        states = [w.state(seeded.policy.workers, now) for w, _ in list_workers(session)]
    assert states.count(WorkerState.ALIVE) == 2
    assert _scraped_alive(client) == "runwarden_workers_alive 2.0"


def test_count_alive__draws_the_line_where_a_workers_state_does(seeded: Seeded) -> None:
    """The SQL count and :meth:`WorkerSnapshot.state` agree on each side of
    ``lost_after_seconds``: exactly at it is alive, a microsecond later lost."""
    policy = WorkerPolicy(heartbeat_interval_seconds=5, lost_after_seconds=30)
    with read_session(seeded.engine) as session:
        beat = database_now(session)
    make_worker(seeded.engine, now=beat)
    make_worker(seeded.engine, now=beat, stopped_age_seconds=0)
    threshold = beat + timedelta(seconds=policy.lost_after_seconds)
    with read_session(seeded.engine) as session:
        listed = [w for w, _ in list_workers(session)]
        for now, alive in ((threshold, 1), (threshold + timedelta(microseconds=1), 0)):
            assert count_alive(session, policy, now) == alive
            assert [w.state(policy, now) for w in listed].count(WorkerState.ALIVE) == alive


def test_overview__shows_the_workers_alive(client: TestClient, workers: Workers) -> None:
    assert 'id="workers-alive">2</a>' in client.get("/").text
    assert client.get("/api/overview").json()["workers_alive"] == 2


def test_run_page__names_the_runs_worker_and_its_state(
    client: TestClient, seeded: Seeded, workers: Workers
) -> None:
    for run_id, worker_id, nodename, state in (
        (workers.on_alive, workers.alive, "celery@alive-1", "alive"),
        (workers.on_lost, workers.lost, "celery@lost", "lost"),
    ):
        html = client.get(f"/runs/{run_id}").text
        fact = html.split('<dd id="worker">', 1)[1].split("</dd>", 1)[0]
        assert f'<a href="/workers#worker-{worker_id}">{nodename}</a>' in fact
        assert f'id="worker-state">{state}</span>' in fact
    assert "run.worker_lost" in client.get(f"/runs/{workers.on_lost}").text
    # A run no worker started names none.
    assert 'id="worker"' not in client.get(f"/runs/{seeded.stale_queued}").text
