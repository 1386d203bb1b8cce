"""Interventional SHAP against shap's interventional TreeExplainer; the public API's validation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from risklens.errors import DeviceUnavailable, InvalidRequest, SchemaError, UnsupportedModel
from risklens.trees import TreeShap
from risklens.trees._explainer import _gpu_available

TOL = 1e-6


# probability output applies to log-odds models; the forest already outputs a probability
INTERVENTIONAL_CASES = [
    ("xgboost", "insurance_claims", 6, "raw"), ("xgboost", "insurance_claims", 6, "probability"),
    ("lightgbm", "german", 10, "raw"), ("lightgbm", "german", 10, "probability"),
    ("random_forest", "synthetic", 7, "raw"),
    ("gradient_boosting", "insurance_claims", 3, "raw"), ("gradient_boosting", "insurance_claims", 3, "probability"),
]


@pytest.mark.parametrize("family,dataset,depth,model_output", INTERVENTIONAL_CASES)
def test_interventional_matches_shap(case_factory, family, dataset, depth, model_output):
    import shap

    case = case_factory(family, dataset, depth)
    background = case.X_train.iloc[200:240]
    if family == "gradient_boosting":
        background = background.fillna(-1.0)
    X = case.X_explain.iloc[:30]
    ts = TreeShap(case.model, background=background, model_output=model_output)
    values, base = ts.shap_values(X, device="cpu")
    data = background.to_numpy(np.float32 if ts.ensemble.input_float32 else np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explainer = shap.TreeExplainer(case.model, data=data, feature_perturbation="interventional",
                                       model_output=model_output)
        ref = np.asarray(explainer.shap_values(ts._as_matrix(X), check_additivity=False))
    if ref.ndim == 3:
        ref = ref[..., 1]
    # shap keeps its interventional partial sums in float32
    max_diff = np.abs(values - ref).max()
    assert max_diff <= 1e-5 * max(1.0, np.abs(ref).max()), max_diff
    target = ts.predict_raw(X)
    np.testing.assert_allclose(base + values.sum(1), target, rtol=0, atol=1e-9)
    if model_output == "probability":
        np.testing.assert_allclose(target, case.model.predict_proba(X)[:, 1], rtol=0, atol=1e-5)


def test_probability_output_needs_background_and_log_odds(case_factory):
    case = case_factory("xgboost", "german", 3)
    with pytest.raises(InvalidRequest):
        TreeShap(case.model, model_output="probability")
    forest = case_factory("random_forest", "synthetic", 7)
    with pytest.raises(InvalidRequest):
        TreeShap(forest.model, background=forest.X_train.iloc[:5], model_output="probability")
    with pytest.raises(InvalidRequest):
        TreeShap(case.model, model_output="margin")


def test_input_validation(case_factory):
    case = case_factory("xgboost", "german", 3)
    ts = TreeShap(case.model)
    with pytest.raises(SchemaError) as too_few:
        ts.shap_values(case.X_explain.to_numpy()[:, :-1])
    assert "expects" in too_few.value.message
    with pytest.raises(SchemaError) as missing_column:
        ts.shap_values(case.X_explain.drop(columns=[case.X_explain.columns[0]]))
    assert missing_column.value.field == case.X_explain.columns[0]
    text = case.X_explain.astype({case.X_explain.columns[1]: "str"})
    with pytest.raises(SchemaError):
        ts.shap_values(text)
    with pytest.raises(InvalidRequest):
        ts.shap_values(case.X_explain, device="tpu")
    with pytest.raises(InvalidRequest):
        TreeShap(case.model, background=case.X_train.iloc[:5]).interaction_values(case.X_explain)


def test_unsupported_models_are_refused():
    from sklearn.linear_model import LogisticRegression

    X = np.random.default_rng(0).normal(size=(50, 3))
    with pytest.raises(UnsupportedModel):
        TreeShap(LogisticRegression().fit(X, X[:, 0] > 0))
    with pytest.raises(UnsupportedModel):
        TreeShap(object())


@pytest.mark.skipif(_gpu_available(), reason="this machine has a CUDA device; the no-GPU error cannot occur")
def test_gpu_request_without_device_raises(case_factory):
    case = case_factory("xgboost", "german", 3)
    ts = TreeShap(case.model)
    with pytest.raises(DeviceUnavailable):
        ts.shap_values(case.X_explain, device="gpu")
    auto, _ = ts.shap_values(case.X_explain, device="auto")
    cpu, _ = ts.shap_values(case.X_explain, device="cpu")
    np.testing.assert_array_equal(auto, cpu)


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_available(), reason="needs a CUDA device with CuPy (none present)")
def test_gpu_matches_cpu(case_factory):
    for key in (("xgboost", "synthetic", 12), ("lightgbm", "german", 10), ("random_forest", "synthetic", 7)):
        case = case_factory(*key)
        ts = TreeShap(case.model)
        gpu, base_gpu = ts.shap_values(case.X_explain, device="gpu")
        cpu, base_cpu = ts.shap_values(case.X_explain, device="cpu")
        assert np.abs(gpu - cpu).max() <= 1e-9
        assert base_gpu == base_cpu


def test_xgboost_model_json_with_nan_tokens_is_read(case_factory, monkeypatch):
    """XGBoost may write NaN / Infinity in its JSON, which the fast parser refuses: the same trees come out."""
    import dataclasses

    import xgboost as xgb

    from risklens.trees import normalize_model

    model = case_factory("xgboost", "german", 3).model
    expected = normalize_model(model)
    real_save_raw = xgb.Booster.save_raw

    def save_raw_with_nan(self, raw_format="ubj"):
        raw = real_save_raw(self, raw_format)
        return raw[:raw.rindex(b"}")] + b', "risklens_test": NaN}'

    monkeypatch.setattr(xgb.Booster, "save_raw", save_raw_with_nan)
    got = normalize_model(model)
    for field in dataclasses.fields(expected):
        a, b = getattr(expected, field.name), getattr(got, field.name)
        assert np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b, field.name
