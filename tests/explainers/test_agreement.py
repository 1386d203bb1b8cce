"""Cross-method agreement: the rank-agreement measure, the disagreement flag and its plain words."""

from __future__ import annotations

import numpy as np
import pytest

from risklens.explainers.agreement import AgreementExplainer, rank_agreement
from risklens.explainers.base import ClaimRows, ExplainContext
from risklens.explainers.ebm import EbmExplainer
from risklens.explainers.lime import LimeExplainer
from risklens.explainers.shap import ShapExplainer


def test_rank_agreement_measure():
    a = np.array([3.0, -2.0, 1.0, 0.1])
    assert rank_agreement(a, a, 3) == 1.0
    assert rank_agreement(a, -a, 3) == 0.0  # same features, every direction flipped
    swapped = np.array([2.0, -3.0, 1.0, 0.1])  # same signed top-3, the first two in swapped order
    assert rank_agreement(a, swapped, 3) == pytest.approx((0 + 1 + 1) / 3)
    assert rank_agreement(a, np.array([0.0, 0.0, 0.0, 5.0]), 3) < rank_agreement(a, swapped, 3)


@pytest.fixture(scope="module")
def explained(xgb_model, synthetic):
    """SHAP, LIME and EBM run for real on held-out claims; agreement on top."""
    claims = ClaimRows(xgb_model, frame=synthetic.X_hold.iloc[:8].reset_index(drop=True))
    context = ExplainContext(top_k=3, device="cpu", seeds=list(range(8)), agreement_threshold=0.5)
    context.results["shap"] = ShapExplainer(xgb_model).explain(claims, context)
    context.results["lime"] = LimeExplainer(xgb_model).explain(claims, context)
    context.results["ebm"] = EbmExplainer(xgb_model).explain(claims, context)
    return claims, context


def test_agreement_on_real_explanations(xgb_model, explained):
    claims, context = explained
    results = AgreementExplainer(xgb_model).explain(claims, context)
    for result in results:
        assert [(a, b) for a, b, _ in result.pairs] == [("shap", "lime"), ("shap", "ebm"), ("lime", "ebm")]
        assert result.disagree == any(v < 0.5 for _, _, v in result.pairs)
        assert "agree that" in result.summary and "the risk" in result.summary
        proto = result.to_proto()
        assert len(proto.pairs) == 3 and proto.threshold == 0.5


def test_flag_triggers_on_constructed_disagreement(xgb_model, explained):
    """LIME's and the EBM's attributions replaced by SHAP's with every direction reversed: the two
    must disagree with SHAP completely, and the summary must say SHAP stands alone."""
    from dataclasses import replace

    claims, context = explained
    flipped = ExplainContext(top_k=3, device="cpu", seeds=context.seeds, agreement_threshold=0.5)
    flipped.results["shap"] = context.results["shap"]
    flipped.results["lime"] = [replace(lime, feature_contributions=-shap.values)
                               for lime, shap in zip(context.results["lime"], context.results["shap"])]
    flipped.results["ebm"] = [replace(ebm, feature_contributions=-shap.values)
                              for ebm, shap in zip(context.results["ebm"], context.results["shap"])]
    agreeing = ExplainContext(top_k=3, device="cpu", seeds=context.seeds, agreement_threshold=0.5)
    agreeing.results["shap"] = context.results["shap"]
    agreeing.results["lime"] = [replace(lime, feature_contributions=shap.values)
                                for lime, shap in zip(context.results["lime"], context.results["shap"])]
    agreeing.results["ebm"] = [replace(ebm, feature_contributions=2 * shap.values)
                               for ebm, shap in zip(context.results["ebm"], context.results["shap"])]
    explainer = AgreementExplainer(xgb_model)
    for result in explainer.explain(claims, flipped):
        assert result.disagree
        pairs = {(a, b): v for a, b, v in result.pairs}
        assert pairs[("shap", "lime")] == 0.0 and pairs[("shap", "ebm")] == 0.0 and pairs[("lime", "ebm")] == 1.0
        assert result.summary.startswith("One of three methods (SHAP) agree")
        assert "read this explanation with care" in result.summary
    for result in explainer.explain(claims, agreeing):
        assert not result.disagree
        assert result.summary.startswith("All three methods (SHAP, LIME and EBM) agree")
