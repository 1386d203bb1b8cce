"""Batch audit runs over whole claims tables, and the audit report built from them."""

from risklens.reports._demo import write_demo_report
from risklens.reports._report import build_report, templates_dir
from risklens.reports._runner import AuditRunConfig, AuditRunResult, run_audit, run_summary
from risklens.reports._table import ClaimsTable, read_claims_table

__all__ = ["AuditRunConfig", "AuditRunResult", "ClaimsTable", "build_report", "read_claims_table", "run_audit",
           "run_summary", "templates_dir", "write_demo_report"]
