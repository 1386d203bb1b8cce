"""Small real models on the shared data sets and the synthetic generator, trained once per session."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest

N_EXPLAIN = 120  # rows explained per case: enough to hit every leaf family, small enough for CI


@dataclass
class Case:
    name: str
    model: Any
    X_train: pd.DataFrame
    X_explain: pd.DataFrame


def numeric_frame(X: pd.DataFrame) -> pd.DataFrame:
    """One-hot the text columns (as the project's XGBoost models are trained) and keep NaNs."""
    text = [c for c in X.columns if not (pd.api.types.is_numeric_dtype(X[c]) or pd.api.types.is_bool_dtype(X[c]))]
    out = pd.get_dummies(X, columns=text, dtype=float)
    out.columns = [str(c).replace(" ", "_") for c in out.columns]
    return out.astype(float)


def with_missing(X: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    holes = rng.random(X.shape) < fraction
    return X.mask(holes)


def _sample(X: pd.DataFrame, y: pd.Series, n: int, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    if len(X) <= n:
        return X.reset_index(drop=True), y.reset_index(drop=True)
    idx = np.random.default_rng(seed).choice(len(X), n, replace=False)
    return X.iloc[idx].reset_index(drop=True), y.iloc[idx].reset_index(drop=True)


@pytest.fixture(scope="session")
def datasets() -> dict[str, tuple[pd.DataFrame, pd.Series]]:
    from risklens.datasets import generate_claims, load_shared

    data = {}
    for name in ("fraud_oracle", "insurance_claims", "german"):
        X, y = load_shared(name)
        X, y = _sample(X, y, 3000, seed=1)
        data[name] = (numeric_frame(X), y)
    X, y = generate_claims(3000, 7)
    data["synthetic"] = (numeric_frame(X), y)
    return data


def _train(family: str, depth: int, X: pd.DataFrame, y: pd.Series) -> Any:
    import lightgbm as lgb
    import xgboost as xgb
    from sklearn.ensemble import (
        ExtraTreesRegressor,
        GradientBoostingClassifier,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )
    from sklearn.tree import DecisionTreeRegressor

    if family == "xgboost":
        return xgb.XGBClassifier(n_estimators=20, max_depth=depth, learning_rate=0.3, n_jobs=1).fit(X, y)
    if family == "xgboost_reg":
        return xgb.XGBRegressor(n_estimators=20, max_depth=depth, n_jobs=1).fit(X, y.astype(float))
    if family == "lightgbm":
        return lgb.LGBMClassifier(n_estimators=20, max_depth=depth, num_leaves=min(2**depth, 63),
                                  min_child_samples=5, verbose=-1, n_jobs=1).fit(X, y)
    if family == "lightgbm_zero":  # missing_type=Zero: zeros and NaN follow the default direction
        return lgb.LGBMRegressor(n_estimators=15, max_depth=depth, num_leaves=min(2**depth, 31), zero_as_missing=True,
                                 verbose=-1, n_jobs=1).fit(X, y.astype(float))
    Xf = X.fillna(-1.0) if family == "gradient_boosting" else X
    if family == "random_forest":
        return RandomForestClassifier(n_estimators=10, max_depth=depth, random_state=0, n_jobs=1).fit(Xf, y)
    if family == "extra_trees":
        return ExtraTreesRegressor(n_estimators=10, max_depth=depth, random_state=0, n_jobs=1).fit(Xf, y.astype(float))
    if family == "gradient_boosting":
        return GradientBoostingClassifier(n_estimators=15, max_depth=depth, random_state=0).fit(Xf, y)
    if family == "decision_tree":
        return DecisionTreeRegressor(max_depth=depth, random_state=0).fit(Xf, y.astype(float))
    if family == "hist_gradient_boosting":
        return HistGradientBoostingClassifier(max_iter=15, max_depth=depth, random_state=0).fit(X, y)
    raise ValueError(family)


# (family, dataset, depth): every family, every data set, depths 1..12 spread across them


@pytest.fixture(scope="session")
def case_factory(datasets: dict[str, tuple[pd.DataFrame, pd.Series]]) -> Any:
    cache: dict[tuple[str, str, int], Case] = {}

    def make(family: str, dataset: str, depth: int) -> Case:
        key = (family, dataset, depth)
        if key not in cache:
            X, y = datasets[dataset]
            X_explain = X.iloc[:N_EXPLAIN]
            if family not in ("gradient_boosting",):
                # NaNs in training and in the explained rows exercise the default directions
                X = with_missing(X, 0.03, seed=depth)
                X_explain = with_missing(X_explain, 0.08, seed=depth + 100)
            else:
                X_explain = X_explain.fillna(-1.0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = _train(family, depth, X, y)
            cache[key] = Case(f"{family}-{dataset}-d{depth}", model, X, X_explain)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def categorical_claims() -> tuple[pd.DataFrame, pd.Series]:
    """Synthetic claims with pandas category columns (native categorical splits) and missing values."""
    from risklens.datasets import generate_claims

    X, y = generate_claims(2500, 11)
    for col in X.columns:
        if not (pd.api.types.is_numeric_dtype(X[col]) or pd.api.types.is_bool_dtype(X[col])):
            X[col] = X[col].astype("category")
        elif pd.api.types.is_bool_dtype(X[col]):
            X[col] = X[col].astype(float)
    rng = np.random.default_rng(3)
    for col in ("accident_area", "fault", "claim_amount"):
        X.loc[rng.random(len(X)) < 0.05, col] = np.nan
    return X, y
