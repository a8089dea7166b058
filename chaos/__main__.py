"""``make chaos`` = ``python -m chaos``: N runs through real workers with every fault at
once, then the checker. Exits 1 on any violation (printing the runs and their journal
lines), 0 when every run ended in its true state."""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from chaos.report import write_results
from chaos.run import DEFAULT_RUNS, QUICK_RUNS, run_chaos

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--runs", type=int, default=None, help=f"runs (default {DEFAULT_RUNS})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS} runs")
    parser.add_argument("--seed", type=int, default=None, help="the workload's seed")
    parser.add_argument(
        "--results", type=Path, default=HERE, help="where RESULTS.md and results.json go"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    runs = args.runs or (QUICK_RUNS if args.quick else DEFAULT_RUNS)
    if runs < 1:
        parser.error("--runs must be at least 1")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    print(f"chaos: {runs} runs, seed {seed}", flush=True)
    outcome = run_chaos(runs=runs, seed=seed, keep=args.keep)
    write_results(outcome, args.results)
    print(outcome.table(), flush=True)
    if not outcome.report.ok:
        print(outcome.violations_text(), flush=True)
        print(f"chaos: {len(outcome.report.violations)} violations (seed {seed})", flush=True)
        return 1
    print(f"chaos: no violations (seed {seed})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
