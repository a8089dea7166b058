"""The checks ``runwarden up`` makes before it writes or starts anything."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from worker.db import describe_url
from worker.errors import ConfigurationError
from worker.service.checks import check_imports
from worker.service.embedded import EmbeddedRedis


def test_check_imports__installed_and_working_directory_modules_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker runs as `python -m celery` in up's working directory, so it imports from
    # there even though the `runwarden` script's own sys.path does not include it.
    (tmp_path / "app_ops_here.py").write_text("")
    monkeypatch.chdir(tmp_path)
    check_imports(("json", "json.decoder", "worker.demo", "app_ops_here"))


@pytest.mark.parametrize(
    "name",
    ["nosuch", "worker.nosuch", "json.nosuch", "os.path.nosuch", "bad..name", "no-dash"],
)
def test_check_imports__missing_module_is_a_configuration_error_naming_it(name: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        check_imports(("json", name))
    assert raised.value.message.startswith("RUNWARDEN_IMPORTS: ")
    assert repr(name) in raised.value.message
    assert raised.value.exit_code == 2


def test_check_imports__does_not_run_application_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "app_pkg_unrun"
    package.mkdir()
    marker = tmp_path / "imported"
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (package / "ops.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)

    check_imports(("app_pkg_unrun.ops",))

    assert not marker.exists()
    assert "app_pkg_unrun" not in sys.modules


@pytest.mark.parametrize("kind", ["directory", "file"])
def test_embedded_redis__something_else_at_the_socket_path_is_a_configuration_error(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "redis.sock"
    if kind == "directory":
        path.mkdir()
    else:
        path.write_text("keep me")

    with pytest.raises(ConfigurationError) as raised:
        EmbeddedRedis(path, data_dir=tmp_path).check()

    assert str(path) in raised.value.message
    assert path.exists()


def test_embedded_redis__socket_left_by_a_killed_server_passes_the_check(tmp_path: Path) -> None:
    path = tmp_path / "redis.sock"
    left = socket.socket(socket.AF_UNIX)
    left.bind(str(path))
    left.close()  # bound, never listening: what a SIGKILLed redis-server leaves behind
    EmbeddedRedis(path, data_dir=tmp_path).check()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://app:s3cret@h/1?ssl_cert_reqs=none", "rediss://app:***@h/1?ssl_cert_reqs=none"),
        ("redis://h/0?password=s3cret&db=2", "redis://h/0?db=2&password=***"),
        ("redis+socket:///var/run/redis.sock", "redis+socket:///var/run/redis.sock"),
        (
            "redis+socket://:s3cret@/run/r.sock?virtual_host=1",
            "redis+socket://:***@/run/r.sock?virtual_host=1",
        ),
    ],
)
def test_describe_url__broker_url_password_and_secret_parameters_hidden(
    url: str, shown: str
) -> None:
    # One describer for database and broker URLs alike.
    assert describe_url(url) == shown
