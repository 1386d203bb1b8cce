"""Batch audit run throughput: the whole pipeline vs shap's TreeExplainer alone, on fraud_oracle.

Trains a 500-tree XGBoost (depth 4) on fraud_oracle, then on the same rows measures claims/s of

* shap.TreeExplainer(model).shap_values on the model matrix (attributions only), and
* ``run_audit`` (table read + validation, SHAP via the service's engine, reason codes, rationale,
  Parquet output, audit records in SQLite, checkpoints) with 1 and 2 local workers, SHAP only
  (no extra methods, no report), timed end to end including worker start-up.

    python benchmarks/audit_run.py [--rows 4000] [--trees 500] [--out benchmarks/results/audit_run.md]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("MPLCONFIGDIR", str(REPO / ".cache" / "matplotlib"))
os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".cache" / "numba"))


def train(models_dir: Path, trees: int):
    import xgboost as xgb

    from risklens.datasets import load_shared
    from risklens.registry import infer_schema, load_model_dir, write_model_dir
    from risklens.registry.manifest import Manifest
    from risklens.registry.schema import encode_frame

    X, y = load_shared("fraud_oracle")
    features = infer_schema(X)
    schema = Manifest(name="_", version="0", framework="xgboost", artifact="_", sha256="_", features=features)
    model = xgb.XGBClassifier(n_estimators=trees, max_depth=4, learning_rate=0.05, n_jobs=2, random_state=0)
    model.fit(encode_frame(schema, X), y.to_numpy())
    write_model_dir(models_dir / "fraud-oracle", model, name="fraud-oracle", version="1.0.0", features=features,
                    background=X, threshold=0.15)
    return load_model_dir(models_dir / "fraud-oracle")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4000, help="fraud_oracle rows to explain (max 15420)")
    parser.add_argument("--trees", type=int, default=500)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "audit_run.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import pandas as pd
    import shap

    from risklens.datasets.shared import shared_data_dir
    from risklens.reports import AuditRunConfig, run_audit

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model = train(tmp_path / "models", args.trees)
        data = tmp_path / "claims.csv"
        pd.read_csv(shared_data_dir() / "fraud_oracle.csv").iloc[:args.rows].to_csv(data, index=False)
        X = pd.read_csv(data).drop(columns=["FraudFound_P", "PolicyNumber", "RepNumber"])
        matrix = model.model_matrix(X[model.manifest.feature_names])

        explainer = shap.TreeExplainer(model.estimator, feature_perturbation="tree_path_dependent")
        started = time.perf_counter()
        explainer.shap_values(matrix, check_additivity=False)
        shap_rate = len(matrix) / (time.perf_counter() - started)

        rows = [("shap.TreeExplainer alone (attributions only)", "-", shap_rate, None, None)]
        for workers in (1, 2):
            out = tmp_path / f"run-{workers}"
            started = time.perf_counter()
            result = run_audit(AuditRunConfig(
                model="fraud-oracle", data=data, out=out, models_dir=tmp_path / "models", workers=workers,
                methods=(), audit_url=f"sqlite:///{tmp_path / f'audit-{workers}.db'}",
                progress=False, report=False))
            wall = time.perf_counter() - started
            engine = pd.read_parquet(result.claims_path, columns=["shap_engine"])["shap_engine"].iloc[0]
            rows.append((f"risklens audit run, {workers} local worker(s), SHAP engine `{engine}`", str(workers),
                         result.explained / wall, result.claims_per_second, result.warm_claims_per_second))

    lines = [
        "# Batch audit run throughput (fraud_oracle)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()} with {os.cpu_count()} cores "
        f"(CPython {platform.python_version()}), `python benchmarks/audit_run.py --rows {args.rows} "
        f"--trees {args.trees}`. XGBoost, {args.trees} trees of depth 4, {args.rows:,} fraud_oracle claims "
        f"({matrix.shape[1]} model columns). The pipeline row includes table reading, schema validation, SHAP, "
        "reason codes, rationale, Parquet output and SQLite audit records (WAL, synchronous=FULL), timed end to "
        "end (worker start-up included); 'explain phase' excludes reading the table and merging the output; "
        "'warm' is the rate from the first finished chunk to the last (worker start-up, imports and model "
        "load left out). Ratios are to shap's rows/s. No GPU on this machine.",
        "",
        "| what | workers | claims/s end to end | vs TreeExplainer | explain phase | warm | warm vs TreeExplainer |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, workers, rate, phase, warm in rows:
        cells = ["", "", ""] if phase is None else [f"{phase:,.0f}", f"{warm:,.0f}", f"{warm / shap_rate:.2f}x"]
        lines.append(f"| {label} | {workers} | {rate:,.0f} | {rate / shap_rate:.2f}x | {' | '.join(cells)} |")
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)


if __name__ == "__main__":
    main()
