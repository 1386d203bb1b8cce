"""``make demo``: serve the bundled demo models on loopback and explain the example claims over gRPC.

Starts a real server on a free 127.0.0.1 port, sends every ``examples/*.json`` claim to each demo model
with the generated client, prints each explanation readably, shows what a bad claim gets back, runs a
batch audit of 2,000 fresh synthetic claims into an HTML report, signs a checkpoint of the audit chain,
exports the whole trail over the ExportAudit RPC, verifies the export offline, and stops the server.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path

import grpc

from risklens.audit import load_or_create_signing_key, public_key_hex, verify_export, write_export
from risklens.cli import format_explanation
from risklens.reports import write_demo_report
from risklens.server import start_server
from risklens.settings import Settings
from risklens.v1 import risklens_pb2 as pb
from risklens.v1 import risklens_pb2_grpc as pb_grpc
from risklens.wire import value_to_proto

log = logging.getLogger("risklens.demo")
REPO = Path(__file__).resolve().parents[2]
DEMO_MODELS = ("demo-xgb", "demo-logreg")


def _request(model: str, claim: dict, claim_id: str) -> pb.ExplainRequest:
    return pb.ExplainRequest(model=model, claim_id=claim_id,
                             features={k: value_to_proto(v) for k, v in claim.items()})


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if "RISKLENS_AUDIT_HMAC_KEY" not in os.environ:
        # The demo models' audit policy hashes one field; a fixed key is fine for a demo, never for production.
        os.environ["RISKLENS_AUDIT_HMAC_KEY"] = "risklens-demo-only-hmac-key"
    settings = Settings(models_dir=REPO / "models", data_dir=REPO / "var" / "demo", host="127.0.0.1", port=0)
    running = start_server(settings)
    print(f"risklens demo: serving {', '.join(DEMO_MODELS)} on {running.target}\n")
    examples = sorted((REPO / "examples").glob("*.json"))
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = pb_grpc.RiskLensStub(channel)
            for path in examples:
                claim = json.loads(path.read_text())
                for model in DEMO_MODELS:
                    response = stub.Explain(_request(model, claim, path.stem), timeout=30)
                    print(f"=== {path.name} -> {model}")
                    print(format_explanation(response), end="\n\n")
            bad = {**json.loads(examples[0].read_text()), "fault": "the weather"}
            try:
                stub.Explain(_request(DEMO_MODELS[0], bad, "bad-claim"), timeout=30)
            except grpc.RpcError as err:
                print(f"=== a claim with an unknown category gets: {err.code().name}: {err.details()}\n")
            report = write_demo_report(settings.models_dir, settings.data_dir / "audit-run",
                                       audit_url=settings.resolved_audit_url(), progress=True)
            print(f"=== batch audit report for demo-xgb: {report}\n")
            print(_export_and_verify(stub, running, settings))
    finally:
        running.stop()
    print(f"server stopped; audit trail in {settings.resolved_audit_url()}")
    return 0


def _export_and_verify(stub: pb_grpc.RiskLensStub, running, settings: Settings) -> str:  # noqa: ANN001
    """Sign the chain head, export the whole trail over gRPC, verify the export without the database."""
    key = load_or_create_signing_key(settings.resolved_signing_key_path())
    running.service.audit.checkpoint(key)
    export_dir = settings.data_dir / "audit-export"
    shutil.rmtree(export_dir, ignore_errors=True)
    items = stub.ExportAudit(pb.ExportAuditRequest(), timeout=120)
    manifest = write_export((getattr(i, i.WhichOneof("item")) for i in items), export_dir, "jsonl")
    report = verify_export(export_dir, trusted_public_key=bytes.fromhex(public_key_hex(key)))
    return (f"=== audit trail: {manifest.count} records exported to {export_dir}\n"
            f"    offline verify: {report.summary()}\n")


if __name__ == "__main__":
    sys.exit(main())
