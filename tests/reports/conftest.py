"""Real models trained on the shared datasets, and one full audit run over fraud_oracle, per session."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from risklens.datasets.shared import shared_data_dir

SHARED = shared_data_dir()
FRAUD_CSV = SHARED / "fraud_oracle.csv"
INSURANCE_CSV = SHARED / "insurance_claims.csv"


def _xgboost(features, X, y, n_estimators: int):
    import xgboost as xgb

    from risklens.registry.manifest import Manifest
    from risklens.registry.schema import encode_frame

    manifest = Manifest(name="_", version="0", framework="xgboost", artifact="_", sha256="_", features=features)
    model = xgb.XGBClassifier(n_estimators=n_estimators, max_depth=4, learning_rate=0.1, n_jobs=1, random_state=0)
    model.fit(encode_frame(manifest, X), y.to_numpy())
    return model


@pytest.fixture(scope="session")
def fraud_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 50-tree XGBoost on fraud_oracle, registered with PDP grids, EBM surrogate and permutation importance."""
    from risklens.datasets import load_shared
    from risklens.registry import infer_schema
    from risklens.registry.registration import RegistrationSettings, register_model

    X, y = load_shared("fraud_oracle")
    train, holdout = X.iloc[:12000], X.iloc[12000:]
    features = infer_schema(X)
    root = tmp_path_factory.mktemp("fraud-models")
    register_model(root / "fraud-oracle", _xgboost(features, train, y.iloc[:12000], 50), train, name="fraud-oracle",
                   version="1.0.0", holdout=(holdout, y.iloc[12000:]), features=features, threshold=0.15,
                   description="fraud_oracle claims model (test)", seed=0,
                   settings=RegistrationSettings(grid_resolution=10, surrogate_rows=800, permutation_rows=800,
                                                 permutation_repeats=3))
    return root


@pytest.fixture(scope="session")
def insurance_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small XGBoost on insurance_claims' raw columns (dates left out: the CSV holds them as text)."""
    from risklens.datasets import load_shared
    from risklens.registry import infer_schema, write_model_dir

    X, y = load_shared("insurance_claims")
    X = X.drop(columns=["days_policy_to_incident", "incident_month"])
    features = infer_schema(X)
    root = tmp_path_factory.mktemp("insurance-models")
    # The hyphenated columns get a hand-written code: generated templates name the feature as a Jinja
    # variable, which "capital-gains" cannot be (reported to the lead; rationale/catalogue.py).
    codes = {"codes": [{"code": "CA01", "features": ["capital-gains", "capital-loss"],
                        "raises": "Capital gains and losses raised the risk",
                        "lowers": "Capital gains and losses lowered the risk"}]}
    write_model_dir(root / "insurance", _xgboost(features, X, y, 30), name="insurance", version="1.0.0",
                    features=features, background=X, threshold=0.5, reason_codes=codes)
    return root


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary, installed from Debian packages when missing (CI runs as root with apt)."""
    from risklens.reports._report import chromium_binary

    if chromium_binary() is None and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, capture_output=True,
                       timeout=900, env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    binary = chromium_binary()
    if binary is None:
        pytest.fail("Chromium is not installed and could not be installed with apt-get")
    return binary


@pytest.fixture(scope="session")
def fraud_run(fraud_models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Every fraud_oracle claim through the CLI with 2 local worker processes, audited, with its report."""
    from typer.testing import CliRunner

    from risklens.cli import app

    out = tmp_path_factory.mktemp("fraud-run")
    audit_url = f"sqlite:///{out / 'audit.db'}"
    result = CliRunner().invoke(app, [
        "audit", "run", "--model", "fraud-oracle", "--data", str(FRAUD_CSV), "--out", str(out / "run"),
        "--models", str(fraud_models_dir), "--workers", "2", "--label", "FraudFound_P",
        "--id-column", "PolicyNumber", "--sample", "60", "--chunk-size", "1000", "--audit-url", audit_url,
        "--no-progress"])
    assert result.exit_code == 0, result.output
    return out / "run", audit_url, result.output
