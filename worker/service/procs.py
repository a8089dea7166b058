"""Child-process helpers for the processes ``runwarden up`` starts."""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


class StartupInterrupted(Exception):
    """A stop was requested while ``up`` was starting; what it had started is stopped."""


def parent_death_signal(signum: signal.Signals) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to send ``signum`` to the child when its parent dies.

    ``up`` stops its children on SIGINT/SIGTERM itself; this covers the case it cannot
    handle -- being SIGKILLed -- so a killed ``up`` still leaves no orphan behind.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    libc = ctypes.CDLL(libc_name, use_errno=True)

    def set_pdeathsig() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)

    return set_pdeathsig
