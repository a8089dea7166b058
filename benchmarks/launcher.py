"""Spawn a command and report its wall time and peak RSS as JSON to a file.

Run as ``python -I -S benchmarks/launcher.py RESULT_FILE ARGV...``. It exists because
Linux carries a process's high-water RSS across ``exec``: a child forked (or vforked) from
the benchmark process itself would report the benchmark's own peak. Forked from this small
process instead, the child's ``ru_maxrss`` is its own. Timing starts at the spawn, so this
launcher's start-up is not counted.
"""

import json
import os
import sys
import time


def main() -> int:
    result_path, argv = sys.argv[1], sys.argv[2:]
    started = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, os.environ)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - started
    with open(result_path, "w", encoding="utf-8") as out:
        # ru_maxrss is in kilobytes on Linux.
        json.dump({"seconds": seconds, "max_rss_kb": usage.ru_maxrss}, out)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
