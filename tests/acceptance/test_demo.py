"""``runwarden demo``: the whole lifecycle on the embedded default, under a minute."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RUNWARDEN = REPO / ".venv" / "bin" / "runwarden"


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry.name}: {cmdline}")
    return found


def test_demo__every_run_ends_with_its_reason_and_nothing_is_left_running(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNWARDEN_")}

    result = subprocess.run(
        [str(RUNWARDEN), "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for expected in (
        "succeeded",
        "run.job_failed",
        "run.worker_lost",
        "execution.tenant_inactive",
        "run.stale_queued",
    ):
        assert expected in result.stdout, output
    assert "s3cr3t" not in output
    assert "done in" in result.stdout
    var_dir = output.split("runwarden demo in ", 1)[1].split()[0]
    assert _processes_mentioning(var_dir) == []
    assert not Path(var_dir).exists()
