"""Running the ``runwarden`` command as a user does, for the acceptance tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

RUNWARDEN = str(Path(sys.executable).with_name("runwarden"))


def run_cli(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``runwarden *args`` with only ``env`` of the RUNWARDEN_* variables set."""
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


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The one line a refused command prints on stderr, having exited ``code`` with
    nothing on stdout and no traceback."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("runwarden: error: ")
    return lines[0]


def tree(root: Path) -> set[Path]:
    """Every path below ``root``: what a command created there."""
    return {p.relative_to(root) for p in root.rglob("*")}
