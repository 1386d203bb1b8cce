"""Session fixtures for the explanation-method tests: small real models, registered for real.

Every model here goes through ``register_model`` (PDP grids, EBM surrogate, permutation
importance), with small settings so the whole folder stays well inside its time budget on 2 cores.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from risklens.registry import LoadedModel, Manifest, infer_schema, load_model_dir
from risklens.registry.registration import RegistrationSettings, register_model
from risklens.registry.schema import encode_frame

SMALL = RegistrationSettings(grid_resolution=12, surrogate_rows=1500, surrogate_interactions=2,
                             permutation_rows=1200, permutation_repeats=3)


def _schema_matrix(features: list, frame: pd.DataFrame) -> pd.DataFrame:
    """The registry's schema encoding of ``frame`` as a named frame (what schema models are trained on)."""
    from risklens.registry.schema import schema_encoding

    manifest = Manifest(name="_", version="0", framework="xgboost", artifact="_", sha256="_", features=features)
    return pd.DataFrame(encode_frame(manifest, frame), columns=schema_encoding(manifest).columns)


@pytest.fixture(scope="session")
def schema_matrix():
    """``schema_matrix(features, frame)``: the registry's schema encoding as a named frame."""
    return _schema_matrix


@dataclass(frozen=True)
class Claims:
    X: pd.DataFrame
    y: pd.Series
    X_hold: pd.DataFrame
    y_hold: pd.Series


@pytest.fixture(scope="session")
def synthetic() -> Claims:
    from risklens.datasets import generate_claims

    X, y = generate_claims(3000, seed=11)
    X_hold, y_hold = generate_claims(1500, seed=12)
    return Claims(X, y, X_hold, y_hold)


@pytest.fixture(scope="session")
def synthetic_features() -> list:
    from risklens.demo_models import FEATURES

    return FEATURES


@pytest.fixture(scope="session")
def xgb_model(tmp_path_factory: pytest.TempPathFactory, synthetic: Claims, synthetic_features: list) -> LoadedModel:
    import xgboost as xgb

    estimator = xgb.XGBClassifier(n_estimators=80, max_depth=3, learning_rate=0.15, random_state=0, n_jobs=1)
    estimator.fit(_schema_matrix(synthetic_features, synthetic.X).to_numpy(), synthetic.y.to_numpy())
    directory = tmp_path_factory.mktemp("models") / "synthetic-xgb"
    register_model(directory, estimator, synthetic.X, name="synthetic-xgb", version="1",
                   holdout=(synthetic.X_hold, synthetic.y_hold), features=synthetic_features, settings=SMALL, seed=3)
    return load_model_dir(directory)


@pytest.fixture(scope="session")
def ebm_model(tmp_path_factory: pytest.TempPathFactory, synthetic: Claims) -> LoadedModel:
    """A native EBM (framework "ebm") with pair terms, on the schema-encoded synthetic claims."""
    from interpret.glassbox import ExplainableBoostingClassifier

    from risklens.demo_models import FEATURES

    features = [f.model_copy(update={"encoding": "ordinal"}) if f.type == "categorical" else f for f in FEATURES]
    train = _schema_matrix(features, synthetic.X.iloc[:2000])
    estimator = ExplainableBoostingClassifier(interactions=3, outer_bags=1, n_jobs=1, random_state=0)
    with warnings.catch_warnings():  # interpret: "Missing values detected" (its plots hide them)
        warnings.filterwarnings("ignore", message="Missing values detected", category=UserWarning)
        estimator.fit(train, synthetic.y.iloc[:2000].to_numpy())
    directory = tmp_path_factory.mktemp("models") / "synthetic-ebm"
    register_model(directory, estimator, synthetic.X, name="synthetic-ebm", version="1",
                   holdout=(synthetic.X_hold, synthetic.y_hold), features=features, settings=SMALL, seed=3)
    return load_model_dir(directory)


@pytest.fixture(scope="session")
def fraud_oracle() -> tuple[pd.DataFrame, pd.Series]:
    from risklens.datasets import load_shared

    X, y = load_shared("fraud_oracle")
    return X, y


@pytest.fixture(scope="session")
def fraud_oracle_model(tmp_path_factory: pytest.TempPathFactory,
                       fraud_oracle: tuple[pd.DataFrame, pd.Series]) -> LoadedModel:
    """XGBoost on the public fraud_oracle claims (4,000 training rows, 2,000 held out)."""
    import xgboost as xgb

    X, y = fraud_oracle
    order = np.random.default_rng(0).permutation(len(X))
    train, hold = order[:4000], order[4000:6000]
    features = infer_schema(X)
    estimator = xgb.XGBClassifier(n_estimators=80, max_depth=4, learning_rate=0.1, random_state=0, n_jobs=1)
    estimator.fit(_schema_matrix(features, X.iloc[train]).to_numpy(), y.iloc[train].to_numpy())
    directory = tmp_path_factory.mktemp("models") / "fraud-oracle-xgb"
    register_model(directory, estimator, X.iloc[train], name="fraud-oracle-xgb", version="1",
                   holdout=(X.iloc[hold], y.iloc[hold]), features=features, settings=SMALL, seed=3)
    return load_model_dir(directory)


@pytest.fixture(scope="session")
def demo_xgb(demo_models_dir: Path) -> LoadedModel:
    return load_model_dir(demo_models_dir / "demo-xgb")
