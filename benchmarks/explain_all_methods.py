"""Explain latency with every method, and cross-method agreement on the public fraud_oracle claims.

Registers an XGBoost model on fraud_oracle (4,000 training claims, 2,000 held out, through
``register_model`` with its default settings), copies the bundled demo models beside it, starts
``risklens serve`` as a separate process (audit trail on), and times sequential single-claim Explain
calls over gRPC: SHAP only, then ``methods=["all"]``. The fraud_oracle responses with all methods
also give the agreement rates between SHAP, LIME and the EBM surrogate (top-3, threshold 0.5).

    python benchmarks/explain_all_methods.py [--calls 300]   # writes benchmarks/results/explain_all_methods.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from _loopback import free_port

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MPLCONFIGDIR", str(ROOT / ".cache" / "matplotlib"))
os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))


def register_fraud_oracle(directory: Path):
    """XGBoost on fraud_oracle through the registration step; returns the held-out claims not used anywhere."""
    import xgboost as xgb

    from risklens.datasets import load_shared
    from risklens.registry import Manifest, infer_schema
    from risklens.registry.registration import register_model
    from risklens.registry.schema import encode_frame

    X, y = load_shared("fraud_oracle")
    order = np.random.default_rng(0).permutation(len(X))
    train, hold, unseen = order[:4000], order[4000:6000], order[6000:]
    features = infer_schema(X)
    matrix = encode_frame(Manifest(name="_", version="0", framework="xgboost", artifact="_", sha256="_",
                                   features=features), X.iloc[train])
    estimator = xgb.XGBClassifier(n_estimators=150, max_depth=4, learning_rate=0.1, random_state=0, n_jobs=1)
    estimator.fit(matrix, y.iloc[train].to_numpy())
    start = time.perf_counter()
    register_model(directory, estimator, X.iloc[train], name="fraud-oracle-xgb", version="1.0.0",
                   holdout=(X.iloc[hold], y.iloc[hold]), features=features, threshold=0.2, seed=0,
                   description="fraud_oracle XGBoost (benchmark)")
    return X.iloc[unseen], time.perf_counter() - start


def timed(stub, requests) -> tuple[list[float], list]:
    times, responses = [], []
    for request in requests:
        start = time.perf_counter()
        responses.append(stub.Explain(request, timeout=120))
        times.append(time.perf_counter() - start)
    return times, responses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()

    from risklens.datasets import generate_claims
    from risklens.registry import frame_to_claims
    from risklens.v1 import risklens_pb2 as pb
    from risklens.v1 import risklens_pb2_grpc as pb_grpc
    from risklens.wire import value_to_proto

    rows, agreement_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        for name in ("demo-xgb", "demo-logreg"):
            shutil.copytree(ROOT / "models" / name, models / name)
        unseen, registration_s = register_fraud_oracle(models / "fraud-oracle-xgb")
        synthetic, _ = generate_claims(args.calls, seed=4242)
        claims = {"demo-xgb": frame_to_claims(synthetic), "demo-logreg": frame_to_claims(synthetic),
                  "fraud-oracle-xgb": frame_to_claims(unseen.iloc[:args.calls])}
        port = free_port()
        env = {**os.environ, "RISKLENS_AUDIT_HMAC_KEY": os.environ.get("RISKLENS_AUDIT_HMAC_KEY", "bench-key")}
        server = subprocess.Popen(
            [sys.executable, "-m", "risklens.cli", "serve", "--models", str(models), "--port", str(port),
             "--data-dir", str(Path(tmp) / "var")], env=env, stderr=subprocess.DEVNULL)
        try:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            grpc.channel_ready_future(channel).result(timeout=120)
            stub = pb_grpc.RiskLensStub(channel)
            for model, model_claims in claims.items():
                for methods in (["shap"], ["all"]):
                    requests = [pb.ExplainRequest(model=model, claim_id=f"bench-{i}", methods=methods,
                                                  features={k: value_to_proto(v) for k, v in claim.items()})
                                for i, claim in enumerate(model_claims)]
                    timed(stub, requests[:10])  # warm-up: builds the explainers
                    times, responses = timed(stub, requests)
                    ms = np.asarray(times) * 1e3
                    rows.append(f"| {model} | {','.join(methods)} | {len(times)} | {np.percentile(ms, 50):.1f} | "
                                f"{np.percentile(ms, 99):.1f} | {ms.mean():.1f} |")
                    if methods == ["all"]:
                        agreement_rows.append((model, responses))
        finally:
            server.terminate()
            server.wait(timeout=30)

    agreement_lines = []
    for model, responses in agreement_rows:
        pairs: dict[str, list[float]] = {}
        for r in responses:
            for p in r.agreement.pairs:
                pairs.setdefault(f"{p.method_a}-{p.method_b}", []).append(p.agreement)
        flagged = np.mean([r.agreement.disagree for r in responses])
        all_three = np.mean([r.agreement.summary.startswith("All three") for r in responses])
        agreement_lines.append(
            f"| {model} | {len(responses)} | " + " | ".join(f"{np.mean(pairs[k]):.2f}" for k in
                                                          ("shap-lime", "shap-ebm", "lime-ebm"))
            + f" | {all_three:.0%} | {flagged:.0%} | {responses[0].ebm.fidelity_r2:.2f} |")

    text = "\n".join([
        "# Explain with every method: latency and cross-method agreement",
        "",
        f"Sequential single-claim Explain calls over gRPC to `risklens serve` (separate process, audit on). "
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs; other jobs may share the CPUs. "
        f"fraud_oracle model registration (PDP grids, EBM surrogate, permutation importance): "
        f"{registration_s:.1f} s.",
        "",
        "| model | methods | calls | p50 ms | p99 ms | mean ms |",
        "|---|---|---:|---:|---:|---:|",
        *rows,
        "",
        "## Agreement (top-3 rank agreement, 0..1; flagged: some pair below 0.5)",
        "",
        "| model | claims | SHAP-LIME | SHAP-EBM | LIME-EBM | all three agree on the top driver | flagged | "
        "surrogate R^2 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *agreement_lines,
    ]) + "\n"
    (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks" / "results" / "explain_all_methods.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
