"""The audit trail through the real server and CLI: receipts, exports, replay, kill -9 during streams."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from loopback import free_port
from typer.testing import CliRunner

from risklens.audit import RedactionPolicy, open_store, verify_export, write_export
from risklens.rationale import WITHHELD
from risklens.cli import app
from risklens.v1 import risklens_pb2, risklens_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _request(claim: dict[str, Any], claim_id: str) -> risklens_pb2.ExplainRequest:
    from risklens.wire import value_to_proto

    return risklens_pb2.ExplainRequest(model="demo-xgb", claim_id=claim_id,
                                       features={k: value_to_proto(v) for k, v in claim.items()})


@pytest.fixture(scope="module")
def claims() -> list[dict[str, Any]]:
    from risklens.datasets import generate_claims

    frame, _ = generate_claims(200, 23)
    return [frame.iloc[i].to_dict() for i in range(len(frame))]


@pytest.fixture(scope="module")
def audited_server(grpc_server_factory: Callable[..., Any], demo_models_dir: Path, claims: list[dict[str, Any]],
                   tmp_path_factory: pytest.TempPathFactory) -> Any:
    return grpc_server_factory(demo_models_dir, data_dir=tmp_path_factory.mktemp("audited"))


def test_every_explanation_has_a_receipt(audited_server: Any, claims: list[dict[str, Any]]) -> None:
    from risklens.rationale import format_value

    responses = [audited_server.stub.Explain(_request(claims[i], f"claim-{i}")) for i in range(5)]
    policy = RedactionPolicy.from_manifest(audited_server.running.service.registry.get("demo-xgb").manifest.audit)
    for claim, response in zip(claims, responses):
        receipt = audited_server.stub.GetReceipt(risklens_pb2.GetReceiptRequest(receipt_id=response.receipt_id))
        # As returned, with the hashed claimant age withheld wherever a text shows it.
        expected = policy.redact_explanation(response)
        shown, withheld = f"age ({format_value(claim['claimant_age'])})", f"age ({WITHHELD})"
        for code in expected.reason_codes:
            code.text = code.text.replace(shown, withheld)
        expected.rationale = expected.rationale.replace(shown, withheld)
        assert receipt.explanation == expected
        assert receipt.model == response.model and receipt.sequence >= 1
        assert receipt.input["claimant_age"].text.startswith("hmac-sha256:")  # the demo policy hashes it
    with pytest.raises(grpc.RpcError) as caught:
        audited_server.stub.GetReceipt(risklens_pb2.GetReceiptRequest(receipt_id="0190f0f0-0000-7000-8000-000000000000"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_export_audit_stream_verifies_offline(audited_server: Any, claims: list[dict[str, Any]],
                                              tmp_path: Path) -> None:
    batch = risklens_pb2.ExplainBatchRequest(model="demo-xgb", claims=[
        risklens_pb2.Claim(claim_id=f"batch-{i}", features=_request(claims[i], "").features) for i in range(10, 16)])
    answered = audited_server.stub.ExplainBatch(batch)
    items = list(audited_server.stub.ExportAudit(risklens_pb2.ExportAuditRequest(model="demo-xgb")))
    manifest = items[-1].manifest
    records = [item.record for item in items[:-1]]
    assert {item.result.receipt_id for item in answered.items} <= {r.receipt_id for r in records}
    assert manifest.count == len(records) and manifest.chain_head == records[-1].record_hash
    write_export((r for r in [*records, manifest]), tmp_path / "export", "parquet")
    report = verify_export(tmp_path / "export")
    assert report.ok and report.bodies_checked == len(records), report.summary()


def test_audit_cli_commands(audited_server: Any, claims: list[dict[str, Any]], tmp_path: Path,
                            demo_models_dir: Path) -> None:
    response = audited_server.stub.Explain(_request(claims[30], "cli-claim"))
    data = ["--data-dir", str(audited_server.data_dir)]

    shown = runner.invoke(app, ["audit", "show", response.receipt_id, *data])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["explanation"]["claim_id"] == "cli-claim"

    claim_file = tmp_path / "claim.json"
    claim_file.write_text(json.dumps(claims[30]))
    replayed = runner.invoke(app, ["audit", "replay", response.receipt_id, "--models", str(demo_models_dir),
                                   "--input", str(claim_file), *data])
    assert replayed.exit_code == 0, replayed.output
    assert "IDENTICAL" in replayed.output
    # Without the original claim, a receipt whose fields were hashed cannot be replayed.
    refused = runner.invoke(app, ["audit", "replay", response.receipt_id, "--models", str(demo_models_dir), *data])
    assert refused.exit_code == 2 and "claimant_age" in refused.output

    signed = runner.invoke(app, ["audit", "checkpoint", *data])
    assert signed.exit_code == 0, signed.output
    public_key = signed.output.split("public key ")[1].split()[0]
    verified = runner.invoke(app, ["audit", "verify", "--public-key", public_key, *data])
    assert verified.exit_code == 0 and verified.output.startswith("OK"), verified.output

    out = tmp_path / "export"
    exported = runner.invoke(app, ["audit", "export", "--out", str(out), "--format", "csv", "--model", "demo-xgb",
                                   *data])
    assert exported.exit_code == 0, exported.output
    offline = runner.invoke(app, ["audit", "verify", str(out), "--public-key", public_key])
    assert offline.exit_code == 0 and "1 signed checkpoints verified" in offline.output, offline.output
    with open(out / "records.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    edited = json.loads(rows[0]["receipt_json"])
    edited["explanation"]["score"] = 0.001
    rows[0]["receipt_json"] = json.dumps(edited)
    with open(out / "records.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    broken = runner.invoke(app, ["audit", "verify", str(out)])
    assert broken.exit_code == 1 and "FAILED at sequence" in broken.output


def test_export_audit_refuses_an_inverted_range_naming_the_field(audited_server: Any) -> None:
    request = risklens_pb2.ExportAuditRequest(from_time="2030-01-01T00:00:00Z", to_time="2020-01-01T00:00:00Z")
    with pytest.raises(grpc.RpcError) as info:
        list(audited_server.stub.ExportAudit(request))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "to_time" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        list(audited_server.stub.ExportAudit(risklens_pb2.ExportAuditRequest(from_time="yesterday")))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("from_time: not an RFC 3339 time")


def test_audit_commands_never_create_a_trail(tmp_path: Path) -> None:
    """A mistyped data directory is an error, not an empty trail that "verifies"."""
    missing = tmp_path / "no-such-dir"
    for command in (["verify"], ["show", "0190a0f0-0000-7000-8000-000000000000"], ["export", "--out", str(tmp_path / "x")],
                    ["purge"], ["checkpoint"]):
        result = runner.invoke(app, ["audit", *command, "--data-dir", str(missing)])
        assert result.exit_code == 2 and "no audit database at" in result.output, (command, result.output)
    assert not missing.exists()  # nothing made there: no database, no development signing key


def test_purge_refuses_model_without_before(audited_server: Any) -> None:
    result = runner.invoke(app, ["audit", "purge", "--model", "demo-xgb", "--data-dir", str(audited_server.data_dir)])
    assert result.exit_code == 2 and "--model needs --before" in result.output


def test_a_hashing_policy_without_a_key_stops_the_server_at_start(demo_models_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from risklens.errors import ManifestError
    from risklens.server.app import build_service
    from risklens.settings import Settings

    monkeypatch.delenv("RISKLENS_AUDIT_HMAC_KEY")
    settings = Settings(models_dir=demo_models_dir, data_dir=tmp_path)
    with pytest.raises(ManifestError, match="RISKLENS_AUDIT_HMAC_KEY is not set"):
        build_service(settings)  # demo-xgb's audit policy hashes claimant_age
    # Without the audit trail no key is needed.
    assert build_service(settings.model_copy(update={"audit_enabled": False})).audit is None


def test_replay_says_what_differs(tmp_path: Path, claims: list[dict[str, Any]], demo_models_dir: Path) -> None:
    """A recorded explanation that the model would not produce is named field by field."""
    from risklens.core import ExplainService
    from risklens.registry import ModelRegistry

    store = open_store(f"sqlite:///{tmp_path / 'audit.db'}")
    service = ExplainService(ModelRegistry.from_directory(demo_models_dir), audit=store)
    explanation = service.explain("demo-logreg", claims[40], claim_id="edited")
    from risklens.audit import AuditEntry, new_receipt_id

    altered = risklens_pb2.ExplainResponse()
    altered.CopyFrom(explanation.response)
    altered.receipt_id = new_receipt_id()
    altered.score = 0.5
    store.record([AuditEntry(altered.receipt_id, explanation.created_at, altered.model, explanation.claim, altered)])
    rounded = risklens_pb2.ExplainResponse()
    rounded.CopyFrom(explanation.response)
    rounded.receipt_id = new_receipt_id()
    rounded.score = math.nextafter(rounded.score, 1.0)  # what another summation order can give
    store.record([AuditEntry(rounded.receipt_id, explanation.created_at, rounded.model, explanation.claim, rounded)])
    # A batch row edited: its recomputation as a row of a table differs in that field alone (the
    # claim alone differs in every SHAP value's last bits too), and that is the one reported.
    import pandas as pd

    row = service.explain_frame("demo-xgb", pd.DataFrame(claims[40:45], dtype=object),
                                claim_ids=[f"row-{i}" for i in range(5)])[4]
    edited = risklens_pb2.ExplainResponse()
    edited.CopyFrom(row.response)
    edited.receipt_id = new_receipt_id()
    edited.decision = "pass" if row.decision == "refer" else "refer"
    store.record([AuditEntry(edited.receipt_id, row.created_at, edited.model, row.claim, edited)])
    store.close()
    claim_file = tmp_path / "claim.json"
    claim_file.write_text(json.dumps(claims[44]))
    result = runner.invoke(app, ["audit", "replay", edited.receipt_id, "--models", str(demo_models_dir),
                                 "--input", str(claim_file), "--url", f"sqlite:///{tmp_path / 'audit.db'}"])
    assert result.exit_code == 1, result.output
    assert "DIFFERS in 1 place(s) (recomputed as the claim as a row of a table" in result.output, result.output
    assert "decision: recorded" in result.output
    result = runner.invoke(app, ["audit", "replay", altered.receipt_id, "--models", str(demo_models_dir),
                                 "--url", f"sqlite:///{tmp_path / 'audit.db'}"])
    assert result.exit_code == 1
    assert "DIFFERS in 1 place" in result.output and "score: recorded 0.5" in result.output
    assert "every difference is floating-point rounding" not in result.output
    result = runner.invoke(app, ["audit", "replay", rounded.receipt_id, "--models", str(demo_models_dir),
                                 "--url", f"sqlite:///{tmp_path / 'audit.db'}"])
    assert result.exit_code == 1 and "(floating-point rounding)" in result.output
    assert "likely cause: every difference is floating-point rounding" in result.output, result.output
    claim_file = tmp_path / "claim.json"
    claim_file.write_text(json.dumps(claims[40]))
    same = runner.invoke(app, ["audit", "replay", explanation.receipt_id, "--models", str(demo_models_dir),
                               "--input", str(claim_file), "--url", f"sqlite:///{tmp_path / 'audit.db'}"])
    assert same.exit_code == 0 and "IDENTICAL" in same.output, same.output


def test_replay_of_a_record_that_left_the_default_lime_samples_unstated(tmp_path: Path, claims: list[dict[str, Any]],
                                                                       demo_models_dir: Path) -> None:
    """Server calls recorded before explanations stated the default LIME sample count (0) still replay
    as identical; the settings now say what was used."""
    from risklens.audit import AuditEntry, new_receipt_id
    from risklens.core import ExplainService
    from risklens.explainers.lime import DEFAULT_SAMPLES
    from risklens.registry import ModelRegistry

    url = f"sqlite:///{tmp_path / 'audit.db'}"
    store = open_store(url)
    service = ExplainService(ModelRegistry.from_directory(demo_models_dir), audit=store)
    explanation = service.explain("demo-logreg", claims[41], claim_id="older")
    assert explanation.response.settings.lime_samples == DEFAULT_SAMPLES
    older = risklens_pb2.ExplainResponse()
    older.CopyFrom(explanation.response)
    older.receipt_id = new_receipt_id()
    older.settings.lime_samples = 0
    store.record([AuditEntry(older.receipt_id, explanation.created_at, older.model, explanation.claim, older)])
    store.close()
    claim_file = tmp_path / "claim.json"
    claim_file.write_text(json.dumps(claims[41]))
    result = runner.invoke(app, ["audit", "replay", older.receipt_id, "--models", str(demo_models_dir),
                                 "--input", str(claim_file), "--url", url])
    assert result.exit_code == 0 and "IDENTICAL" in result.output, result.output


def test_hashed_and_dropped_values_stay_out_of_every_stored_text(tmp_path: Path, demo_models_dir: Path,
                                                                  grpc_server_factory: Callable[..., Any],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A policy that hashes or drops a field keeps its value out of the stored reason texts, rationale
    and LIME conditions too (the caller still gets them), and such a record replays as identical."""
    import shutil

    import yaml

    models = tmp_path / "models"
    shutil.copytree(demo_models_dir / "demo-xgb", models / "demo-xgb")
    manifest_path = models / "demo-xgb" / "manifest.yaml"
    manifest = yaml.safe_load(manifest_path.read_text())
    manifest["audit"] = {"default": "raw", "fields": {"claimant_age": "hmac", "past_claims": "drop"}}
    manifest_path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    server = grpc_server_factory(models, data_dir=tmp_path / "data")
    claim = json.loads((REPO_ROOT / "examples" / "repeat-claimant.json").read_text())
    assert (claim["claimant_age"], claim["past_claims"]) == (42, 3)
    response = server.stub.Explain(risklens_pb2.ExplainRequest(
        model="demo-xgb", claim_id="redacted-texts", features=_request(claim, "x").features, methods=["all"]), timeout=60)
    shown = ("claimant age (42)", "has 3 past claims")
    returned = [code.text for code in response.reason_codes]
    assert all(any(text in code for code in returned) for text in shown), returned
    assert all(text in response.rationale for text in shown)

    receipt = server.stub.GetReceipt(risklens_pb2.GetReceiptRequest(receipt_id=response.receipt_id), timeout=30)
    stored = receipt.explanation
    record_text = json.dumps(json_format.MessageToDict(receipt))
    assert not any(text in record_text for text in shown), "a withheld value is in the stored record"
    assert [code.code for code in stored.reason_codes] == [code.code for code in response.reason_codes]
    withheld = [code.text for code in stored.reason_codes if WITHHELD in code.text]
    assert len(withheld) == 2 and WITHHELD in stored.rationale
    assert {w.feature: w.condition for w in stored.lime.weights if w.feature in ("claimant_age", "past_claims")} == {
        "claimant_age": WITHHELD, "past_claims": WITHHELD}
    assert receipt.input["claimant_age"].text.startswith("hmac-sha256:") and "past_claims" not in receipt.input
    ice = {curve.feature: curve for curve in stored.ice.features}
    returned_ice = {curve.feature: curve for curve in response.ice.features}
    assert set(ice) & {"claimant_age", "past_claims"}, sorted(ice)
    for name in set(ice) & {"claimant_age", "past_claims"}:  # where the value sits would read it back
        assert returned_ice[name].position_percentile > 0 and ice[name].position_percentile == 0
        # The claim's own curve passes through its score at its value: kept out; the PDP stays.
        assert len(returned_ice[name].ice) > 1 and not ice[name].ice
        assert list(ice[name].pdp) == list(returned_ice[name].pdp)

    # A record made before texts were withheld (the response as returned, through the message path).
    from risklens.audit import AuditEntry, new_receipt_id

    service = server.running.service
    older = risklens_pb2.ExplainResponse()
    older.CopyFrom(response)
    older.receipt_id = new_receipt_id()
    policy = RedactionPolicy.from_manifest(service.registry.get("demo-xgb").manifest.audit)
    service.audit.record([AuditEntry(older.receipt_id, datetime.now(UTC), older.model, claim, older, policy)])

    claim_file = tmp_path / "claim.json"
    claim_file.write_text(json.dumps(claim))
    for receipt_id in (response.receipt_id, older.receipt_id):
        result = runner.invoke(app, ["audit", "replay", receipt_id, "--models", str(models), "--input",
                                     str(claim_file), "--data-dir", str(tmp_path / "data")])
        assert result.exit_code == 0 and "IDENTICAL" in result.output, result.output
    # The input hash is keyed (a plain one would let a reader try ages until it matched): checking a
    # supplied claim against it needs the key, and a wrong claim does not match.
    assert receipt.input_sha256.startswith("hmac-sha256:")
    claim_file.write_text(json.dumps({**claim, "claimant_age": 43.0}))
    wrong = runner.invoke(app, ["audit", "replay", response.receipt_id, "--models", str(models), "--input",
                                str(claim_file), "--data-dir", str(tmp_path / "data")])
    assert wrong.exit_code == 2 and "does not hash to the recorded input_sha256" in wrong.output, wrong.output
    assert "or RISKLENS_AUDIT_HMAC_KEY is not the key it was recorded with" in wrong.output
    monkeypatch.delenv("RISKLENS_AUDIT_HMAC_KEY")
    keyless = runner.invoke(app, ["audit", "replay", response.receipt_id, "--models", str(models), "--input",
                                  str(claim_file), "--data-dir", str(tmp_path / "data")])
    assert keyless.exit_code == 2 and "keyed input hash" in keyless.output, keyless.output


def test_replay_of_a_claim_explained_in_a_table_is_identical(tmp_path: Path, claims: list[dict[str, Any]],
                                                              demo_models_dir: Path) -> None:
    """Batch receipts come from the tree engine's table kernel, single claims from its one-row
    kernel; replay matches each bit for bit, whichever made the record and wherever in its table
    the claim sat (the last row of a 5-row table once replayed as DIFFERS)."""
    import numpy as np
    import pandas as pd

    from risklens.core import ExplainService
    from risklens.registry import ModelRegistry

    url = f"sqlite:///{tmp_path / 'audit.db'}"
    store = open_store(url)
    service = ExplainService(ModelRegistry.from_directory(demo_models_dir), audit=store)
    recorded = {}
    for model in ("demo-xgb", "demo-logreg"):
        table = service.explain_frame(model, pd.DataFrame(claims[:5], dtype=object),
                                      claim_ids=[f"table-{i}" for i in range(5)])
        alone = [service.explain(model, claims[i], claim_id=f"alone-{i}") for i in range(5)]
        recorded[model] = table, alone
    store.close()
    # The two exact kernels sum in different orders: the same claim's values differ in the last bits.
    table, alone = recorded["demo-xgb"]
    assert any(not np.array_equal(t.shap_values, a.shap_values) for t, a in zip(table, alone))
    for i in (0, 4):
        claim_file = tmp_path / f"claim-{i}.json"
        claim_file.write_text(json.dumps(claims[i], default=float))
        for model, (table, alone) in recorded.items():
            for explanation, how in ((table[i], "as a row of a table"), (alone[i], "")):
                result = runner.invoke(app, ["audit", "replay", explanation.receipt_id, "--models",
                                             str(demo_models_dir), "--input", str(claim_file), "--url", url])
                assert result.exit_code == 0 and "IDENTICAL" in result.output, result.output
                if model == "demo-xgb":
                    assert (how in result.output) if how else "recomputed as" not in result.output, result.output


# --------------------------------------------------------------------------- kill -9 during streams


def _start_server(data_dir: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "risklens"), "serve", "--models", str(REPO_ROOT / "models"), "--port", str(port),
         "--data-dir", str(data_dir)], stdout=log, stderr=log, env={**os.environ, "RISKLENS_WORKERS": "16"})
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=120)
    finally:
        channel.close()
    return process


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[tuple[Path, int, list[subprocess.Popen[bytes]]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield tmp_path / "data", free_port(), processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_kill_9_during_streams_loses_no_acknowledged_record(
        server_process: tuple[Path, int, list[subprocess.Popen[bytes]]], claims: list[dict[str, Any]],
        tmp_path: Path) -> None:
    data_dir, port, processes = server_process
    processes.append(_start_server(data_dir, port, tmp_path / "server.log"))
    acknowledged: dict[str, str] = {}  # receipt id -> claim id
    lock = threading.Lock()
    enough = threading.Event()
    stream_errors: list[grpc.StatusCode] = []

    def client(thread: int) -> None:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = risklens_pb2_grpc.RiskLensStub(channel)
        requests = (_request(claims[(thread * 37 + i) % len(claims)], f"t{thread}-{i}") for i in range(10_000))
        try:
            for item in stub.ExplainStream(requests):
                if item.HasField("result"):
                    with lock:
                        acknowledged[item.result.receipt_id] = item.claim_id
                        if len(acknowledged) >= 150:
                            enough.set()
        except grpc.RpcError as error:  # the server died under the stream
            stream_errors.append(error.code())
        finally:
            channel.close()

    threads = [threading.Thread(target=client, args=(t,)) for t in range(16)]
    for thread in threads:
        thread.start()
    assert enough.wait(timeout=300), "the server acknowledged too few records before the deadline"
    os.kill(processes[0].pid, signal.SIGKILL)
    processes[0].wait()
    for thread in threads:
        thread.join(timeout=60)
    assert len(stream_errors) == 16  # every stream was cut by the kill

    processes.append(_start_server(data_dir, port, tmp_path / "server.log"))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = risklens_pb2_grpc.RiskLensStub(channel)
    for receipt_id, claim_id in acknowledged.items():
        receipt = stub.GetReceipt(risklens_pb2.GetReceiptRequest(receipt_id=receipt_id))
        assert receipt.explanation.claim_id == claim_id
    channel.close()
    processes[1].send_signal(signal.SIGTERM)
    processes[1].wait(timeout=60)

    store = open_store(f"sqlite:///{data_dir / 'audit.db'}")
    records = list(store.records())
    report = store.verify()
    store.close()
    ids = [r.receipt_id for r in records]
    claim_ids = [r.explanation.claim_id for r in records]
    assert len(ids) == len(set(ids)) and len(claim_ids) == len(set(claim_ids))  # nothing recorded twice
    assert set(acknowledged) <= set(ids)
    assert report.ok and report.records_checked == len(records), report.summary()
