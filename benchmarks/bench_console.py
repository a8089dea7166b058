"""6. Console: a ``/metrics`` scrape and the overview page over 10,000 vs 1,000,000 terminal
runs (the same 200 fresh non-terminal runs in both; every failed terminal run has its
forced-transition audit row, so the audit log grows with the history too).

Timed in-process through the console's ASGI application (FastAPI's test client: routing,
middleware, rendering, the database reads; no socket), alternating the two databases. The
first scrape of a console counts the settled audit log once in SQL; it is a warm-up, as
are the first page loads. Goal: p50 ratio large/small <= 1.2 for each; a scrape's p50 is
reported against the contract's 50 ms.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.common import WORK, Result, Scale, Servers, median, missing_attribute, percentile
from benchmarks.data import IDLE_KIND, build_database, write_policy

SMALL = "bench_console_small"
LARGE = "bench_console_large"
GOAL_RATIO = 1.2
GOAL_SCRAPE_MS = 50.0

#: One forced-transition audit row for every failed terminal run, recorded when it ended.
_AUDIT = """
INSERT INTO audit_logs (workspace_id, tenant_id, actor_type, actor_id, action, resource_type,
                        resource_id, metadata, recorded_at)
SELECT workspace_id, tenant_id, 'system', 'bridge', 'operation_run.force_failed',
       'operation_run', CAST(id AS text),
       jsonb_build_object('reason_code', 'run.job_failed', 'source', 'bridge',
                          'outcome', 'failed', 'evidence', '{}'::jsonb),
       completed_at
FROM operation_runs WHERE outcome = 'failed'
"""


def run(srv: Servers, scale: Scale) -> Result:
    result = Result(
        "console",
        f"/metrics scrape and overview page p50 over {scale.idle_large:,} / "
        f"{scale.idle_small:,} terminal runs <= {GOAL_RATIO}; scrape p50 < {GOAL_SCRAPE_MS:.0f} ms",
    )
    why = missing_attribute("worker.web.app", "create_app")
    if why:
        return result.unavailable(why)

    from fastapi.testclient import TestClient

    from worker.db import build_engine
    from worker.lifecycle.policy import load_policy
    from worker.web.app import create_app

    policy = load_policy(write_policy(WORK / "console" / "policy.toml"))
    urls = {
        "small": build_database(srv, SMALL, total=scale.idle_small, kind=IDLE_KIND),
        "large": build_database(srv, LARGE, total=scale.idle_large, kind=IDLE_KIND),
    }
    audit_rows: dict[str, int] = {}
    for side, name in (("small", SMALL), ("large", LARGE)):
        with srv.connect(name) as conn:
            conn.execute(_AUDIT)
            conn.execute("VACUUM (ANALYZE) audit_logs")
            row = conn.execute("SELECT count(*) FROM audit_logs").fetchone()
            audit_rows[side] = int(row[0]) if row else 0
    engines = {side: build_engine(url) for side, url in urls.items()}
    clients: dict[str, Any] = {
        side: TestClient(create_app(engine, policy)) for side, engine in engines.items()
    }
    paths = {"scrape": "/metrics", "overview": "/"}
    samples: dict[str, dict[str, list[float]]] = {
        kind: {"small": [], "large": []} for kind in paths
    }
    try:
        for client in clients.values():  # warm up: the counter's first read, caches, plans
            for path in paths.values():
                for _ in range(10):
                    assert client.get(path).status_code == 200
        for index in range(scale.idle_passes):
            order = ("small", "large") if index % 2 == 0 else ("large", "small")
            for kind, path in paths.items():
                for side in order:
                    started = time.perf_counter()
                    response = clients[side].get(path)
                    samples[kind][side].append(time.perf_counter() - started)
                    if response.status_code != 200:
                        result.notes.append(f"{side} {path}: HTTP {response.status_code}")
        scrape_text = clients["large"].get("/metrics").text
    finally:
        for client in clients.values():
            client.close()
        for engine in engines.values():
            engine.dispose()
        srv.drop_database(SMALL)
        srv.drop_database(LARGE)

    figures: dict[str, Any] = {
        "requests_per_side": scale.idle_passes,
        "small_runs": scale.idle_small,
        "large_runs": scale.idle_large,
        "small_audit_rows": audit_rows["small"],
        "large_audit_rows": audit_rows["large"],
    }
    met = True
    for kind in paths:
        small = median(samples[kind]["small"]) * 1000
        large = median(samples[kind]["large"]) * 1000
        ratio = large / small
        figures |= {
            f"{kind}_small_p50_ms": round(small, 3),
            f"{kind}_large_p50_ms": round(large, 3),
            f"{kind}_large_p95_ms": round(percentile(samples[kind]["large"], 95) * 1000, 3),
            f"{kind}_ratio": round(ratio, 3),
        }
        met = met and ratio <= GOAL_RATIO
    figures["scrape_lines"] = len(scrape_text.splitlines())
    result.figures = figures
    result.goal_met = met and figures["scrape_large_p50_ms"] < GOAL_SCRAPE_MS and not result.notes
    return result


def summary(result: Result) -> list[str]:
    f = result.figures
    return [
        f"{f['small_runs']:,} terminal runs ({f['small_audit_rows']:,} audit rows): "
        f"scrape p50 {f['scrape_small_p50_ms']} ms, overview p50 {f['overview_small_p50_ms']} ms",
        f"{f['large_runs']:,} terminal runs ({f['large_audit_rows']:,} audit rows): "
        f"scrape p50 {f['scrape_large_p50_ms']} ms (p95 {f['scrape_large_p95_ms']} ms), "
        f"overview p50 {f['overview_large_p50_ms']} ms (p95 {f['overview_large_p95_ms']} ms)",
        f"ratio large/small: scrape {f['scrape_ratio']}, overview {f['overview_ratio']} "
        f"(goal <= {GOAL_RATIO}); scrape p50 goal < {GOAL_SCRAPE_MS:.0f} ms",
    ]
