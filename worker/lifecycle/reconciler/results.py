"""What a pass reports: its changes and sums, exactly the contract's shape."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from models import RunOutcome, RunStatus
from worker.lifecycle.freshness import OperationRunFreshnessState

FORCE_FAIL = "force_fail"
REQUEUE = "requeue"
#: Where each action leaves the run.
_AFTER = {
    FORCE_FAIL: {
        "status": RunStatus.COMPLETED.value,
        "outcome": RunOutcome.FAILED.value,
        "freshness_state": OperationRunFreshnessState.RECONCILED_FAILED.value,
    },
    REQUEUE: {
        "status": RunStatus.QUEUED.value,
        "outcome": RunOutcome.PENDING.value,
        "freshness_state": OperationRunFreshnessState.FRESH.value,
    },
}


@dataclass(frozen=True, slots=True)
class ReconcileChange:
    applied: bool
    operation_run_id: int
    type: str
    before: dict[str, str]
    reason_code: str
    reason_message: str
    evidence: dict[str, Any]
    #: "force_fail" (the run completes as failed) or "requeue" (back to queued)
    action: str = FORCE_FAIL

    def to_dict(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "operation_run_id": self.operation_run_id,
            "type": self.type,
            "action": self.action,
            "before": dict(self.before),
            "after": dict(_AFTER[self.action]),
            "reason_code": self.reason_code,
            "reason_message": self.reason_message,
            "evidence": self.evidence,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReconcileChange:
        return cls(
            applied=bool(data["applied"]),
            operation_run_id=int(data["operation_run_id"]),
            type=str(data["type"]),
            before=dict(data["before"]),
            reason_code=str(data["reason_code"]),
            reason_message=str(data["reason_message"]),
            evidence=dict(data["evidence"]),
            action=str(data.get("action", FORCE_FAIL)),
        )


class ReconcileResult:
    """One pass's result (the contract's shape through :meth:`to_dict`).

    The changes are held either as objects or as the JSON array text the database built
    (PostgreSQL passes assess and describe their changes in SQL); the text is parsed only
    if someone asks for the objects, and :meth:`changes_json_items` hands it on as is.
    """

    __slots__ = ("_changes", "_changes_json", "candidates", "reconciled", "requeued", "skipped")

    def __init__(
        self,
        candidates: int,
        reconciled: int,
        skipped: int,
        changes: Sequence[ReconcileChange] = (),
        *,
        changes_json: str | None = None,
        requeued: int = 0,
    ) -> None:
        self.candidates = candidates
        #: applied changes, requeues included
        self.reconciled = reconciled
        self.skipped = skipped
        #: how many of the applied changes were requeues (their messages still to publish)
        self.requeued = requeued
        self._changes: tuple[ReconcileChange, ...] | None = (
            None if changes_json is not None else tuple(changes)
        )
        self._changes_json = changes_json

    @property
    def changes(self) -> tuple[ReconcileChange, ...]:
        if self._changes is None:
            items = json.loads(self._changes_json or "[]")
            self._changes = tuple(ReconcileChange.from_dict(item) for item in items)
        return self._changes

    def changes_json_items(self) -> str:
        """The changes as comma-separated JSON objects (a JSON array without brackets)."""
        if self._changes is None and self._changes_json is not None:
            return self._changes_json.strip()[1:-1]
        return ",".join(json.dumps(c.to_dict()) for c in self.changes)

    def to_dict(self) -> dict[str, Any]:
        """Exactly the contract's shape."""
        return {
            "candidates": self.candidates,
            "reconciled": self.reconciled,
            "skipped": self.skipped,
            "changes": [change.to_dict() for change in self.changes],
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(candidates={self.candidates}, "
            f"reconciled={self.reconciled}, skipped={self.skipped})"
        )


class DrainResult(ReconcileResult):
    """The sums of a drain's passes, all their changes (as the database's JSON), and how
    many passes ran."""

    __slots__ = ("passes",)

    def __init__(
        self,
        candidates: int,
        reconciled: int,
        skipped: int,
        *,
        changes_json: str,
        passes: int,
        requeued: int = 0,
    ) -> None:
        super().__init__(
            candidates, reconciled, skipped, changes_json=changes_json, requeued=requeued
        )
        self.passes = passes

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "passes": self.passes}
