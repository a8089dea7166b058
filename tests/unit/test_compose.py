from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_compose__has_the_production_services_with_real_commands() -> None:
    services = _compose()["services"]
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    assert services["migrate"]["command"] == ["migrate"]
    worker = [*services["worker"]["entrypoint"], *services["worker"]["command"]]
    beat = [*services["beat"]["entrypoint"], *services["beat"]["command"]]
    assert worker[:4] == ["celery", "-A", "worker.celery_app", "worker"]
    assert beat[:4] == ["celery", "-A", "worker.celery_app", "beat"]
    for name in ("postgres", "redis"):
        assert "healthcheck" in services[name]
    for name in ("worker", "beat", "migrate"):
        env = services[name]["environment"]
        assert env["RUNWARDEN_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["RUNWARDEN_BROKER_URL"].startswith("redis://redis:")


def test_compose__console_needs_a_token_and_is_published_on_loopback() -> None:
    console = _compose()["services"]["console"]
    command = [*console["entrypoint"], *console["command"]]
    assert command[:2] == ["runwarden", "web"]
    assert console["environment"]["RUNWARDEN_WEB_TOKEN"].startswith("${RUNWARDEN_WEB_TOKEN:?")
    assert console["environment"]["RUNWARDEN_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert all(port.startswith("127.0.0.1:") for port in console["ports"])


def _compose_plugin_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _compose_plugin_available(), reason="docker compose plugin not installed")
def test_compose__docker_compose_config_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
