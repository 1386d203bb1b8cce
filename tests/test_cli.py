"""The `risklens` command line against a real server process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from loopback import free_port

RISKLENS = [sys.executable, "-m", "risklens.cli"]


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*RISKLENS, *args], capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"risklens {' '.join(args)} failed: {result.stderr}")
    return result


@pytest.fixture(scope="module")
def served(demo_models_dir: Path, tmp_path_factory):
    """`risklens serve` as its own process on a free loopback port."""
    port = free_port()
    data_dir = tmp_path_factory.mktemp("cli-server")
    process = subprocess.Popen([*RISKLENS, "serve", "--models", str(demo_models_dir), "--port", str(port),
                                "--data-dir", str(data_dir)], stderr=subprocess.PIPE, text=True,
                               env={**os.environ})
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
    yield f"127.0.0.1:{port}", process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_help_explains_every_command():
    top = run_cli("--help").stdout
    for command in ("serve", "explain", "models"):
        assert command in top
    explain_help = run_cli("explain", "--help").stdout
    assert "--json" in explain_help and "--target" in explain_help and "--methods" in explain_help


def test_models_list(demo_models_dir: Path):
    out = run_cli("models", "list", "--models", str(demo_models_dir)).stdout
    assert "demo-xgb" in out and "demo-logreg" in out and "xgboost" in out


def test_serve_takes_its_settings_from_the_environment(demo_models_dir: Path, tmp_path: Path):
    """RISKLENS_PORT / RISKLENS_MODELS_DIR / RISKLENS_DATA_DIR apply when the options are not given."""
    import grpc

    from risklens.v1 import risklens_pb2 as pb
    from risklens.v1 import risklens_pb2_grpc as pb_grpc

    port = free_port()
    env = {**os.environ, "RISKLENS_PORT": str(port), "RISKLENS_MODELS_DIR": str(demo_models_dir),
           "RISKLENS_DATA_DIR": str(tmp_path / "data")}
    process = subprocess.Popen([*RISKLENS, "serve"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            listed = pb_grpc.RiskLensStub(channel).ListModels(pb.ListModelsRequest())
        assert sorted(m.ref.name for m in listed.models) == ["demo-logreg", "demo-xgb"]
        assert (tmp_path / "data" / "audit.db").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    listed_here = subprocess.run([*RISKLENS, "models", "list"], cwd=tmp_path, env=env, capture_output=True,
                                 text=True, timeout=120)
    assert listed_here.returncode == 0 and "demo-xgb" in listed_here.stdout, listed_here.stderr


def test_explain_json_uses_proto_field_names(served, examples_dir: Path):
    target, _ = served
    out = run_cli("explain", "--target", target, "--model", "demo-xgb",
                  "--input", str(examples_dir / "repeat-claimant.json"), "--claim-id", "CLI-1", "--json").stdout
    response = json.loads(out)
    for field in ("score", "raw_score", "base_value", "contributions", "reason_codes", "rationale", "model",
                  "receipt_id"):
        assert field in response, field
    assert response["claim_id"] == "CLI-1"
    total = response["base_value"] + sum(c["shap"] for c in response["contributions"])
    assert total == pytest.approx(response["raw_score"], abs=1e-6)
    assert response["contributions"][0]["feature"] and "value" in response["contributions"][0]


def test_explain_readable_output(served, examples_dir: Path):
    target, _ = served
    out = run_cli("explain", "--target", target, "--model", "demo-logreg",
                  "--input", str(examples_dir / "early-claim-no-witness.json")).stdout
    assert "score" in out and "rationale:" in out and "[EC01]" in out


def test_explain_error_prints_status_and_exits_nonzero(served, tmp_path: Path, examples_dir: Path):
    target, _ = served
    claim = json.loads((examples_dir / "routine-claim.json").read_text())
    claim["claim_amount"] = "a lot"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(claim))
    result = run_cli("explain", "--target", target, "--model", "demo-xgb", "--input", str(bad), check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("INVALID_ARGUMENT:") and "claim_amount" in result.stderr
    missing = run_cli("explain", "--target", target, "--model", "nope", "--input", str(bad), check=False)
    assert missing.returncode == 1 and missing.stderr.startswith("NOT_FOUND:")


def test_serve_stops_gracefully_on_sigterm(demo_models_dir: Path, tmp_path: Path):
    port = free_port()
    process = subprocess.Popen([*RISKLENS, "serve", "--models", str(demo_models_dir), "--port", str(port),
                                "--data-dir", str(tmp_path)], stderr=subprocess.PIPE, text=True)
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert "stopped" in process.stderr.read()
