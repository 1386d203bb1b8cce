"""The demo's audit run: a synthetic claims table through the demo model, ending in report.html."""

from __future__ import annotations

from pathlib import Path

from risklens.datasets import generate_claims
from risklens.errors import RiskLensError
from risklens.reports._runner import AuditRunConfig, run_audit
from risklens.settings import Settings

DEMO_CLAIMS = 2000
DEMO_SEED = 11


def write_demo_report(models_dir: Path, out: Path, *, model: str = "demo-xgb", audit_url: str | None = None,
                      progress: bool = False) -> Path:
    """Explain ``DEMO_CLAIMS`` fresh synthetic claims with ``model`` into ``out``; returns the report path.

    The claims table (with its ``fraud`` label) is written to ``out/claims.csv`` first, so the run
    is the same one ``risklens audit run --data out/claims.csv --label fraud`` performs.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    X, y = generate_claims(DEMO_CLAIMS, seed=DEMO_SEED)
    data = out / "claims.csv"
    if not data.exists():  # rewriting it would change its hash, and a rerun would refuse to resume
        X.assign(fraud=y).to_csv(data, index=False)
    result = run_audit(AuditRunConfig(model=model, data=data, out=out / "run", models_dir=Path(models_dir),
                                      label_column="fraud", sample=100, audit_url=audit_url, progress=progress),
                       Settings())
    if result.report_path is None:
        raise RiskLensError(f"the audit run in {out / 'run'} wrote no report")
    return result.report_path
