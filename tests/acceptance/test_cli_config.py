"""Bad configuration as a user meets it: one line on stderr, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.acceptance.cli import one_line_error as _one_line_error
from tests.acceptance.cli import run_cli as _run
from tests.acceptance.cli import tree as _tree


@pytest.mark.parametrize("command", [("migrate",), ("runs",), ("reconcile",), ("explain", "1")])
@pytest.mark.parametrize(
    "url", ["garbage", "nosuch://app:s3cret@h/db", "postgresql+psycopg2://app:s3cret@h/db"]
)
def test_cli__unsupported_database_url_is_one_line_exit_2(
    tmp_path: Path, command: tuple[str, ...], url: str
) -> None:
    env = {"RUNWARDEN_DATABASE_URL": url, "RUNWARDEN_VAR_DIR": str(tmp_path / "var")}
    line = _one_line_error(_run(*command, env=env, cwd=tmp_path), 2)
    assert "RUNWARDEN_DATABASE_URL" in line
    assert "s3cret" not in line
    assert _tree(tmp_path) == set()


@pytest.mark.parametrize("below", ["", "var"])
def test_cli__var_dir_on_a_file_is_one_line_exit_2(tmp_path: Path, below: str) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    env = {"RUNWARDEN_VAR_DIR": str(a_file / below)}
    line = _one_line_error(_run("migrate", env=env, cwd=tmp_path), 2)
    assert "RUNWARDEN_VAR_DIR" in line
    assert _tree(tmp_path) == {Path("a-file")}
    assert a_file.read_text() == ""
