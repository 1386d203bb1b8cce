"""Single-claim Explain latency over gRPC on the demo model (p50/p99 over N calls).

Starts `risklens serve` as a separate process on a free loopback port (audit trail on, as in
production), warms it up, then times N sequential Explain calls from this process with the generated
client. For scale it also times, in this process, the reference library alone: shap's TreeExplainer
on the same single rows (no validation, reason codes, rationale, audit or network).

    python benchmarks/explain_latency.py [--calls 1000] [--model demo-xgb] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
from _loopback import free_port

REPO = Path(__file__).resolve().parents[1]


def percentiles(seconds: list[float]) -> tuple[float, float, float]:
    ms = np.asarray(seconds) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), float(ms.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--model", default="demo-xgb")
    parser.add_argument("--methods", default="shap", help="comma-separated methods to request")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args()

    from risklens.registry import ModelRegistry, claims_frame, frame_to_claims
    from risklens.v1 import risklens_pb2 as pb
    from risklens.v1 import risklens_pb2_grpc as pb_grpc
    from risklens.wire import value_to_proto

    model = ModelRegistry.from_directory(REPO / "models").get(args.model)
    claims = frame_to_claims(model.background)
    requests = [pb.ExplainRequest(model=args.model, claim_id=f"bench-{i}", methods=args.methods.split(","),
                                  features={k: value_to_proto(v) for k, v in claims[i % len(claims)].items()})
                for i in range(args.calls)]
    port = free_port()
    env = {**os.environ, "RISKLENS_AUDIT_HMAC_KEY": os.environ.get("RISKLENS_AUDIT_HMAC_KEY", "bench-key")}
    with tempfile.TemporaryDirectory() as data_dir:
        server = subprocess.Popen(
            [sys.executable, "-m", "risklens.cli", "serve", "--models", str(REPO / "models"), "--port", str(port),
             "--data-dir", data_dir], env=env, stderr=subprocess.DEVNULL)
        try:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            grpc.channel_ready_future(channel).result(timeout=60)
            stub = pb_grpc.RiskLensStub(channel)
            for request in requests[:50]:
                stub.Explain(request)
            times = []
            for request in requests:
                start = time.perf_counter()
                stub.Explain(request)
                times.append(time.perf_counter() - start)
        finally:
            server.terminate()
            server.wait(timeout=30)

    shap_times = []
    if model.kind == "tree":
        import shap

        explainer = shap.TreeExplainer(model.estimator, feature_perturbation="tree_path_dependent")
        matrix = model.model_matrix(claims_frame(model.manifest, claims))
        for i in range(args.calls):
            row = matrix[i % len(matrix)][None, :]
            start = time.perf_counter()
            explainer.shap_values(row, check_additivity=False)
            shap_times.append(time.perf_counter() - start)

    p50, p99, mean = percentiles(times)
    lines = [
        f"# Explain latency, {args.model}, methods={args.methods}",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M UTC}; {platform.node()}; {os.cpu_count()} cores; "
        f"{platform.processor() or platform.machine()}; python {platform.python_version()}",
        "",
        "| what | calls | p50 ms | p99 ms | mean ms |",
        "|---|---|---|---|---|",
        f"| risklens Explain over gRPC (validation, SHAP, reason codes, rationale, durable audit) | {args.calls} "
        f"| {p50:.2f} | {p99:.2f} | {mean:.2f} |",
    ]
    if shap_times:
        s50, s99, smean = percentiles(shap_times)
        lines.append(f"| shap TreeExplainer alone, one row, in process | {args.calls} | {s50:.2f} | {s99:.2f} "
                     f"| {smean:.2f} |")
        lines += ["", f"ratio p50 risklens / shap-alone: {p50 / s50:.1f}x"]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
