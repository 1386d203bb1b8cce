"""Exactness against shap's TreeExplainer on real models: SHAP values, interactions, local accuracy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from treeshap_cases import CASES, shap_reference

from risklens.trees import TreeShap

TOL = 1e-6


def _model_output(model, X: pd.DataFrame, output_space: str) -> np.ndarray:
    """The library's own prediction in the space TreeShap explains."""
    name = type(model).__name__
    if name.startswith("XGB"):
        return model.predict(X, output_margin=True).astype(np.float64)
    if name.startswith("LGBM"):
        return model.predict(X, raw_score=True)
    if output_space == "probability":
        return model.predict_proba(X)[:, 1]
    if hasattr(model, "decision_function"):
        return model.decision_function(X)
    return model.predict(X)


@pytest.mark.parametrize("family,dataset,depth", CASES, ids=[f"{f}-{d}-d{k}" for f, d, k in CASES])
def test_shap_values_match_shap_tree_explainer(case_factory, family, dataset, depth):
    case = case_factory(family, dataset, depth)
    ts = TreeShap(case.model)
    values, base = ts.shap_values(case.X_explain, device="cpu")
    assert values.dtype == np.float64
    assert values.shape == case.X_explain.shape

    # shap's own float64 TreeSHAP (same float32 input rounding as the library); its LightGBM parser
    # ignores missing_type=Zero, so that case is checked against LightGBM's pred_contrib only
    ref, ref_base = shap_reference(case.model, case.X_explain, float32_input=ts.ensemble.input_float32, internal=True)
    if family != "lightgbm_zero":
        assert np.abs(values - ref).max() <= TOL

    # the default TreeExplainer path (XGBoost/LightGBM hand over to their own contribution code)
    ref_default, _ = shap_reference(case.model, case.X_explain, float32_input=ts.ensemble.input_float32,
                                    internal=False)
    # XGBoost's pred_contribs accumulates in float32; everything else is float64
    tol_default = 2e-5 * max(1.0, np.abs(ref_default).max()) if family.startswith("xgboost") else TOL
    assert np.abs(values - ref_default).max() <= tol_default
    assert abs(base - ref_base) <= tol_default

    # local accuracy: against the normalized trees in float64, and against the library itself
    raw = ts.predict_raw(case.X_explain)
    np.testing.assert_allclose(base + values.sum(axis=1), raw, rtol=0, atol=1e-9)
    own = _model_output(case.model, case.X_explain, ts.output_space)
    tol_own = 1e-5 * max(1.0, np.abs(own).max()) if family.startswith("xgboost") else 1e-9
    np.testing.assert_allclose(raw, own, rtol=0, atol=tol_own)


@pytest.mark.parametrize("family,dataset,depth", [
    ("xgboost", "insurance_claims", 6), ("lightgbm", "german", 10), ("random_forest", "synthetic", 7),
    ("gradient_boosting", "insurance_claims", 3), ("hist_gradient_boosting", "synthetic", 9),
])
def test_interaction_values_match_shap(case_factory, family, dataset, depth):
    case = case_factory(family, dataset, depth)
    X = case.X_explain.iloc[:25]
    ts = TreeShap(case.model)
    inter = ts.interaction_values(X)
    f = X.shape[1]
    assert inter.shape == (len(X), f, f)
    ref, _ = shap_reference(case.model, X, float32_input=ts.ensemble.input_float32, internal=True,
                            interactions=True)
    assert np.abs(inter - ref).max() <= TOL
    values, _ = ts.shap_values(X, device="cpu")
    np.testing.assert_allclose(inter.sum(axis=2), values, rtol=0, atol=1e-9)
    np.testing.assert_allclose(inter, np.swapaxes(inter, 1, 2), rtol=0, atol=1e-12)


def test_output_spaces(case_factory):
    assert TreeShap(case_factory("xgboost", "german", 3).model).output_space == "log_odds"
    assert TreeShap(case_factory("lightgbm", "german", 10).model).output_space == "log_odds"
    assert TreeShap(case_factory("random_forest", "synthetic", 7).model).output_space == "probability"
    assert TreeShap(case_factory("xgboost_reg", "synthetic", 4).model).output_space == "raw"
    assert TreeShap(case_factory("gradient_boosting", "synthetic", 11).model).output_space == "log_odds"


def test_numpy_array_input_equals_dataframe_input(case_factory):
    case = case_factory("lightgbm", "synthetic", 8)
    ts = TreeShap(case.model)
    from_frame, _ = ts.shap_values(case.X_explain, device="cpu")
    from_array, _ = ts.shap_values(case.X_explain.to_numpy(), device="cpu")
    shuffled = case.X_explain[list(reversed(case.X_explain.columns))]
    from_shuffled, _ = ts.shap_values(shuffled, device="cpu")
    np.testing.assert_array_equal(from_frame, from_array)
    np.testing.assert_array_equal(from_frame, from_shuffled)


def test_single_row_equals_batch_row(case_factory):
    case = case_factory("xgboost", "synthetic", 12)
    ts = TreeShap(case.model)
    batch, _ = ts.shap_values(case.X_explain, device="cpu")
    one, _ = ts.shap_values(case.X_explain.iloc[[17]], device="cpu")
    np.testing.assert_allclose(one[0], batch[17], rtol=0, atol=1e-12)


def test_array_path_on_numpy_matches_numba_kernel(case_factory):
    """The NumPy/CuPy array implementation (the GPU path's code) run on NumPy."""
    from risklens.trees._xp import PathTables

    for key in (("xgboost", "insurance_claims", 6), ("lightgbm", "german", 10), ("random_forest", "synthetic", 7)):
        case = case_factory(*key)
        ts = TreeShap(case.model)
        tables = PathTables(ts._structure, np)
        X = ts._as_matrix(case.X_explain.iloc[:40])
        values, _ = ts.shap_values(case.X_explain.iloc[:40], device="cpu")
        np.testing.assert_allclose(tables.shap_values(X), values, rtol=0, atol=1e-9)
