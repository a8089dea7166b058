"""The reconciler, split by concern: ``options`` (what a call covers), ``results`` (what
it reports), ``assessment`` (the Python reference), ``explain``, ``passes`` (one per
backend) and ``reconciler`` (the entry points, which pick the pass once per call)."""

from worker.lifecycle.reconciler.assessment import Assessment
from worker.lifecycle.reconciler.explain import RunExplanation
from worker.lifecycle.reconciler.options import (
    ON_DEMAND_SOURCE,
    SCHEDULED_SOURCE,
    ReconcileOptions,
)
from worker.lifecycle.reconciler.reconciler import OperationLifecycleReconciler
from worker.lifecycle.reconciler.results import DrainResult, ReconcileChange, ReconcileResult

__all__ = [
    "ON_DEMAND_SOURCE",
    "SCHEDULED_SOURCE",
    "Assessment",
    "DrainResult",
    "OperationLifecycleReconciler",
    "ReconcileChange",
    "ReconcileOptions",
    "ReconcileResult",
    "RunExplanation",
]
