"""What one reconciliation covers: the options, validated before anything is read."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from worker.errors import InvalidOptionsError
from worker.lifecycle.policy import MAX_BATCH_LIMIT, LifecyclePolicy

SCHEDULED_SOURCE = "scheduled_reconciler"
ON_DEMAND_SOURCE = "on_demand_reconciler"


class ReconcileOptions(BaseModel):
    """What one reconciliation covers. Invalid values raise :class:`InvalidOptionsError`
    naming the option -- before anything is read or written."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    #: Run types to reconcile; ``None`` means every covered type.
    types: Annotated[list[str], Field(min_length=1)] | None = None
    tenant_ids: list[Annotated[int, Field(gt=0)]] = Field(default_factory=list)
    workspace_ids: list[Annotated[int, Field(gt=0)]] = Field(default_factory=list)
    #: Runs per pass; ``None`` means the policy's batch limit. Capped at 500.
    limit: Annotated[int, Field(ge=1)] | None = None
    dry_run: bool = False
    source: Annotated[str, Field(min_length=1, max_length=64)] = SCHEDULED_SOURCE

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise InvalidOptionsError(_describe(exc)) from exc

    @field_validator("types")
    @classmethod
    def _types_not_blank(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            for index, name in enumerate(value):
                if not name.strip():
                    raise ValueError(f"item {index} is blank; a run type name is required")
            value = list(dict.fromkeys(value))  # keep order, drop repeats
        return value

    @field_validator("limit")
    @classmethod
    def _cap_limit(cls, value: int | None) -> int | None:
        # Contract: above 500 is capped, not refused -- a pass is bounded whatever is asked.
        return min(value, MAX_BATCH_LIMIT) if value is not None else None

    @classmethod
    def coerce(cls, options: ReconcileOptions | Mapping[str, Any] | None) -> ReconcileOptions:
        if options is None:
            return cls()
        if isinstance(options, ReconcileOptions):
            return options
        if not isinstance(options, Mapping):
            raise InvalidOptionsError(f"reconcile options must be a mapping, not {options!r}")
        return cls(**{str(k): v for k, v in options.items()})


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:3]:
        loc = "".join(
            f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p))
            for i, p in enumerate(error["loc"])
        )
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown option"
        parts.append(f"{loc or 'options'}: {message} (got {error.get('input')!r})")
    return "invalid reconcile option " + "; ".join(parts)


def scan_types(policy: LifecyclePolicy, options: ReconcileOptions) -> tuple[str, ...]:
    """The types a pass scans: the asked ones (each must be covered) or every covered
    type, less those opted out of scheduled reconciliation (the seed's rule)."""
    if options.types is None:
        names: Sequence[str] = policy.covered_type_names()
    else:
        uncovered = [t for t in options.types if not policy.supports(t)]
        if uncovered:
            covered = ", ".join(policy.covered_type_names()) or "none"
            raise InvalidOptionsError(
                f"invalid reconcile option types: {', '.join(map(repr, uncovered))} "
                f"not covered by the lifecycle policy (covered: {covered})"
            )
        names = options.types
    return tuple(t for t in names if policy.supports_scheduled_reconciliation(t))
