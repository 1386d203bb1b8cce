"""Bad input on the command line: one line on stderr, exit status 2, nothing half-written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from loopback import free_port

RISKLENS = [sys.executable, "-m", "risklens.cli"]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*RISKLENS, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert fragment in result.stderr, result.stderr[-2000:]


@pytest.fixture(scope="module")
def claims_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from risklens.datasets import generate_claims

    frame, labels = generate_claims(300, 11)
    path = tmp_path_factory.mktemp("cli-errors") / "claims.csv"
    frame.assign(fraud=labels.astype(int)).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def xgb_file(claims_csv: Path) -> Path:
    import pandas as pd
    import xgboost as xgb

    from risklens.registry import infer_schema
    from risklens.registry.manifest import Manifest
    from risklens.registry.schema import encode_frame

    frame = pd.read_csv(claims_csv)
    features = frame.drop(columns=["fraud"])
    schema = Manifest(name="m", version="1", framework="xgboost", artifact="_", sha256="_",
                      features=infer_schema(features))
    path = claims_csv.parent / "model.json"
    xgb.XGBClassifier(n_estimators=5, max_depth=2, n_jobs=1).fit(encode_frame(schema, features),
                                                                  frame["fraud"]).save_model(path)
    return path


def test_unreadable_input_files_are_one_line_errors(tmp_path: Path, demo_models_dir: Path) -> None:
    not_json = tmp_path / "claim.json"
    not_json.write_text("[1")
    not_utf8 = tmp_path / "claims.csv"
    not_utf8.write_bytes(b"claim_amount,fault\n\xff\xfe,1\n")
    assert_one_line_error(run_cli("explain", "--model", "demo-xgb", "-i", str(tmp_path / "missing.json")),
                          "No such file or directory")
    assert_one_line_error(run_cli("explain", "--model", "demo-xgb", "-i", str(not_json)), "JSONDecodeError")
    assert_one_line_error(run_cli("audit", "run", "--model", "demo-xgb", "--models", str(demo_models_dir),
                                  "--data", str(not_utf8), "--out", str(tmp_path / "run"), "--no-audit"),
                          "not UTF-8 text")
    assert_one_line_error(run_cli("models", "list", "--models", str(tmp_path / "nope")), "does not exist")
    # RISKLENS_TRACEBACK=1 shows where an input error was raised; 0 (or empty) does not.
    assert_one_line_error(run_cli("explain", "--model", "demo-xgb", "-i", str(not_json),
                                  env={"RISKLENS_TRACEBACK": "0"}), "JSONDecodeError")
    shown = run_cli("explain", "--model", "demo-xgb", "-i", str(not_json), env={"RISKLENS_TRACEBACK": "1"})
    assert shown.returncode == 1 and "Traceback" in shown.stderr and "JSONDecodeError" in shown.stderr


def test_a_malformed_csv_row_stays_out_of_the_traceback(tmp_path: Path, demo_models_dir: Path,
                                                        claims_csv: Path) -> None:
    """Arrow's CSV errors quote the row; with RISKLENS_TRACEBACK=1 the traceback shows pandas' error only."""
    lines = claims_csv.read_text().splitlines()
    broken = tmp_path / "extra-field.csv"
    broken.write_text("\n".join([*lines[:3], lines[3] + ",98765.4321", *lines[4:]]) + "\n")
    result = run_cli("audit", "run", "--model", "demo-xgb", "--models", str(demo_models_dir), "--data", str(broken),
                     "--out", str(tmp_path / "run"), "--no-audit", env={"RISKLENS_TRACEBACK": "1"})
    assert result.returncode == 1 and "Traceback" in result.stderr, result.stderr[-2000:]
    row_start = ",".join(lines[3].split(",")[:3])  # Arrow quotes the row from its start
    assert row_start not in result.stderr and "98765.4321" not in result.stderr, result.stderr[-3000:]


def test_audit_run_refuses_bad_options_before_claiming_the_output(tmp_path: Path, demo_models_dir: Path,
                                                                 claims_csv: Path) -> None:
    common = ["audit", "run", "--model", "demo-xgb", "--models", str(demo_models_dir), "--data", str(claims_csv)]
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert_one_line_error(run_cli(*common, "--out", str(a_file), "--no-audit"), "is a file")
    assert_one_line_error(run_cli(*common, "--out", str(tmp_path / "run"), "--sample", "-5", "--no-audit"), "sample")
    # An audit store that cannot be opened: the run is not claimed, so the same --out works afterwards.
    failed = run_cli(*common, "--out", str(tmp_path / "run"), "--audit-url", "ftp://example/audit")
    assert failed.returncode == 2 and "scheme must be sqlite or postgresql" in failed.stderr, failed.stderr[-2000:]
    assert not (tmp_path / "run" / "run.json").exists()
    from risklens.trees import gpu_available

    refused = [(["--scheduler", "bogus"], "Dask address"), (["--label", "claim_amount"], "holds no 0/1")]
    if not gpu_available():
        refused.append((["--device", "gpu"], "no CUDA device"))
    for options, fragment in refused:
        assert_one_line_error(run_cli(*common, "--out", str(tmp_path / "run"), "--no-audit", *options), fragment)
        assert not (tmp_path / "run" / "run.json").exists()
    done = run_cli(*common, "--out", str(tmp_path / "run"), "--methods", "shap", "--no-report", "--no-progress",
                   "--audit-url", f"sqlite:///{tmp_path / 'audit.db'}")
    assert done.returncode == 0 and "explained 300 claims" in done.stdout, done.stderr[-2000:]


def test_models_add_validates_and_never_leaves_a_half_written_model(tmp_path: Path, claims_csv: Path,
                                                                   xgb_file: Path) -> None:
    models = tmp_path / "models"
    add = ["models", "add", str(xgb_file), "--data", str(claims_csv), "--models", str(models)]
    for options, fragment in ((["--name", "../escaped"], "'../escaped' is not a plain name"),
                              (["--name", ".hidden"], "'.hidden' is not a plain name"),
                              (["--name", "m", "--version", ""], "--version: '' is not a plain name"),
                              (["--name", "m", "--label", "fraud", "--holdout-fraction", "1.5"], "strictly between"),
                              (["--name", "m", "--threshold", "5"], "probability between 0 and 1")):
        result = run_cli(*add, *options)
        assert result.returncode == 2 and fragment in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "escaped").exists()
    # A registration that fails midway (the file is not a scikit-learn model) leaves nothing behind.
    assert_one_line_error(run_cli("models", "add", str(claims_csv), "--framework", "sklearn", "--data",
                                  str(claims_csv), "--models", str(models), "--name", "m"), "error:")
    assert not models.exists() or not any(models.iterdir())
    # A reason-code catalogue that does not load is refused before the model is moved in place.
    catalogue = tmp_path / "codes.yaml"
    catalogue.write_text("codes: 5\n")
    assert_one_line_error(run_cli(*add, "--name", "m", "--label", "fraud", "--reason-codes", str(catalogue)),
                          "invalid reason-code catalogue")
    assert not any(models.iterdir())
    # --force replaces a model directory whole: nothing of the old one survives.
    (models / "m").mkdir(parents=True)
    (models / "m" / "stale.json").write_text("{}")
    done = run_cli(*add, "--name", "m", "--label", "fraud", "--force")
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (models / "m" / "stale.json").exists() and (models / "m" / "manifest.yaml").exists()
    assert [p.name for p in models.iterdir()] == ["m"]
    assert "INFO interpret" not in done.stderr  # other libraries' INFO logging stays quiet
    listed = run_cli("models", "list", "--models", str(models))
    assert listed.returncode == 0 and listed.stdout.startswith("m "), listed.stderr[-2000:]


def test_serve_refuses_a_port_that_is_taken_or_out_of_range(demo_models_dir: Path, tmp_path: Path) -> None:
    import grpc

    port = free_port()
    first = subprocess.Popen([*RISKLENS, "serve", "--models", str(demo_models_dir), "--port", str(port),
                              "--data-dir", str(tmp_path / "one")], stderr=subprocess.PIPE, text=True,
                             env={**os.environ})
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
        second = run_cli("serve", "--models", str(demo_models_dir), "--port", str(port), "--data-dir",
                         str(tmp_path / "two"), timeout=60)
        assert_one_line_error(second, f"cannot listen on 127.0.0.1:{port}")
        assert not (tmp_path / "two").exists()  # the port is tried first: no audit store or key made
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=30)
    assert_one_line_error(run_cli("serve", "--models", str(demo_models_dir), "--port", "70000", timeout=60), "port")


def test_audit_export_never_leaves_a_partial_or_mixed_export(tmp_path: Path, demo_models_dir: Path,
                                                             claims_csv: Path) -> None:
    audit = ["--url", f"sqlite:///{tmp_path / 'audit.db'}"]
    made = run_cli("audit", "run", "--model", "demo-xgb", "--models", str(demo_models_dir), "--data", str(claims_csv),
                   "--out", str(tmp_path / "run"), "--methods", "shap", "--no-report", "--no-progress",
                   "--audit-url", audit[1])
    assert made.returncode == 0, made.stderr[-2000:]
    out = tmp_path / "export"
    inverted = run_cli("audit", "export", "--out", str(out), "--from", "2030-01-01", "--to", "2020-01-01", *audit)
    assert_one_line_error(inverted, "--to (2020-01-01) is before --from (2030-01-01)")
    assert not out.exists() or not any(out.iterdir())
    assert run_cli("audit", "export", "--out", str(out), *audit).returncode == 0
    again = run_cli("audit", "export", "--out", str(out), "--format", "csv", *audit)
    assert_one_line_error(again, "already holds an export")
    assert sorted(p.name for p in out.iterdir()) == ["adverse_action_notices.csv", "manifest.json", "records.jsonl"]
    assert_one_line_error(run_cli("audit", "verify", str(out), "--public-key", "abcd"), "64 hex digits")
    verified = run_cli("audit", "verify", str(out))
    assert verified.returncode == 0 and "300 records" in verified.stdout, verified.stdout


def test_a_configured_signing_key_that_is_missing_stops_the_server(demo_models_dir: Path, tmp_path: Path) -> None:
    """RISKLENS_AUDIT_SIGNING_KEY names the key to use: a wrong path is an error, not a new key there."""
    missing = tmp_path / "keys" / "audit.pem"
    result = subprocess.run([*RISKLENS, "serve", "--models", str(demo_models_dir), "--port", "0", "--data-dir",
                             str(tmp_path / "data")], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "RISKLENS_AUDIT_SIGNING_KEY": str(missing)})
    assert_one_line_error(result, "cannot read the audit signing key")
    assert not missing.exists()
