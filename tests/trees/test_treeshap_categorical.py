"""Native categorical splits (XGBoost, LightGBM, scikit-learn HistGradientBoosting) with missing values."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from risklens.trees import TreeShap

TOL = 1e-6


def _shap_default(model, X):
    import shap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explainer = shap.TreeExplainer(model)
        values = np.asarray(explainer.shap_values(X, check_additivity=False))
    return values[..., 1] if values.ndim == 3 else values


def test_xgboost_native_categorical(categorical_claims):
    import xgboost as xgb

    X, y = categorical_claims
    model = xgb.XGBClassifier(n_estimators=25, max_depth=5, enable_categorical=True, tree_method="hist",
                              max_cat_to_onehot=1, n_jobs=1).fit(X, y)
    ts = TreeShap(model)
    assert (ts.ensemble.kind == 2).any(), "the model should contain categorical splits"
    Xe = X.iloc[:150]
    values, base = ts.shap_values(Xe, device="cpu")
    ref = _shap_default(model, Xe)  # XGBoost's own pred_contribs, float32
    assert np.abs(values - ref).max() <= 2e-5 * max(1.0, np.abs(ref).max())
    raw = ts.predict_raw(Xe)
    np.testing.assert_allclose(base + values.sum(1), raw, rtol=0, atol=1e-9)
    margin = model.predict(Xe, output_margin=True)
    np.testing.assert_allclose(raw, margin, rtol=0, atol=1e-5 * max(1.0, np.abs(margin).max()))


def test_lightgbm_native_categorical(categorical_claims):
    import lightgbm as lgb

    X, y = categorical_claims
    model = lgb.LGBMClassifier(n_estimators=25, num_leaves=24, min_data_per_group=5, cat_smooth=1,
                               verbose=-1, n_jobs=1).fit(X, y)
    ts = TreeShap(model)
    assert (ts.ensemble.kind == 2).any(), "the model should contain categorical splits"
    Xe = X.iloc[:150]
    values, base = ts.shap_values(Xe, device="cpu")
    assert np.abs(values - _shap_default(model, Xe)).max() <= TOL
    raw = ts.predict_raw(Xe)
    np.testing.assert_allclose(base + values.sum(1), raw, rtol=0, atol=1e-9)
    np.testing.assert_allclose(raw, model.predict(Xe, raw_score=True), rtol=0, atol=1e-9)


def test_hist_gradient_boosting_categorical(categorical_claims):
    from sklearn.ensemble import HistGradientBoostingClassifier

    X, y = categorical_claims
    model = HistGradientBoostingClassifier(max_iter=20, max_depth=5, categorical_features="from_dtype",
                                           random_state=0).fit(X, y)
    ts = TreeShap(model)
    assert (ts.ensemble.kind == 2).any(), "the model should contain categorical splits"
    Xe = X.iloc[:150]
    values, base = ts.shap_values(Xe, device="cpu")
    raw = ts.predict_raw(Xe)
    np.testing.assert_allclose(base + values.sum(1), raw, rtol=0, atol=1e-9)
    np.testing.assert_allclose(raw, model.decision_function(Xe), rtol=0, atol=1e-9)
    # the array (NumPy/CuPy) path walks root-to-leaf paths instead of the tree: same numbers
    from risklens.trees._xp import PathTables

    tables = PathTables(ts._structure, np)
    np.testing.assert_allclose(tables.shap_values(ts._as_matrix(Xe)), values, rtol=0, atol=1e-9)
