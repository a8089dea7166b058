"""Bad configuration as a user meets it: one line on stderr, exit 2, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RUNWARDEN = str(Path(sys.executable).with_name("runwarden"))


def _run(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RUNWARDEN_")}
    return subprocess.run(
        [RUNWARDEN, *args],
        capture_output=True,
        text=True,
        env={**clean, **env},
        cwd=cwd,
        timeout=60,
        check=False,
    )


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("runwarden: error: ")
    return lines[0]


def _tree(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")}


@pytest.mark.parametrize("command", [("migrate",), ("runs",), ("reconcile",), ("explain", "1")])
@pytest.mark.parametrize(
    "url", ["garbage", "nosuch://app:s3cret@h/db", "postgresql+psycopg2://app:s3cret@h/db"]
)
def test_cli__unsupported_database_url_is_one_line_exit_2(
    tmp_path: Path, command: tuple[str, ...], url: str
) -> None:
    env = {"RUNWARDEN_DATABASE_URL": url, "RUNWARDEN_VAR_DIR": str(tmp_path / "var")}
    line = _one_line_error(_run(*command, env=env, cwd=tmp_path))
    assert "RUNWARDEN_DATABASE_URL" in line
    assert "s3cret" not in line
    assert _tree(tmp_path) == set()


@pytest.mark.parametrize("below", ["", "var"])
def test_cli__var_dir_on_a_file_is_one_line_exit_2(tmp_path: Path, below: str) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    env = {"RUNWARDEN_VAR_DIR": str(a_file / below)}
    line = _one_line_error(_run("migrate", env=env, cwd=tmp_path))
    assert "RUNWARDEN_VAR_DIR" in line
    assert _tree(tmp_path) == {Path("a-file")}
    assert a_file.read_text() == ""
