"""Batch audit runs on real data: the whole fraud_oracle table, resume after a kill, Dask, messy CSVs."""

from __future__ import annotations

import json
import re
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from risklens.audit import BATCH_PAGE_SIZE, open_store
from risklens.errors import InvalidRequest, SchemaError
from risklens.registry import ModelRegistry
from risklens.reports import AuditRunConfig, read_claims_table, run_audit

from risklens.datasets.shared import shared_data_dir

SHARED = shared_data_dir()
FRAUD_CSV = SHARED / "fraud_oracle.csv"
INSURANCE_CSV = SHARED / "insurance_claims.csv"


def _audited_receipts(audit_url: str) -> list[str]:
    store = open_store(audit_url)
    try:
        return [r.receipt_id for r in store.records()]
    finally:
        store.close()


def test_whole_fraud_oracle_table_is_explained_once_and_audited(fraud_run, fraud_models_dir):
    out, audit_url, output = fraud_run
    claims = pd.read_parquet(out / "claims.parquet")
    source = pd.read_csv(FRAUD_CSV)
    assert len(claims) == len(source) == 15420
    assert claims["row"].tolist() == list(range(15420))
    assert claims["claim_id"].tolist() == source["PolicyNumber"].astype(str).tolist()
    assert claims["label"].tolist() == source["FraudFound_P"].astype(float).tolist()
    model = ModelRegistry.from_directory(fraud_models_dir).get("fraud-oracle")
    shap_columns = [f"shap__{name}" for name in model.manifest.feature_names]
    # One column per contribution, adding up to the model's margin (local accuracy survives the round trip).
    total = claims["base_value"] + claims[shap_columns].sum(axis=1)
    np.testing.assert_allclose(total, claims["raw_score"], atol=1e-5)
    assert set(claims["decision"]) == {"pass", "refer"}
    assert (claims["decision"] == "refer").eq(claims["score"] >= 0.15).all()
    assert claims["rationale"].str.len().min() > 20
    assert claims["reason_codes"].map(len).max() > 0
    # The extra methods ran on the 60 sampled claims only.
    assert claims["lime_result"].notna().sum() == 60
    assert claims["ice_result"].notna().sum() == 60
    assert claims["shap_engine"].nunique() == 1
    receipts = _audited_receipts(audit_url)
    assert len(receipts) == 15420
    assert set(receipts) == set(claims["receipt_id"])
    # Sampled claims (SHAP, LIME, ICE, agreement) replay bit for bit in this process, whose BLAS
    # runs on every core, though the worker processes' ran on one: LIME's sums are numpy's own.
    from risklens.audit._replay import replay

    store = open_store(audit_url)
    try:
        for receipt_id in claims.loc[claims["lime_result"].notna(), "receipt_id"].iloc[:4]:
            result = replay(store.get(receipt_id), ModelRegistry.from_directory(fraud_models_dir))
            assert result.identical, result.summary()
    finally:
        store.close()
    with sqlite3.connect(audit_url.removeprefix("sqlite:///")) as connection:  # the run created the trail
        assert connection.execute("PRAGMA page_size").fetchone()[0] == BATCH_PAGE_SIZE
    assert (out / "rejects.csv").read_text().strip() == "row,claim_id,code,field,reason"
    assert "explained 15,420 claims, rejected 0" in output
    # --workers 2: this process and one worker process took chunks from one queue, each chunk once.
    by_worker = json.loads((out / "summary.json").read_text())["chunks_by_worker"]
    assert sum(by_worker.values()) == 16 and by_worker["driver"] >= 1 and len(by_worker) <= 2
    assert f"report   {out / 'report.html'}" in output


def _children(pid: int) -> set[int]:
    children: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children.update(int(child) for child in (task / "children").read_text().split())
    return children


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_killed_run_resumes_without_missing_or_duplicate_claims(fraud_models_dir, tmp_path):
    """kill -9 of a two-worker run (a fresh CLI process: the worker is forked), then the same command."""
    data = tmp_path / "claims.csv"
    pd.read_csv(FRAUD_CSV).iloc[:3000].to_csv(data, index=False)
    out = tmp_path / "run"
    audit_url = f"sqlite:///{tmp_path / 'audit.db'}"
    command = [sys.executable, "-m", "risklens.cli", "audit", "run", "--model", "fraud-oracle", "--data", str(data),
               "--out", str(out), "--models", str(fraud_models_dir), "--chunk-size", "100", "--methods", "shap",
               "--workers", "2", "--audit-url", audit_url, "--no-report", "--no-progress"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list((out / "chunks").glob("chunk-??????.parquet"))) < 3:
        assert first.poll() is None, first.stderr.read().decode()
        assert time.monotonic() < deadline, "the run committed no chunks in time"
        time.sleep(0.02)
    workers = _children(first.pid)
    assert workers, "the run has no worker process"
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    committed = len(list((out / "chunks").glob("chunk-??????.parquet")))
    assert not (out / "claims.parquet").exists(), "the run finished before it was killed"
    assert 3 <= committed < 30
    # The worker dies with the driver: left running, it could record a chunk the rerun redoes.
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "a worker process outlived the killed driver"
        time.sleep(0.05)
    assert json.loads((out / "run.json").read_text())["worker_start"] == "fork"

    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "of 30 chunks were already done" in second.stdout
    resumed = int(second.stdout.split(" of 30 chunks")[0].rsplit(" ", 1)[1])
    assert resumed >= committed
    claims = pd.read_parquet(out / "claims.parquet")
    assert claims["row"].tolist() == list(range(3000))
    receipts = _audited_receipts(audit_url)
    assert len(receipts) == len(set(receipts)) == 3000
    assert set(receipts) == set(claims["receipt_id"])
    by_worker = json.loads((out / "summary.json").read_text())["chunks_by_worker"]
    assert sum(by_worker.values()) == 30 - resumed and "driver" in by_worker and len(by_worker) <= 2


def test_cli_runs_one_worker_per_core_by_default(fraud_models_dir, tmp_path):
    from typer.testing import CliRunner

    from risklens.cli import app

    data = tmp_path / "claims.csv"
    pd.read_csv(FRAUD_CSV).iloc[:300].to_csv(data, index=False)
    result = CliRunner().invoke(app, [
        "audit", "run", "--model", "fraud-oracle", "--data", str(data), "--out", str(tmp_path / "run"),
        "--models", str(fraud_models_dir), "--chunk-size", "100", "--methods", "shap", "--no-audit",
        "--no-report", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "run.json").read_text())["workers"] == len(os.sched_getaffinity(0))
    by_worker = json.loads((tmp_path / "run" / "summary.json").read_text())["chunks_by_worker"]
    assert sum(by_worker.values()) == 3 and "driver" in by_worker
    assert len(pd.read_parquet(tmp_path / "run" / "claims.parquet")) == 300


def test_a_model_replaced_between_runs_in_one_process_is_the_one_explained(tmp_path):
    """A long-lived process (a notebook, a scheduler, a Dask worker) explains, the model is retrained
    into the same directory, and it explains again: with the model now on disk, the one the run
    names; a model replaced during a run stops it."""
    import xgboost as xgb

    from risklens.datasets import generate_claims
    from risklens.errors import ArtifactIntegrityError
    from risklens.registry import infer_schema, write_model_dir
    from risklens.registry.manifest import Manifest
    from risklens.registry.schema import encode_frame
    from risklens.reports._worker import ChunkTask, chunk_file, explain_chunk

    X, y = generate_claims(600, seed=3)
    features = infer_schema(X)
    matrix = encode_frame(Manifest(name="_", version="0", framework="xgboost", artifact="_", sha256="_",
                                   features=features), X)
    X.to_csv(tmp_path / "claims.csv", index=False)
    models = tmp_path / "models"

    def retrain(trees: int) -> tuple[np.ndarray, str]:
        model = xgb.XGBClassifier(n_estimators=trees, max_depth=3, n_jobs=1, random_state=0).fit(matrix, y)
        write_model_dir(models / "m", model, name="m", version="1.0.0", features=features, background=X.iloc[:100])
        return model.predict(matrix, output_margin=True), ModelRegistry.from_directory(models).get("m").manifest.sha256

    def audit_run(out: Path) -> pd.DataFrame:
        run_audit(AuditRunConfig(model="m", data=tmp_path / "claims.csv", out=out, models_dir=models, methods=(),
                                 record_audit=False, progress=False, report=False))
        return pd.read_parquet(out / "claims.parquet")

    def worker_chunk(sha256: str) -> pd.DataFrame:  # what a Dask worker is handed
        table = read_claims_table(tmp_path / "claims.csv", ModelRegistry.from_directory(models).get("m").manifest)
        out = tmp_path / "worker"
        (out / "chunks").mkdir(parents=True, exist_ok=True)
        explain_chunk(ChunkTask(index=0, models_dir=str(models.resolve()), model="m", version="1.0.0",
                                features=table.features, claim_ids=table.claim_ids, labels=None,
                                sampled=[False] * len(table), methods=(), out_dir=str(out), model_sha256=sha256))
        return pd.read_parquet(chunk_file(out, 0, suffix=".pending.parquet"))

    first_scores, first_sha = retrain(3)
    claims = audit_run(tmp_path / "run-0")
    np.testing.assert_allclose(claims["raw_score"], first_scores, atol=1e-5)
    second_scores, second_sha = retrain(12)
    assert not np.allclose(first_scores, second_scores)
    # This process still holds the first model; a chunk of a run started with the second reloads.
    np.testing.assert_allclose(worker_chunk(second_sha)["raw_score"], second_scores, atol=1e-5)
    claims = audit_run(tmp_path / "run-1")
    np.testing.assert_allclose(claims["raw_score"], second_scores, atol=1e-5)
    assert json.loads((tmp_path / "run-1" / "run.json").read_text())["identity"]["model_sha256"] == second_sha
    with pytest.raises(ArtifactIntegrityError, match="replaced during the run") as raised:
        worker_chunk(first_sha)
    assert raised.value.field == "model"


def test_local_workers_are_forked_only_where_it_is_safe(fraud_models_dir, tmp_path):
    config = AuditRunConfig(model="fraud-oracle", data=FRAUD_CSV, out=tmp_path, models_dir=fraud_models_dir,
                            workers=2, record_audit=False, progress=False, report=False)
    with pytest.raises(InvalidRequest, match="worker start must be one of auto, fork, spawn") as raised:
        run_audit(replace(config, worker_start="thread"))
    assert raised.value.field == "worker_start"
    # Another Python thread could hold a lock the forked child would wait on forever.
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        with pytest.raises(InvalidRequest, match="cannot fork local workers here: .* other Python thread"):
            run_audit(replace(config, worker_start="fork"))
    finally:
        release.set()
        other.join()


def test_dask_cluster_run_matches_the_local_run(fraud_run, fraud_models_dir, tmp_path):
    from distributed import LocalCluster

    data = tmp_path / "claims.csv"
    pd.read_csv(FRAUD_CSV).iloc[:2000].to_csv(data, index=False)
    audit_url = f"sqlite:///{tmp_path / 'audit.db'}"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        result = run_audit(AuditRunConfig(
            model="fraud-oracle", data=data, out=tmp_path / "run", models_dir=fraud_models_dir,
            scheduler=cluster.scheduler_address, methods=(), chunk_size=250, audit_url=audit_url,
            id_column="PolicyNumber", progress=False, report=False))
    assert (result.explained, result.rejected, result.chunks_total) == (2000, 0, 8)
    distributed = pd.read_parquet(result.claims_path)
    local = pd.read_parquet(fraud_run[0] / "claims.parquet").iloc[:2000]
    assert distributed["claim_id"].tolist() == local["claim_id"].tolist()
    columns = ["score", "raw_score", *[c for c in local if c.startswith("shap__")]]
    np.testing.assert_allclose(distributed[columns].to_numpy(), local[columns].to_numpy(), atol=1e-9)
    assert distributed["reason_codes"].map(tuple).tolist() == local["reason_codes"].map(tuple).tolist()
    assert len(set(_audited_receipts(audit_url))) == 2000


def test_messy_insurance_csv_rejects_only_bad_rows_with_reasons(insurance_models_dir, tmp_path):
    raw = pd.read_csv(INSURANCE_CSV, dtype=str, keep_default_na=False)
    raw.loc[5, "age"] = "forty"
    raw.loc[7, "incident_type"] = "Meteor Strike"
    raw.loc[9, "total_claim_amount"] = ""
    data = tmp_path / "insurance_claims.csv"
    raw.to_csv(data, index=False)
    result = run_audit(AuditRunConfig(
        model="insurance", data=data, out=tmp_path / "run", models_dir=insurance_models_dir, methods=(),
        label_column="fraud_reported", id_column="policy_number", chunk_size=300, record_audit=False,
        progress=False, report=False))
    assert (result.explained, result.rejected) == (len(raw) - 3, 3)
    rejects = pd.read_csv(result.rejects_path)
    assert rejects["row"].tolist() == [5, 7, 9]
    assert rejects["field"].tolist() == ["age", "incident_type", "total_claim_amount"]
    assert "must be a number" in rejects["reason"][0]
    assert "category outside the schema" in rejects["reason"][1]
    assert "null" in rejects["reason"][2]
    assert set(rejects["code"]) == {"INVALID_ARGUMENT"}
    claims = pd.read_parquet(result.claims_path)
    assert 5 not in set(claims["row"]) and len(claims) == len(raw) - 3
    # "?" means missing: such rows are explained (the features are nullable), Y/N labels become 1/0.
    assert (raw["collision_type"] == "?").sum() > 100
    assert set(claims["label"]) == {0.0, 1.0}
    run = (tmp_path / "run" / "run.json").read_text()
    assert "_c39" in run and "policy_bind_date" in run  # the empty trailing column and dates are ignored


def test_table_without_a_feature_column_fails_before_any_work(insurance_models_dir, tmp_path):
    data = tmp_path / "claims.csv"
    pd.read_csv(INSURANCE_CSV).drop(columns=["age"]).to_csv(data, index=False)
    model = ModelRegistry.from_directory(insurance_models_dir).get("insurance")
    with pytest.raises(SchemaError, match="no column for feature") as raised:
        read_claims_table(data, model.manifest)
    assert raised.value.field == "age"


def test_rerun_with_other_options_is_refused(fraud_run, fraud_models_dir):
    out = fraud_run[0]
    with pytest.raises(InvalidRequest, match="different audit run"):
        run_audit(AuditRunConfig(model="fraud-oracle", data=FRAUD_CSV, out=out, models_dir=fraud_models_dir,
                                 chunk_size=999, label_column="FraudFound_P", id_column="PolicyNumber",
                                 record_audit=False, progress=False, report=False))


def test_rerun_under_other_settings_is_refused(fraud_run, fraud_models_dir):
    """The settings a run resolved from the environment are part of its identity: resuming under
    another RISKLENS_TOP_K would mix chunks explained two ways."""
    from typer.testing import CliRunner

    from risklens.cli import app

    out, audit_url, _ = fraud_run
    identity = json.loads((out / "run.json").read_text())["identity"]
    assert identity["settings"]["top_k"] == 3 and identity["settings"]["device"] == "auto"
    result = CliRunner().invoke(app, [
        "audit", "run", "--model", "fraud-oracle", "--data", str(FRAUD_CSV), "--out", str(out),
        "--models", str(fraud_models_dir), "--workers", "2", "--label", "FraudFound_P",
        "--id-column", "PolicyNumber", "--sample", "60", "--chunk-size", "1000", "--audit-url", audit_url,
        "--no-progress"], env={"RISKLENS_TOP_K": "5"})
    assert result.exit_code == 2 and "differs in ['settings']" in result.output, result.output


def test_rerunning_the_same_command_reproduces_the_randomised_methods(tmp_path):
    """Each claim's LIME seed follows from the run's seed and its row (a server call's comes from its
    receipt, new each time): the same command on the same table gives the same explanations."""
    from risklens.datasets import generate_claims
    from risklens.reports._worker import claim_seeds

    frame, _ = generate_claims(300, 9)
    data = tmp_path / "claims.csv"
    frame.to_csv(data, index=False)
    runs = []
    for name in ("first", "second"):
        result = run_audit(AuditRunConfig(model="demo-xgb", data=data, out=tmp_path / name,
                                          models_dir=Path(__file__).resolve().parents[2] / "models",
                                          methods=("lime",), sample=25, chunk_size=120, record_audit=False,
                                          progress=False, report=False))
        runs.append(pd.read_parquet(result.claims_path))
    first, second = runs
    assert first["seed"].tolist() == second["seed"].tolist() == claim_seeds(0, list(range(300)))
    assert first["receipt_id"].tolist() != second["receipt_id"].tolist()
    lime = [c for c in first if c.startswith("lime__")] + ["lime_stability"]
    assert first["lime_stability"].notna().sum() == 25
    np.testing.assert_array_equal(first[lime].to_numpy(float), second[lime].to_numpy(float))


def _small_table(tmp_path: Path, rows: int = 40) -> Path:
    from risklens.datasets import generate_claims

    frame, _ = generate_claims(rows, 4)
    data = tmp_path / "claims.csv"
    frame.to_csv(data, index=False)
    return data


def test_rerun_elsewhere_or_under_another_manifest_is_refused(tmp_path):
    """A rerun finds its pending chunks' receipts in the run's audit trail: another trail (or none)
    would record claims twice or not at all; an edited manifest (threshold, audit policy) would
    explain part of the table under other rules. Both are refused."""
    import shutil

    models = tmp_path / "models"
    shutil.copytree(Path(__file__).resolve().parents[2] / "models" / "demo-xgb", models / "demo-xgb")
    data = _small_table(tmp_path)

    def run(**changes: object) -> None:
        run_audit(replace(AuditRunConfig(model="demo-xgb", data=data, out=tmp_path / "run", models_dir=models,
                                         methods=(), chunk_size=16, audit_url=f"sqlite:///{tmp_path / 'a.db'}",
                                         progress=False, report=False), **changes))

    run()
    for changes, differing in (({"audit_url": f"sqlite:///{tmp_path / 'b.db'}"}, "['audit']"),
                               ({"record_audit": False}, "['audit', 'redaction_key']")):
        with pytest.raises(InvalidRequest, match=re.escape(f"differs in {differing}")):
            run(**changes)
    manifest = models / "demo-xgb" / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("threshold: 0.5", "threshold: 0.05"))
    with pytest.raises(InvalidRequest, match=re.escape("differs in ['manifest_sha256']")):
        run()


@pytest.mark.parametrize("kind", ["empty", "every row rejected"])
def test_a_table_with_nothing_to_explain_still_gives_the_outputs(kind, tmp_path):
    data = _small_table(tmp_path, 12)
    frame = pd.read_csv(data)
    (frame.iloc[:0] if kind == "empty" else frame.assign(claim_amount="lots")).to_csv(data, index=False)
    result = run_audit(AuditRunConfig(model="demo-xgb", data=data, out=tmp_path / "run",
                                      models_dir=Path(__file__).resolve().parents[2] / "models",
                                      audit_url=f"sqlite:///{tmp_path / 'a.db'}", progress=False))
    assert (result.explained, result.rejected) == (0, 0 if kind == "empty" else 12)
    claims = pd.read_parquet(result.claims_path)
    assert len(claims) == 0 and {"claim_id", "receipt_id", "score", "decision", "rationale"} <= set(claims.columns)
    html = result.report_path.read_text()
    assert html.count("Not available for this run") >= 7 and "no explained claims" in html


def test_a_chunk_run_again_after_it_was_recorded_is_not_recorded_twice(tmp_path):
    """A Dask task runs again when its worker is lost: if that worker had recorded the chunk and died
    before answering, the second execution keeps the first one's results instead of recording again."""
    from risklens.reports._worker import ChunkTask, chunk_file, close_stores, explain_chunk

    models = Path(__file__).resolve().parents[2] / "models"
    data = _small_table(tmp_path, 30)
    table = read_claims_table(data, ModelRegistry.from_directory(models).get("demo-xgb").manifest)
    table.features.loc[4, "claim_amount"] = -1.0  # one reject, kept too
    out = tmp_path / "run"
    (out / "chunks").mkdir(parents=True)
    audit_url = f"sqlite:///{tmp_path / 'audit.db'}"
    task = ChunkTask(index=0, models_dir=str(models), model="demo-xgb", version="", features=table.features,
                     claim_ids=table.claim_ids, labels=None, sampled=[False] * len(table), methods=(),
                     out_dir=str(out), audit_url=audit_url)
    try:
        first = explain_chunk(task)
        pending = pd.read_parquet(chunk_file(out, 0, suffix=".pending.parquet"))
        again = explain_chunk(task)
    finally:
        close_stores()
    assert (first.explained, first.rejected) == (again.explained, again.rejected) == (29, 1)
    pd.testing.assert_frame_equal(pd.read_parquet(chunk_file(out, 0, suffix=".pending.parquet")), pending)
    assert sorted(_audited_receipts(audit_url)) == sorted(pending["receipt_id"])


def test_unknown_method_is_refused(fraud_models_dir, tmp_path):
    with pytest.raises(InvalidRequest, match="unknown method"):
        run_audit(AuditRunConfig(model="fraud-oracle", data=FRAUD_CSV, out=tmp_path, models_dir=fraud_models_dir,
                                 methods=("telepathy",), record_audit=False, progress=False, report=False))


def test_csv_tables_read_as_pandas_reads_them_also_where_arrow_cannot(insurance_models_dir, tmp_path, caplog):
    """Arrow's multi-threaded reader gives the frame pandas' parser gives, and a file it refuses (rows
    that leave out the empty trailing column) is read by pandas' parser instead."""
    from risklens.reports._table import NA_TOKENS, _read_csv_as_text

    for source in (FRAUD_CSV, INSURANCE_CSV):
        expected = pd.read_csv(source, dtype=str, keep_default_na=False, na_values=list(NA_TOKENS))
        pd.testing.assert_frame_equal(_read_csv_as_text(source, NA_TOKENS), expected)
    lines = INSURANCE_CSV.read_text().splitlines()
    assert all(line.endswith(",") for line in lines[1:])  # the empty trailing column "_c39"
    data = tmp_path / "short_rows.csv"
    data.write_text("\n".join([lines[0], *(line[:-1] if i % 2 else line for i, line in enumerate(lines[1:]))]) + "\n")
    with pytest.raises(ValueError, match="Expected 40 columns"):
        pd.read_csv(data, engine="pyarrow", dtype=str)
    model = ModelRegistry.from_directory(insurance_models_dir).get("insurance")
    with caplog.at_level("DEBUG", logger="risklens"):
        table = read_claims_table(data, model.manifest, id_column="policy_number")
    assert "pandas' parser" in caplog.text
    assert lines[2][:-1].split(",")[1] not in caplog.text  # Arrow's message quotes a row: not logged
    expected = read_claims_table(INSURANCE_CSV, model.manifest, id_column="policy_number")
    pd.testing.assert_frame_equal(table.features, expected.features)
    assert table.claim_ids == expected.claim_ids and "_c39" in table.ignored_columns


@pytest.mark.parametrize("values", [
    ["1", "2.5", None, "-0", "3e2", "1e-320", "inf"],  # all numbers: Arrow parses the column
    ["1", " 2", "x", None, "+5", "1,000"],  # text among numbers: pandas decides what stays text
    ["1", "NAN", "2"],  # NaN spelled out: pandas' rules
])
def test_number_columns_parse_alike_through_arrow_and_pandas(values):
    from risklens.reports._table import _as_number

    arrow = _as_number(pd.Series(values, dtype=pd.StringDtype("pyarrow")))
    plain = _as_number(pd.Series(values, dtype=object))
    assert len(arrow) == len(plain)
    for got, want in zip(arrow.tolist(), plain.tolist()):
        assert type(got) is type(want)
        if isinstance(want, float) and not np.isnan(want):
            assert np.copysign(1.0, got) == np.copysign(1.0, want) and got == want
        elif isinstance(want, float):
            assert np.isnan(got)
        else:
            assert got == want


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_free_heap_goes_back_to_the_os_before_workers_are_forked() -> None:
    """What the runner does just before forking local workers: the C heap's free pages are released,
    so that neither the driver nor its children copy them on their first write after the fork."""
    from risklens.reports._runner import release_free_heap

    def resident_bytes() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    blocks = [bytes(2048) for _ in range(60_000)]  # ~125 MB from malloc's heap (not Python's small-object pools)
    kept = blocks[::50]  # freed around these, the heap cannot shrink from its top by itself
    del blocks
    before = resident_bytes()
    assert release_free_heap()
    released = before - resident_bytes()
    assert released > 50 * 2**20, f"only {released / 2**20:.0f} MiB released"
    assert len(kept) == 1200
