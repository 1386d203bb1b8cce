"""Batch audit runs over whole claims tables, and the audit report built from them.

Names are imported on first use (PEP 562): a worker process that only explains chunks
(``risklens.reports._worker``) does not pay for the report's plotting stack or the demo's data
generator at start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from risklens.reports._demo import write_demo_report
    from risklens.reports._report import build_report, templates_dir
    from risklens.reports._runner import AuditRunConfig, AuditRunResult, run_audit, run_summary
    from risklens.reports._table import ClaimsTable, read_claims_table

# Claims per chunk, the unit of checkpointing: each chunk costs ~35 ms on top of its claims (three
# fsyncs, two Parquet files, one audit transaction, the per-call setup of the model matrix, XGBoost
# and the kernels), ~70 us a claim at 500 and ~17 us at 2,000; a killed run redoes at most one
# chunk per worker. Here, not in ``_runner``, so that the CLI can show it without importing the stack.
DEFAULT_CHUNK_SIZE = 2000

_HOMES = {
    "write_demo_report": "_demo",
    "build_report": "_report", "templates_dir": "_report",
    "AuditRunConfig": "_runner", "AuditRunResult": "_runner", "run_audit": "_runner", "run_summary": "_runner",
    "ClaimsTable": "_table", "read_claims_table": "_table",
}

__all__ = sorted([*_HOMES, "DEFAULT_CHUNK_SIZE"])


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
