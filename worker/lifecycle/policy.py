"""The lifecycle policy: which run types are covered and when they count as stale.

Loaded once from TOML (``RUNWARDEN_POLICY_FILE``, else the packaged
``default_policy.toml``) and validated strictly: a typo in a key or a threshold written as
a string must stop the service at start-up, not silently leave runs unreconciled.
"""

from __future__ import annotations

import functools
import hashlib
import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from worker.errors import PolicyError
from worker.lifecycle.tenancy import OWN_TENANCY, Tenancy, parse_tenancy

_Fail = Callable[[str, str], PolicyError]

#: A pass never touches more runs than this, whatever the policy or the caller asks.
MAX_BATCH_LIMIT = 500
DEFAULT_BATCH_LIMIT = 100
DEFAULT_INTERVAL_SECONDS = 60
#: The longest stale threshold, ten years of seconds. Past it a pass's cutoff (``now`` less
#: the threshold) can leave datetime's range (OverflowError on every pass), and past 2**31
#: PostgreSQL's pass, which reads thresholds into an ``int`` recordset column, fails
#: where the dry run (Python) succeeded. Bounded at load, so a policy that loads reconciles.
MAX_THRESHOLD_SECONDS = 315_360_000
#: The longest reconcile interval, one day: the scheduled pass is the safety net of every
#: covered type, and an interval of years would be a typo that silently disables it.
MAX_INTERVAL_SECONDS = 86_400
DEFAULT_HEARTBEAT_INTERVAL_SECONDS = 10
DEFAULT_LOST_AFTER_SECONDS = 60
#: A worker is lost after this many missed heartbeats at least: one late beat (a slow
#: database, a busy machine) must never fail a healthy worker's runs.
MIN_BEATS_BEFORE_LOST = 3
#: The longest heartbeat period and loss threshold, one hour and one day.
MAX_HEARTBEAT_INTERVAL_SECONDS = 3_600
MAX_LOST_AFTER_SECONDS = 86_400

_SECTIONS = frozenset({"reconciliation", "workers", "types", "tenancy"})
_RECONCILIATION_KEYS = frozenset({"batch_limit", "interval_seconds"})
_WORKERS_KEYS = frozenset({"heartbeat_interval_seconds", "lost_after_seconds"})
_REQUIRED_TYPE_KEYS = ("queued_stale_after_seconds", "running_stale_after_seconds")
_OPTIONAL_TYPE_KEYS = (
    "scheduled_reconciliation",
    "direct_failed_bridge",
    "recovery",
    "max_attempts",
)
#: What the reconciler does with a run whose message was lost or whose worker died.
RECOVERY_FAIL = "fail"
RECOVERY_RETRY = "retry"
RECOVERIES = (RECOVERY_FAIL, RECOVERY_RETRY)
#: The most attempts a type may ask for: recovery is for a lost message or a dead worker,
#: not a retry loop.
MAX_ATTEMPTS = 100


@dataclass(frozen=True, slots=True)
class TypePolicy:
    """The lifecycle window of one covered run type."""

    name: str
    queued_stale_after_seconds: int
    running_stale_after_seconds: int
    scheduled_reconciliation: bool = True
    direct_failed_bridge: bool = True
    #: "retry": a run whose message was lost or whose worker died is requeued while it
    #: has attempts left; "fail": it fails (run.stale_queued / run.worker_lost).
    recovery: str = RECOVERY_FAIL
    #: tries a run gets: attempts started plus messages that never started (>= 1).
    max_attempts: int = 1

    def __post_init__(self) -> None:
        if self.recovery not in RECOVERIES:
            raise ValueError(f"recovery must be 'fail' or 'retry', not {self.recovery!r}")
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS:
            raise ValueError(f"max_attempts must be between 1 and {MAX_ATTEMPTS}")

    @property
    def retries(self) -> bool:
        """Whether a run of this type can be requeued at all."""
        return self.recovery == RECOVERY_RETRY and self.max_attempts > 1


@dataclass(frozen=True, slots=True)
class WorkerPolicy:
    """How often a worker's main process heartbeats, and when its silence means it is gone."""

    heartbeat_interval_seconds: int = DEFAULT_HEARTBEAT_INTERVAL_SECONDS
    lost_after_seconds: int = DEFAULT_LOST_AFTER_SECONDS

    def __post_init__(self) -> None:
        if self.lost_after_seconds < MIN_BEATS_BEFORE_LOST * self.heartbeat_interval_seconds:
            raise ValueError(
                f"lost_after_seconds must be at least {MIN_BEATS_BEFORE_LOST} x "
                "heartbeat_interval_seconds"
            )


@dataclass(frozen=True)
class LifecyclePolicy:
    interval_seconds: int = DEFAULT_INTERVAL_SECONDS
    batch_limit: int = DEFAULT_BATCH_LIMIT
    types: tuple[TypePolicy, ...] = ()
    workers: WorkerPolicy = WorkerPolicy()
    #: The application's tables the gate reads ([tenancy]); None: runwarden's own.
    tenancy: Tenancy | None = None
    #: Where the policy came from, for messages (``None``: built in code).
    source: str | None = None
    _by_name: dict[str, TypePolicy] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {t.name: t for t in self.types})

    @property
    def gate_tenancy(self) -> Tenancy:
        """Where the legitimacy gate reads tenants and users."""
        return self.tenancy or OWN_TENANCY

    def to_dict(self) -> dict[str, Any]:
        """The effective policy: every key with its value, defaults filled in, types by
        name -- what ``runwarden policy`` prints and :attr:`sha256` hashes. ``tenancy``
        only when set: a policy without it keeps the hash it had before there was one."""
        effective = {
            "reconciliation": {
                "batch_limit": self.batch_limit,
                "interval_seconds": self.interval_seconds,
            },
            "workers": {
                "heartbeat_interval_seconds": self.workers.heartbeat_interval_seconds,
                "lost_after_seconds": self.workers.lost_after_seconds,
            },
            "types": {
                t.name: {
                    "queued_stale_after_seconds": t.queued_stale_after_seconds,
                    "running_stale_after_seconds": t.running_stale_after_seconds,
                    "scheduled_reconciliation": t.scheduled_reconciliation,
                    "direct_failed_bridge": t.direct_failed_bridge,
                    "recovery": t.recovery,
                    "max_attempts": t.max_attempts,
                }
                for t in sorted(self.types, key=lambda t: t.name)
            },
        }
        if self.tenancy is not None:
            effective["tenancy"] = self.tenancy.to_dict()
        return effective

    def to_toml(self) -> str:
        """:meth:`to_dict` as a policy file: loading it gives this policy (same hash)."""
        lines: list[str] = []
        for section, values in self.to_dict().items():
            if section == "types":
                for name, keys in values.items():
                    # A TOML basic string takes JSON's escapes.
                    lines += ["", f"[types.{json.dumps(name)}]"]
                    lines += [f"{key} = {_toml_value(value)}" for key, value in keys.items()]
            elif section == "tenancy":
                lines += ["", "[tenancy]"]
                lines += [f"{key} = {_toml_inline(entry)}" for key, entry in values.items()]
            else:
                lines += ["", f"[{section}]"]
                lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
        return "\n".join(lines).lstrip("\n") + "\n"

    @functools.cached_property
    def sha256(self) -> str:
        """The hash of the canonical form of :meth:`to_dict` (sorted keys, no whitespace):
        every forced transition's evidence carries it, so an operator can tell which rules
        failed a run. Formatting, key order, comments and defaults written out or left to
        their default do not change it; any rule does."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def covered_type_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.types)

    def type_policy(self, type_name: str) -> TypePolicy:
        try:
            return self._by_name[type_name]
        except KeyError:
            raise KeyError(f"run type {type_name!r} is not covered by the policy") from None

    def supports(self, type_name: str) -> bool:
        return type_name in self._by_name

    def supports_scheduled_reconciliation(self, type_name: str) -> bool:
        found = self._by_name.get(type_name)
        return found is not None and found.scheduled_reconciliation

    def queued_stale_after_seconds(self, type_name: str) -> int:
        return self.type_policy(type_name).queued_stale_after_seconds

    def running_stale_after_seconds(self, type_name: str) -> int:
        return self.type_policy(type_name).running_stale_after_seconds

    def max_attempts(self, type_name: str) -> int:
        return self.type_policy(type_name).max_attempts

    def retries(self, type_name: str) -> bool:
        """Whether a lost or abandoned run of this type is requeued while attempts last."""
        found = self._by_name.get(type_name)
        return found is not None and found.retries

    def requires_direct_failed_bridge(self, type_name: str) -> bool:
        # Uncovered types have no scheduled safety net, so the bridge must handle them.
        found = self._by_name.get(type_name)
        return found is None or found.direct_failed_bridge

    def terminal_truth_path(self, type_name: str) -> str:
        """How a run of this type reaches its terminal truth, as evidence names it."""
        if self.requires_direct_failed_bridge(type_name):
            return "direct_and_scheduled"
        return "scheduled_only"

    def reconciliation_batch_limit(self) -> int:
        return self.batch_limit


def _toml_value(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string takes JSON's escapes
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _toml_inline(value: dict[str, Any]) -> str:
    items = (
        f"{key} = {_toml_inline(v) if isinstance(v, dict) else _toml_value(v)}"
        for key, v in value.items()
    )
    return "{ " + ", ".join(items) + " }"


def load_policy(path: Path | None = None) -> LifecyclePolicy:
    """The policy at ``path``; ``None`` means ``RUNWARDEN_POLICY_FILE`` or the default.

    Raises :class:`PolicyError` naming the file and the key for anything invalid.
    """
    if path is None:
        from worker.settings import get_settings

        path = get_settings().policy_file
    if path is None:
        text = resources.files("worker.lifecycle").joinpath("default_policy.toml").read_text()
        return parse_policy(text, source="default_policy.toml")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PolicyError(f"{path}: cannot read the policy file: {reason}") from exc
    return parse_policy(text, source=str(path))


def parse_policy(text: str, *, source: str = "<policy>") -> LifecyclePolicy:
    """Parse and validate policy TOML ``text``; ``source`` names it in errors."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: invalid TOML: {exc}") from exc

    def fail(key: str, problem: str) -> PolicyError:
        return PolicyError(f"{source}: {key}: {problem}")

    for key in document:
        if key not in _SECTIONS:
            raise fail(
                _quote(key),
                "unknown key (expected 'reconciliation', 'workers', 'types' or 'tenancy')",
            )

    reconciliation = _table(document, "reconciliation", "reconciliation", fail)
    for key in reconciliation:
        if key not in _RECONCILIATION_KEYS:
            raise fail(f"reconciliation.{_quote(key)}", "unknown key")
    batch_limit = _positive_int(
        reconciliation,
        "batch_limit",
        "reconciliation.batch_limit",
        fail,
        DEFAULT_BATCH_LIMIT,
        maximum=MAX_BATCH_LIMIT,
    )
    interval_seconds = _positive_int(
        reconciliation,
        "interval_seconds",
        "reconciliation.interval_seconds",
        fail,
        DEFAULT_INTERVAL_SECONDS,
        maximum=MAX_INTERVAL_SECONDS,
    )

    workers = _workers(_table(document, "workers", "workers", fail), fail)

    types_table = _table(document, "types", "types", fail)
    type_policies: list[TypePolicy] = []
    for name, entry in types_table.items():
        where = f"types.{_quote(name)}"
        if not name.strip():
            raise fail(where, "a run type name must not be blank")
        if not isinstance(entry, dict):
            raise fail(where, "must be a table")
        for key in entry:
            if key not in _REQUIRED_TYPE_KEYS and key not in _OPTIONAL_TYPE_KEYS:
                raise fail(f"{where}.{_quote(key)}", "unknown key")
        # Evaluated in the order of the keys, so the first error reported is stable.
        queued = _threshold(entry, _REQUIRED_TYPE_KEYS[0], where, fail)
        running = _threshold(entry, _REQUIRED_TYPE_KEYS[1], where, fail)
        scheduled = _boolean(
            entry, _OPTIONAL_TYPE_KEYS[0], f"{where}.{_OPTIONAL_TYPE_KEYS[0]}", fail
        )
        bridge = _boolean(entry, _OPTIONAL_TYPE_KEYS[1], f"{where}.{_OPTIONAL_TYPE_KEYS[1]}", fail)
        recovery = entry.get("recovery", RECOVERY_FAIL)
        if recovery not in RECOVERIES:
            raise fail(f"{where}.recovery", f"must be 'fail' or 'retry' (got {recovery!r})")
        max_attempts = _positive_int(
            entry, "max_attempts", f"{where}.max_attempts", fail, 1, maximum=MAX_ATTEMPTS
        )
        type_policies.append(
            TypePolicy(
                name=name,
                queued_stale_after_seconds=queued,
                running_stale_after_seconds=running,
                scheduled_reconciliation=scheduled,
                direct_failed_bridge=bridge,
                recovery=recovery,
                max_attempts=max_attempts,
            )
        )

    tenancy = parse_tenancy(document["tenancy"], fail) if "tenancy" in document else None
    return LifecyclePolicy(
        interval_seconds=interval_seconds,
        batch_limit=batch_limit,
        types=tuple(type_policies),
        workers=workers,
        tenancy=tenancy,
        source=source,
    )


def _workers(table: dict[str, Any], fail: _Fail) -> WorkerPolicy:
    for key in table:
        if key not in _WORKERS_KEYS:
            raise fail(f"workers.{_quote(key)}", "unknown key")
    interval = _positive_int(
        table,
        "heartbeat_interval_seconds",
        "workers.heartbeat_interval_seconds",
        fail,
        DEFAULT_HEARTBEAT_INTERVAL_SECONDS,
        maximum=MAX_HEARTBEAT_INTERVAL_SECONDS,
    )
    # The default loss threshold follows a longer interval, so `heartbeat_interval_seconds
    # = 30` alone is a valid policy.
    lost_after = _positive_int(
        table,
        "lost_after_seconds",
        "workers.lost_after_seconds",
        fail,
        max(DEFAULT_LOST_AFTER_SECONDS, MIN_BEATS_BEFORE_LOST * interval),
        maximum=MAX_LOST_AFTER_SECONDS,
    )
    if lost_after < MIN_BEATS_BEFORE_LOST * interval:
        raise fail(
            "workers.lost_after_seconds",
            f"must be at least {MIN_BEATS_BEFORE_LOST} x workers.heartbeat_interval_seconds "
            f"= {MIN_BEATS_BEFORE_LOST * interval} (got {lost_after})",
        )
    return WorkerPolicy(heartbeat_interval_seconds=interval, lost_after_seconds=lost_after)


def _quote(key: str) -> str:
    # TOML's own spelling of a key: bare when it can be, quoted otherwise ("inventory.sync").
    bare = key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key)
    return key if bare else json.dumps(key)


def _table(document: dict[str, Any], key: str, where: str, fail: _Fail) -> dict[str, Any]:
    value = document.get(key, {})
    if not isinstance(value, dict):
        raise fail(where, "must be a table")
    return value


def _positive_int(
    table: dict[str, Any],
    key: str,
    where: str,
    fail: _Fail,
    default: int | None,
    *,
    maximum: int,
) -> int:
    if key not in table:
        if default is None:
            raise fail(where, "missing (a positive integer number of seconds is required)")
        return default
    value = table[key]
    # bool is a subclass of int in Python: `true` must not pass as 1.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise fail(where, f"must be a positive integer (got {value!r})")
    if value > maximum:
        raise fail(where, f"must be between 1 and {maximum} (got {value!r})")
    return value


def _threshold(entry: dict[str, Any], key: str, where: str, fail: _Fail) -> int:
    return _positive_int(entry, key, f"{where}.{key}", fail, None, maximum=MAX_THRESHOLD_SECONDS)


def _boolean(table: dict[str, Any], key: str, where: str, fail: _Fail) -> bool:
    value = table.get(key, True)
    if not isinstance(value, bool):
        raise fail(where, f"must be true or false (got {value!r})")
    return value
