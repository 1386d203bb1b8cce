"""EBM glass-box: native EBM terms add up to its logit, exact SHAP for EBMs, surrogate fidelity."""

from __future__ import annotations

import numpy as np
import pytest

from risklens.explainers.base import ClaimRows, ExplainContext
from risklens.explainers.ebm import EbmExplainer
from risklens.explainers.shap import ShapExplainer
from risklens.registry import load_model_dir, write_model_dir
from risklens.registry.adapters import EBMAdapter


@pytest.fixture(scope="module")
def claims(synthetic):
    return synthetic.X_hold.iloc[:25].reset_index(drop=True)


def test_native_ebm_is_a_first_class_model(ebm_model):
    assert ebm_model.manifest.framework == "ebm"
    assert ebm_model.kind == "additive" and ebm_model.output_space == "log_odds"
    assert any(len(term) == 2 for term in ebm_model.estimator.term_features_), "the test EBM must have pair terms"
    assert "ebm_surrogate" not in ebm_model.extras  # it explains itself


def test_native_terms_sum_to_the_ebm_logit(ebm_model, claims):
    results = EbmExplainer(ebm_model).explain(ClaimRows(ebm_model, frame=claims), ExplainContext(top_k=3, device="cpu", seeds=[0] * len(claims)))
    logits = ebm_model.estimator.decision_function(
        EBMAdapter.frame(ebm_model.estimator, ebm_model.model_matrix(claims)))
    for result, logit in zip(results, logits):
        assert not result.surrogate and result.fidelity_r2 == 1.0
        assert result.intercept + sum(t.contribution for t in result.terms) == pytest.approx(logit, abs=1e-9)
        assert result.logit == pytest.approx(logit, abs=1e-9)
        assert result.feature_contributions.sum() == pytest.approx(logit - result.intercept, abs=1e-9)
        assert any(len(t.features) == 2 for t in result.terms)
    proto = results[0].to_proto()
    assert len(proto.terms) == len(results[0].terms) and not proto.surrogate


def test_ebm_shap_local_accuracy(ebm_model, claims):
    values, base, raw, engine, _ = ShapExplainer(ebm_model).attributions(ebm_model.model_matrix(claims))
    assert engine == "ebm-exact"
    np.testing.assert_allclose(base + values.sum(axis=1), raw, atol=1e-6)


def test_ebm_shap_equals_brute_force_shapley(tmp_path, synthetic, schema_matrix):
    """On a 5-feature EBM with pair terms, our closed form equals shap's exact (all-coalition)
    interventional Shapley values against the same background."""
    import shap
    from interpret.glassbox import ExplainableBoostingClassifier

    from risklens.demo_models import FEATURES

    keep = ["claim_amount", "days_policy_to_claim", "past_claims", "witness_present", "vehicle_price_band"]
    features = [f.model_copy(update={"encoding": "ordinal"}) for f in FEATURES if f.name in keep]
    train = schema_matrix(features, synthetic.X.iloc[:1500])
    ebm = ExplainableBoostingClassifier(interactions=4, outer_bags=1, n_jobs=1, random_state=0)
    ebm.fit(train, synthetic.y.iloc[:1500].to_numpy())
    write_model_dir(tmp_path / "tiny-ebm", ebm, name="tiny-ebm", version="1", features=features,
                    background=synthetic.X, background_rows=40)
    model = load_model_dir(tmp_path / "tiny-ebm")
    claims = synthetic.X_hold[keep].iloc[:4].reset_index(drop=True)
    values, base, _, _, _ = ShapExplainer(model).attributions(model.model_matrix(claims))

    background = model.background_matrix
    explainer = shap.explainers.Exact(model.raw_from_matrix, shap.maskers.Independent(background, max_samples=40))
    reference = explainer(model.model_matrix(claims))
    np.testing.assert_allclose(values, reference.values, atol=1e-6)
    assert base == pytest.approx(float(np.mean(model.raw_from_matrix(background))), abs=1e-9)


def test_surrogate_fidelity_on_the_demo_model(demo_xgb, examples_dir):
    import json

    from risklens.registry import claims_frame, validate_claim

    explainer = EbmExplainer(demo_xgb)
    assert explainer.surrogate
    assert explainer.fidelity["r2"] > 0.7, explainer.fidelity
    assert explainer.fidelity["decision_agreement"] > 0.95, explainer.fidelity
    claim = json.loads((examples_dir / "early-claim-no-witness.json").read_text())
    frame = claims_frame(demo_xgb.manifest, [validate_claim(demo_xgb.manifest, claim)])
    result = explainer.explain(ClaimRows(demo_xgb, frame=frame), ExplainContext(top_k=3, device="cpu", seeds=[0]))[0]
    assert result.surrogate and result.fidelity_r2 == explainer.fidelity["r2"]
    assert result.logit == pytest.approx(float(explainer.ebm.predict(frame)[0]), abs=1e-9)
    top = max(result.terms, key=lambda t: abs(t.contribution))
    assert "days_policy_to_claim" in top.features  # the planted early-claim rule drives this claim


def test_surrogate_fidelity_reported_for_every_registered_model(xgb_model, fraud_oracle_model):
    for model in (xgb_model, fraud_oracle_model):
        fidelity = EbmExplainer(model).fidelity
        assert 0.5 < fidelity["r2"] <= 1.0, (model.name, fidelity)
        assert 0.9 < fidelity["decision_agreement"] <= 1.0, (model.name, fidelity)
