"""What every benchmark shares: the servers, timing, statistics and the result record."""

from __future__ import annotations

import compileall
import contextlib
import importlib
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # tests.servers is imported from the repository root
    sys.path.insert(0, str(REPO))

from tests.servers import PostgresServer, RedisServer  # noqa: E402

BIN = Path(sys.executable).parent
WORK = REPO / "benchmarks" / "work"


@dataclass(frozen=True)
class Scale:
    """How big and how often: the default run, or ``--quick`` for development."""

    quick: bool
    drain_total: int
    drain_stale: int
    drain_repetitions: int
    idle_small: int
    idle_large: int
    idle_passes: int
    bridge_tasks: int
    bridge_repetitions: int
    latency_runs: int
    latency_spread_seconds: float

    @classmethod
    def for_mode(cls, quick: bool) -> Scale:
        if quick:
            return cls(True, 45_000, 5_000, 2, 10_000, 100_000, 60, 100, 2, 40, 15.0)
        return cls(False, 450_000, 50_000, 5, 10_000, 1_000_000, 200, 400, 5, 200, 40.0)


@dataclass
class Result:
    """One benchmark's figures, printed and written to results.json."""

    name: str
    goal: str
    available: bool = True
    goal_met: bool | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def unavailable(self, why: str) -> Result:
        self.available = False
        self.goal_met = None
        self.notes.append(f"not available: {why}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "goal": self.goal,
            "available": self.available,
            "goal_met": self.goal_met,
            "figures": self.figures,
            "notes": self.notes,
        }

    def verdict(self) -> str:
        if not self.available:
            return "NOT AVAILABLE"
        if self.goal_met is None:
            return "no verdict"
        return "goal MET" if self.goal_met else "goal MISSED"


def log(message: str) -> None:
    print(message, flush=True)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) -- no interpolation past the data."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return float(ordered[rank - 1])


def plain_url(url: str) -> str:
    """A SQLAlchemy URL as libpq understands it."""
    return url.replace("postgresql+psycopg://", "postgresql://")


def module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def missing_attribute(module: str, attribute: str) -> str | None:
    """None when ``module.attribute`` imports, else why not (for "not available" notes)."""
    try:
        loaded = importlib.import_module(module)
    except Exception as exc:
        return f"{module} does not import ({type(exc).__name__}: {exc})"
    if not hasattr(loaded, attribute):
        return f"{module}.{attribute} does not exist yet"
    return None


@dataclass
class Servers:
    """One PostgreSQL (with pg_stat_statements) and one Redis for the whole suite."""

    postgres: PostgresServer
    redis: RedisServer

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(plain_url(self.postgres.url()), autocommit=True)

    def connect(self, database: str, schema: str | None = None) -> psycopg.Connection[Any]:
        """``schema``: runwarden's own (RUNWARDEN_DB_SCHEMA) first on the search path."""
        options = {"options": f"-c search_path={schema},public"} if schema else {}
        return psycopg.connect(plain_url(self.postgres.url(database)), autocommit=True, **options)

    def create_database(self, name: str, template: str | None = None) -> str:
        with self.admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            clause = f" TEMPLATE {template}" if template else ""
            conn.execute(f"CREATE DATABASE {name}{clause}")
        return self.postgres.url(name)

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def server_log(self) -> Path:
        return self.postgres.workdir / "log"


@contextlib.contextmanager
def servers() -> Iterator[Servers]:
    """Start PostgreSQL and Redis on loopback; stop both whatever happens."""
    postgres = PostgresServer()
    redis = RedisServer()
    try:
        postgres.start()
        _enable_pg_stat_statements(postgres)
        redis.start()
        yield Servers(postgres, redis)
    finally:
        redis.stop()
        postgres.stop()


def _enable_pg_stat_statements(postgres: PostgresServer) -> None:
    # The bridge benchmark counts statements per task with pg_stat_statements, which must
    # be preloaded: set it, then restart (pg_ctl reuses the options it was started with).
    with psycopg.connect(plain_url(postgres.url()), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    postgres.pg_ctl("restart")


def versions(srv: Servers) -> dict[str, str]:
    with srv.admin() as conn:
        row = conn.execute("SHOW server_version").fetchone()
    pg_version = str(row[0]) if row else "?"
    redis_version = "?"
    with contextlib.suppress(Exception):
        import redis as redis_client

        info = redis_client.Redis.from_url(srv.redis.url).info("server")
        redis_version = str(info.get("redis_version", "?"))
    return {
        "postgresql": pg_version,
        "redis": redis_version,
        "python": sys.version.split()[0],
        "psycopg": psycopg.__version__,
    }


def machine() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_mb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_mb = int(line.split()[1]) // 1024
                break
    # Other work on the machine skews every figure: record how busy it was.
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {"nproc": os.cpu_count(), "memory_mb": memory_mb, "cpu": cpu, "load_average": load}


@dataclass(frozen=True)
class ProcessRun:
    seconds: float
    returncode: int
    max_rss_mb: float
    stderr: str


def run_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    stdout_path: Path,
    timeout_seconds: float = 600,
) -> ProcessRun:
    """Run a whole process with stdout to a file: its wall time and its own peak RSS.

    Spawned through ``launcher.py`` (see there why), which times it from spawn to exit.
    """
    stderr_path = stdout_path.with_suffix(".stderr")
    measure_path = stdout_path.with_suffix(".measure")
    launcher = [sys.executable, "-I", "-S", str(REPO / "benchmarks" / "launcher.py")]
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        completed = subprocess.run(
            [*launcher, str(measure_path), *argv],
            env=dict(env),
            stdout=out,
            stderr=err,
            cwd=REPO,
            timeout=timeout_seconds,
            check=False,
        )
    measured = json.loads(measure_path.read_text())
    return ProcessRun(
        seconds=float(measured["seconds"]),
        returncode=completed.returncode,
        max_rss_mb=int(measured["max_rss_kb"]) / 1024,
        stderr=stderr_path.read_text(errors="replace"),
    )


#: runwarden's own packages (its dependencies are byte-compiled by pip when installed).
PROJECT_PACKAGES = ("worker", "models", "migrations")


def compile_project() -> None:
    """Byte-compile runwarden's own packages, as an installed runwarden is: pip compiles
    what it installs (the Docker image's ``pip install .`` too). An editable install run
    with ``PYTHONDONTWRITEBYTECODE`` set -- as development shells often are -- compiles
    every runwarden module from source at each start, which no deployment does, and
    which the floor (one script and compiled dependencies) does not pay."""
    for package in PROJECT_PACKAGES:
        compileall.compile_dir(REPO / package, quiet=1)


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNWARDEN_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def proc_status_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a live process, in MB."""
    found: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in {"VmRSS", "VmHWM"}:
                found[key] = int(value.split()[0]) / 1024
    return found


def children_max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started
