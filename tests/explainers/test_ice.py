"""PDP grids equal scikit-learn's and pdpbox's partial dependence; ICE position per claim."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from risklens.explainers.base import ClaimRows, ExplainContext
from risklens.explainers.ice import IceExplainer, mid_rank_percentile
from risklens.explainers.shap import ShapExplainer
from risklens.registry.manifest import PDP_ARTIFACT
from risklens.registry.registration import ScoreClassifier


def stored_pdp(model) -> dict:
    return json.loads(model.extras[PDP_ARTIFACT].read_text())["features"]


@pytest.mark.parametrize("fixture", ["xgb_model", "demo_xgb"])
def test_pdp_equals_scikit_learn(request, fixture):
    from sklearn.inspection import partial_dependence

    model = request.getfixturevalue(fixture)
    stored = stored_pdp(model)
    view = ScoreClassifier(model)
    for spec in model.manifest.features:
        grid = stored[spec.name]["grid"]
        expected = partial_dependence(
            view, model.background, [spec.name], kind="average", method="brute", response_method="predict_proba",
            categorical_features=[spec.name] if spec.type != "numeric" else None,
            custom_values={spec.name: grid})
        np.testing.assert_allclose(stored[spec.name]["pdp"], expected["average"][0], atol=1e-9, err_msg=spec.name)


def test_numeric_grid_is_scikit_learns(xgb_model):
    from sklearn.inspection import partial_dependence

    stored = stored_pdp(xgb_model)
    for feature in ("claim_amount", "days_policy_to_claim", "past_claims"):
        ours = np.asarray(stored[feature]["grid"])
        theirs = partial_dependence(ScoreClassifier(xgb_model), xgb_model.background, [feature],
                                    grid_resolution=12, kind="average")["grid_values"][0]
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, err_msg=feature)


def test_pdp_equals_pdpbox(xgb_model):
    from pdpbox.pdp import PDPIsolate

    stored = stored_pdp(xgb_model)
    names = xgb_model.manifest.feature_names
    for spec in xgb_model.manifest.features:
        if spec.type != "numeric" or xgb_model.background[spec.name].isna().any():
            continue  # pdpbox grids numbers only (and cannot place NaNs)
        grid = stored[spec.name]["grid"]
        isolate = PDPIsolate(ScoreClassifier(xgb_model), xgb_model.background.copy(), names, spec.name, spec.name,
                             n_classes=2, cust_grid_points=grid)
        np.testing.assert_allclose(isolate.feature_info.grids, grid, rtol=1e-12)
        np.testing.assert_allclose(stored[spec.name]["pdp"], isolate.results[0].pdp, atol=1e-9, err_msg=spec.name)


@pytest.fixture(scope="module")
def ice_results(xgb_model, synthetic):
    # An early claim (planted rule: < 30 days) and ordinary ones.
    hold = synthetic.X_hold
    claims = pd.concat([hold[hold.days_policy_to_claim < 20].iloc[:1], hold.iloc[:3]], ignore_index=True)
    context = ExplainContext(top_k=3, device="cpu", seeds=[0] * len(claims))
    rows = ClaimRows(xgb_model, frame=claims)
    context.results["shap"] = ShapExplainer(xgb_model).explain(rows, context)
    return claims, context, IceExplainer(xgb_model).explain(rows, context)


def test_ice_curves_are_scikit_learns_individual_curves(xgb_model, ice_results):
    """Each claim's ICE curve is scikit-learn's individual conditional expectation on the same grid."""
    from sklearn.inspection import partial_dependence

    claims, context, results = ice_results
    names = xgb_model.manifest.feature_names
    view = ScoreClassifier(xgb_model)
    for row, result in enumerate(results):
        top = [names[j] for j in np.argsort(-np.abs(context.results["shap"][row].values), kind="stable")[:3]]
        assert [f.feature for f in result.features] == top
        for feature in result.features:
            spec = xgb_model.manifest.feature(feature.feature)
            expected = partial_dependence(
                view, claims.iloc[[row]], [feature.feature], kind="individual", method="brute",
                response_method="predict_proba", custom_values={feature.feature: list(feature.grid)},
                categorical_features=[feature.feature] if spec.type != "numeric" else None)["individual"][0, 0]
            np.testing.assert_allclose(feature.ice, expected, atol=1e-12)
            assert len(feature.pdp) == len(feature.grid)
            assert feature.slope_direction in ("increasing", "decreasing", "flat")
            assert 0.0 <= feature.position_percentile <= 100.0


def test_early_claim_sits_low_on_a_falling_curve(ice_results):
    _, _, results = ice_results
    days = next(f for f in results[0].features if f.feature == "days_policy_to_claim")
    assert days.position_percentile < 5.0
    assert days.slope_direction == "decreasing"
    assert days.ice[0] > days.ice[-1]
    proto = results[0].to_proto()
    assert proto.features[0].feature and len(proto.features[0].ice) == len(proto.features[0].pdp)


def test_mid_rank_percentile():
    values = np.array([1.0, 2.0, 2.0, 3.0])
    assert mid_rank_percentile(values, 2.0) == pytest.approx(50.0)
    assert mid_rank_percentile(values, 0.0) == 0.0
    assert mid_rank_percentile(values, 9.0) == 100.0
