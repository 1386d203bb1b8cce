"""One loader for the public datasets in ``../shared/data`` that refuses any file whose sha256 differs.

Each loader returns ``(X, y)``: a DataFrame of raw features (text columns stay text) and a 0/1
target Series where 1 is the risky class (fraud, bad credit).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from risklens.errors import RiskLensError
from risklens.registry.hashing import file_sha256


class DatasetIntegrityError(RiskLensError):
    """A shared data file is missing or its sha256 does not match SOURCES.md."""

    code = "FAILED_PRECONDITION"


@dataclass(frozen=True)
class SharedDataset:
    file: str
    sha256: str
    parse: Callable[[Path], tuple[pd.DataFrame, pd.Series]]


def _fraud_oracle(path: Path) -> tuple[pd.DataFrame, pd.Series]:
    df = pd.read_csv(path)
    y = df.pop("FraudFound_P").astype(int).rename("fraud")
    # Identifiers, not claim properties: a model must not learn from them.
    X = df.drop(columns=["PolicyNumber", "RepNumber"])
    return X, y


def _carclaims(path: Path) -> tuple[pd.DataFrame, pd.Series]:
    df = pd.read_csv(path)
    y = (df.pop("FraudFound") == "Yes").astype(int).rename("fraud")
    X = df.drop(columns=["PolicyNumber", "RepNumber"])
    return X, y


def _insurance_claims(path: Path) -> tuple[pd.DataFrame, pd.Series]:
    df = pd.read_csv(path, na_values=["?"])
    df = df.drop(columns=[c for c in df.columns if df[c].isna().all()])  # the empty trailing `_c39`
    y = (df.pop("fraud_reported") == "Y").astype(int).rename("fraud")
    X = df.drop(columns=["policy_number", "incident_location", "insured_zip"])
    for col in ("policy_bind_date", "incident_date"):
        X[col] = pd.to_datetime(X[col], format="%m/%d/%Y")
    # Dates become model-ready numbers: tenure at the incident and the incident's month.
    X["days_policy_to_incident"] = (X["incident_date"] - X["policy_bind_date"]).dt.days.astype(float)
    X["incident_month"] = X["incident_date"].dt.month.astype(float)
    X = X.drop(columns=["policy_bind_date", "incident_date"])
    return X, y


GERMAN_COLUMNS = [
    "checking_status", "duration_months", "credit_history", "purpose", "credit_amount",
    "savings", "employment_since", "installment_rate", "personal_status", "other_debtors",
    "residence_since", "property", "age", "other_installment_plans", "housing",
    "existing_credits", "job", "people_liable", "telephone", "foreign_worker",
]


def _german(path: Path) -> tuple[pd.DataFrame, pd.Series]:
    df = pd.read_csv(path, sep=" ", header=None, names=[*GERMAN_COLUMNS, "label"])
    y = (df.pop("label") == 2).astype(int).rename("bad_credit")
    return df, y


def _german_numeric(path: Path) -> tuple[pd.DataFrame, pd.Series]:
    arr = np.loadtxt(path)
    X = pd.DataFrame(arr[:, :-1], columns=[f"a{i + 1}" for i in range(arr.shape[1] - 1)])
    y = pd.Series((arr[:, -1] == 2).astype(int), name="bad_credit")
    return X, y


SHARED_DATASETS: dict[str, SharedDataset] = {
    "fraud_oracle": SharedDataset(
        "fraud_oracle.csv", "8bb5870f82bb78cceb2bee7747c68c2a8d617af4e22b2de55fbb40c214883255", _fraud_oracle),
    "carclaims": SharedDataset(
        "carclaims.csv", "a9ff2d9b5f2d7beb2d0bc99d7a74010a0a765147c0234cb0d8d0403bf6ace2d6", _carclaims),
    "insurance_claims": SharedDataset(
        "insurance_claims.csv", "83a434a60e62eb0b2c6ddd4f33f7e6606a8592c151850135d009e49f5081744a",
        _insurance_claims),
    "german": SharedDataset(
        "german.data", "b21f3d81db8071257d5ff1deaeba1fd4303b62712e6fcc9715c7a86202cb5871", _german),
    "german_numeric": SharedDataset(
        "german.data-numeric", "2752b044394958ab6dd193a0b56ca0f0b3a2d8bc7cb8c008e35a5e84bbec02f8",
        _german_numeric),
}


def shared_data_dir() -> Path:
    """``RISKLENS_SHARED_DATA`` if set, else ``../shared/data`` beside the repository."""
    env = os.environ.get("RISKLENS_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"


def load_shared(name: str, data_dir: Path | None = None) -> tuple[pd.DataFrame, pd.Series]:
    """Load a shared dataset by name after checking its sha256 against SOURCES.md."""
    if name not in SHARED_DATASETS:
        raise KeyError(f"unknown shared dataset {name!r}; known: {sorted(SHARED_DATASETS)}")
    spec = SHARED_DATASETS[name]
    path = (data_dir or shared_data_dir()) / spec.file
    if not path.is_file():
        raise DatasetIntegrityError(f"shared dataset file not found: {path}")
    actual = file_sha256(path)
    if actual != spec.sha256:
        raise DatasetIntegrityError(
            f"{path} has sha256 {actual}, expected {spec.sha256}: refusing a modified file")
    return spec.parse(path)
